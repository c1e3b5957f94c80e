"""The SQLite backend passes the contract, and its history survives a restart."""

import pytest
from pytest_twisted import ensureDeferred

from pushd.backends.sqlite import SqliteBackend, from_argstring
from pushd.history import Retention
from pushd.message import Message
from pushd.testing import BackendContract


class TestSqliteBackend(BackendContract):
    @pytest.fixture(autouse=True)
    def _path(self, tmp_path):
        self.path = str(tmp_path / "history.db")

    async def make_backend(self):
        return SqliteBackend(None, self.path)


@ensureDeferred
async def test_history_survives_a_restart(tmp_path):
    """After a restart, clients recover history kept on disk, and offsets continue in the same epoch."""
    path = str(tmp_path / "h.db")
    keep = Retention(size=10, ttl=60)
    first = SqliteBackend(None, path)
    await first.start()
    stored = [
        await first.publish(Message("c", "e", n, "i%d" % n), keep) for n in range(3)
    ]
    await first.stop()
    second = SqliteBackend(None, path)
    await second.start()
    result = await second.history("default/c", 1, stored[0].epoch, 10, keep)
    assert ([m.data for m in result.messages], result.recovered) == ([1, 2], True)
    more = await second.publish(Message("c", "e", 3, "i3"), keep)
    assert (more.offset, more.epoch) == (4, stored[0].epoch)
    await second.stop()


def test_arguments(tmp_path):
    """Every documented redis backend argument is accepted and used."""
    with pytest.raises(ValueError, match="needs path"):
        from_argstring(None, "")
    with pytest.raises(ValueError, match="unknown"):
        from_argstring(None, "path=x:size=3")
    assert from_argstring(None, "path=%s" % (tmp_path / "x.db")).path.endswith("x.db")
