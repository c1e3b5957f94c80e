"""The nonce store and connection registry (issue 11) pass their contracts
on memory, sqlite (memory's, inherited) and Redis, across two Redis nodes."""

import pytest
import pytest_twisted
from twisted.internet import reactor

from pushd.backends.memory import MemoryBackend
from pushd.backends.redis import RedisBackend
from pushd.backends.sqlite import SqliteBackend
from pushd.backends.stores import LocalStore
from pushd.testing import ConnectionRegistryContract, NonceStoreContract

_started: list = []


class _Stop:
    @pytest_twisted.async_yield_fixture(autouse=True)
    async def _stop(self):
        yield
        while _started:
            await _started.pop().stop()


class TestMemory(NonceStoreContract, ConnectionRegistryContract, _Stop):
    async def make_store(self):
        return MemoryBackend(reactor)


class TestLocalFallback(NonceStoreContract, ConnectionRegistryContract):
    async def make_store(self):
        return LocalStore(reactor)


class TestSqlite(NonceStoreContract, ConnectionRegistryContract, _Stop):
    @pytest.fixture(autouse=True)
    def _path(self, tmp_path):
        self.path = str(tmp_path / "s.db")

    async def make_store(self):
        backend = SqliteBackend(reactor, self.path)
        await backend.start()
        _started.append(backend)
        return backend


class TestRedis(NonceStoreContract, ConnectionRegistryContract, _Stop):
    @pytest.fixture(autouse=True)
    def _redis(self, redis_server):
        self.redis = redis_server

    async def make_store(self):
        backend = RedisBackend(reactor, port=self.redis.port, heartbeat=0.2, node_ttl=1)
        await backend.start()
        _started.append(backend)
        return backend

    async def make_peer(self, store):
        return await self.make_store()
