"""The Redis backend passes the same contract as the memory backend, on a real Redis."""

import pytest
import pytest_twisted
from twisted.internet import reactor

from pushd.backends.redis import RedisBackend, from_argstring
from pushd.testing import BackendContract


class TestRedisBackend(BackendContract):
    @pytest.fixture(autouse=True)
    def _redis(self, redis_server):
        self.redis = redis_server

    async def make_backend(self):
        return RedisBackend(reactor, port=self.redis.port, heartbeat=0.2, node_ttl=1.0)

    async def make_peer(self, backend):
        return RedisBackend(reactor, port=self.redis.port, heartbeat=0.2, node_ttl=1.0)

    async def relay_entries(self, backend):
        return len(await backend._redis.keys(backend._k("relay", "*")))


@pytest.mark.parametrize(
    "spec,message",
    [
        ("port=x", "whole numbers"),
        ("colour=red", "unknown argument(s) colour"),
        ("heartbeat=5:node-ttl=2", "heartbeat < node-ttl"),
        ("prefix=a:b", None),
    ],
)
def test_bad_arguments(spec, message):
    """A wrong --backend redis:... argument fails at start with a message naming it."""
    if message is None:  # ':' splits arguments, so this is an unknown 'b'
        message = "expected key=value"
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        from_argstring(None, spec)


def test_arguments():
    """Settings given in --backend redis:... are the ones the backend uses."""
    backend = from_argstring(
        None, "host=10.1.2.3:port=7000:db=2:prefix=app1:node-ttl=30"
    )
    assert (
        backend.host,
        backend.port,
        backend.db,
        backend.prefix,
        backend.node_ttl,
    ) == ("10.1.2.3", 7000, 2, "app1", 30.0)


@pytest.mark.usefixtures("redis_server")
class TestPrefixes:
    @pytest.fixture(autouse=True)
    def _redis(self, redis_server):
        self.redis = redis_server

    async def _pair(self):
        one = RedisBackend(reactor, port=self.redis.port, prefix="deploy1")
        two = RedisBackend(reactor, port=self.redis.port, prefix="deploy2")
        await one.start()
        await two.start()
        return one, two

    @pytest_twisted.ensureDeferred
    async def test_prefixes_keep_deployments_apart(self):
        """Two deployments sharing one Redis never see each other's messages,
        counts, members or users."""
        from pushd.message import Message
        from pushd.testing import eventually, eventually_equals

        one, two = await self._pair()
        try:
            got_one, got_two = [], []
            await one.subscribe("default/c", got_one.append)
            await two.subscribe("default/c", got_two.append)
            await one.publish(Message("c", "e", 1, "i1"))
            await two.publish(Message("c", "e", 2, "i2"))
            await eventually(lambda: got_one and got_two)
            assert [m.data for m in got_one] == [1] and [m.data for m in got_two] == [2]
            one.report_occupancy("default/c", 3)
            await eventually_equals(lambda: one.occupancy(None), {"default/c": 3})
            assert await two.occupancy(None) == {}
            await one.join("default/presence-x", "ann", None, "c1")
            await one.connect_user("default", "ann", "c1")
            assert await two.members("default/presence-x") == {}
            assert await two.users_online("default") == 0
        finally:
            await one.stop()
            await two.stop()


class TestDeadNodes:
    @pytest.fixture(autouse=True)
    def _redis(self, redis_server):
        self.redis = redis_server

    @pytest_twisted.ensureDeferred
    async def test_dead_node_departures_are_reported(self):
        """A node that stops renewing its lease (crashed) is cleaned up by a
        live one, which reports each presence departure to its watchers."""
        from pushd.testing import eventually

        alive = RedisBackend(reactor, port=self.redis.port, heartbeat=0.2, node_ttl=0.6)
        doomed = RedisBackend(
            reactor, port=self.redis.port, heartbeat=0.2, node_ttl=0.6
        )
        await alive.start()
        await doomed.start()
        departed = []
        alive.watch_departures(lambda *args: departed.append(args))
        await doomed.join("default/presence-x", "bob", None, "c9")
        await doomed.connect_user("default", "bob", "c9")
        # crash: no cleanup, no more heartbeats, connections just gone
        doomed._heartbeat.stop()
        doomed._stopping = True
        await doomed._sub_factory.disconnect()
        await doomed._redis.disconnect()
        await eventually(lambda: departed, timeout=5)
        assert departed == [("default", "presence-x", "bob")]
        assert await alive.members("default/presence-x") == {}
        assert await alive.users_online("default") == 0
        await alive.stop()
