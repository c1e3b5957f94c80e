"""The Redis backend passes the same contract as the memory backend, on a real Redis."""

import pytest
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


@pytest.mark.parametrize("spec,message", [
    ("port=x", "whole numbers"),
    ("colour=red", "unknown argument(s) colour"),
    ("heartbeat=5:node-ttl=2", "heartbeat < node-ttl"),
    ("prefix=a:b", None),
])
def test_bad_arguments(spec, message):
    if message is None:  # ':' splits arguments, so this is an unknown 'b'
        message = "expected key=value"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_argstring(None, spec)


def test_arguments():
    backend = from_argstring(None, "host=10.1.2.3:port=7000:db=2:prefix=app1:node-ttl=30")
    assert (backend.host, backend.port, backend.db, backend.prefix, backend.node_ttl) == (
        "10.1.2.3", 7000, 2, "app1", 30.0)
