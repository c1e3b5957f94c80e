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

redis = LazyBackendFactory(
    "redis",
    "pushd.backends.redis.from_argstring",
    "Many nodes through Redis: host=H:port=P[:db=N:password=S:prefix=X:"
    "node-ttl=S:heartbeat=S:timeout=S].",
)

sqlite = LazyBackendFactory(
    "sqlite",
    "pushd.backends.sqlite.from_argstring",
    "Single node, history kept on disk across restarts: path=FILE.",
)
