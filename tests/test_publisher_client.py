"""TxPushClient.publisher(): the Python client of the publisher WebSocket."""

from __future__ import annotations

import pytest
from pytest_twisted import ensureDeferred

from pushd.client import PushError
from pushd.txclient import TxPushClient


async def opened(server, push):
    publisher = await push.publisher()
    server.clients.append(_Closer(publisher))
    return publisher


class _Closer:
    """Lets the server fixture close the publisher at teardown."""

    def __init__(self, publisher) -> None:
        self._publisher = publisher

    async def close(self) -> None:
        if self._publisher.close_code is None:
            await self._publisher.close()


@ensureDeferred
async def test_publish_and_batch_over_one_connection(start_server):
    """publish() fires with the message id and the subscriber gets the
    messages in order, 250 publishes from one loop included (sent as list
    frames of batch_size); batch() gives one result per message."""
    server = await start_server()
    sub = await server.connected()
    await sub.subscribe("c")
    publisher = await opened(server, TxPushClient(server.url, server.secret))
    message_id = await publisher.publish("c", "e", {"n": "first"})
    frame = await sub.next_of("message")
    assert (frame["id"], frame["data"]) == (message_id, {"n": "first"})
    pending = [publisher.publish("c", "e", n) for n in range(250)]
    ids = [await d for d in pending]
    frames = [await sub.next_of("message") for _ in range(250)]
    assert [(f["data"], f["id"]) for f in frames] == list(
        zip(range(250), ids, strict=True)
    )
    results = await publisher.batch(
        [
            {"channel": "c", "event": "e", "data": "ok"},
            {"channel": "bad channel", "event": "e", "data": 1},
        ]
    )
    assert results[0]["status"] == 202 and len(results[0]["message_id"]) == 16
    assert results[1]["status"] == 400 and results[1]["error"] == "invalid_channel"
    assert (await sub.next_of("message"))["id"] == results[0]["message_id"]


@ensureDeferred
async def test_refusals_raise_push_error(start_server):
    """A refused message raises PushError with pushd's status and code; the
    same key twice gives the same id; a wrong secret fails the handshake
    with 403 forbidden."""
    server = await start_server()
    publisher = await opened(server, TxPushClient(server.url, server.secret))
    with pytest.raises(PushError) as refused:
        await publisher.publish("c", "pushd:reserved", 1)
    assert (refused.value.status, refused.value.code) == (400, "invalid_field")
    first = await publisher.publish("c", "e", 1, idempotency_key="k")
    assert await publisher.publish("c", "e", 1, idempotency_key="k") == first
    with pytest.raises(PushError) as denied:
        await TxPushClient(server.url, "wrong-secret").publisher()
    assert (denied.value.status, denied.value.code) == (403, "forbidden")


@ensureDeferred
async def test_signed_handshake_and_close(start_server):
    """A signed client opens the connection without sending its secret;
    after close(), publishing fails with connection_error instead of
    hanging."""
    server = await start_server()
    publisher = await opened(
        server, TxPushClient(server.url, server.secret, signed=True)
    )
    assert len(await publisher.publish("c", "e", 1)) == 16
    assert await publisher.close() == 1000
    with pytest.raises(PushError) as closed:
        await publisher.publish("c", "e", 2)
    assert (closed.value.status, closed.value.code) == (0, "connection_error")


@ensureDeferred
async def test_unanswered_publishes_fail_when_the_connection_is_closed(start_server):
    """Publishes still waiting when pushd closes the connection
    (publisher-max-age) fail with connection_error, so the caller knows to
    retry (with an idempotency key) rather than wait forever."""
    server = await start_server(publisher_max_age=0.2)
    publisher = await opened(server, TxPushClient(server.url, server.secret))
    await publisher.publish("c", "e", 1)
    assert await publisher.when_closed() == 4111
    with pytest.raises(PushError) as closed:
        await publisher.publish("c", "e", 2)
    assert closed.value.code == "connection_error"
