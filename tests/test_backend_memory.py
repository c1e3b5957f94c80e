"""The memory backend passes the public backend contract."""

import pytest

from pushd.backends.memory import MemoryBackend, from_argstring
from pushd.testing import BackendContract


class TestMemoryBackend(BackendContract):
    async def make_backend(self):
        return MemoryBackend()

    async def relay_entries(self, backend):
        return backend.relay_size()


def test_memory_takes_no_arguments():
    """A typo in --backend memory:... fails at start instead of being ignored."""
    with pytest.raises(ValueError, match="takes no arguments"):
        from_argstring(None, "size=3")
    assert isinstance(from_argstring(None, ""), MemoryBackend)


def test_broken_subscriber_does_not_stop_others():
    """A delivery callback that raises does not keep the message from the rest."""
    backend = MemoryBackend()
    got = []

    def broken(message):
        raise RuntimeError("boom")

    backend.subscribe("default/c", broken)
    backend.subscribe("default/c", got.append)
    from pushd.message import Message

    backend.publish(Message("c", "e", 1, "i"))
    assert [m.data for m in got] == [1]
