"""Makes the example backend known to twistd pushd; keep imports cheap."""

from pushd.backends import LazyBackendFactory

example = LazyBackendFactory(
    "example",
    "pushd_example_backend.from_argstring",
    "Example plugin: memory backend plus a publish log. keep=N:label=TEXT.",
)
