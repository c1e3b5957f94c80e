"""twistd finds ``pushd`` and the built-in backends here.

twistd imports this module on every run: keep it to cheap imports (an
ImportError here only shows up as "Unknown command: pushd").
"""

from twisted.application.service import ServiceMaker

from pushd.backends import LazyBackendFactory

pushd = ServiceMaker(
    "pushd",
    "pushd.tap",
    "Real-time push server: WebSocket, SSE and HTTP polling.",
    "pushd",
)

memory = LazyBackendFactory(
    "memory",
    "pushd.backends.memory.from_argstring",
    "Single node, in process (the default). No arguments.",
)
