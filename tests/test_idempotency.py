"""Idempotency keys: the store contract on every store, and the REST API."""

import pytest
import pytest_twisted
import treq
from pytest_twisted import ensureDeferred
from twisted.internet import reactor

from pushd.backends.redis import RedisBackend
from pushd.idempotency import MemoryIdempotencyStore
from pushd.testing import IdempotencyStoreContract, eventually

_started: list = []


class TestMemoryStore(IdempotencyStoreContract):
    async def make_store(self):
        return MemoryIdempotencyStore(reactor)


class TestRedisStore(IdempotencyStoreContract):
    @pytest.fixture(autouse=True)
    def _redis(self, redis_server):
        self.redis = redis_server

    @pytest_twisted.async_yield_fixture(autouse=True)
    async def _stop(self):
        yield
        while _started:
            await _started.pop().stop()

    async def make_store(self):
        backend = RedisBackend(reactor, port=self.redis.port, heartbeat=0.2, node_ttl=1)
        await backend.start()
        _started.append(backend)
        return backend


async def post(server, body, key=None, path="/api/channels/news/messages"):
    headers = server.auth()
    if key is not None:
        headers["Idempotency-Key"] = key
    response = await treq.post(server.url + path, json=body, headers=headers)
    return response.code, await response.json()


@ensureDeferred
async def test_retries_with_the_same_key_publish_once(start_server):
    """A publish retried with the same key (header or body field) is
    delivered once and every retry gets the first answer; another key
    publishes again."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("news")
    body = {"event": "e", "data": 1}
    first = await post(server, body, key="order-1")
    assert first[0] == 202
    assert await post(server, body, key="order-1") == first
    again = await post(server, {**body, "idempotency_key": "order-1"})
    assert again == first
    other = await post(server, {**body, "data": 2}, key="order-2")
    assert other[0] == 202 and other[1]["id"] != first[1]["id"]
    assert (await client.next_of("message"))["data"] == 1
    assert (await client.next_of("message"))["data"] == 2
    await eventually(lambda: True)
    client.assert_nothing_queued()


@ensureDeferred
async def test_bad_idempotency_keys_are_refused(start_server):
    """Keys that are too long, contain spaces, or disagree between header
    and body get 400 and publish nothing."""
    server = await start_server()
    body = {"event": "e", "data": 1}
    for key in ("x" * 201, "has space"):
        code, error = await post(server, body, key=key)
        assert (code, error["error"]) == (400, "invalid_field")
    code, error = await post(server, {**body, "idempotency_key": "b"}, key="a")
    assert (code, error["error"]) == (400, "invalid_field")
