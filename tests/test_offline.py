"""Offline delivery (Pushi): what a user missed while it had no connection."""

import json

import treq
from pytest_twisted import ensureDeferred

from pushd.auth import make_user_token

SECRET = "test-api-secret-that-is-at-least-32-bytes"


async def api(server, method, path, body=None):
    response = await treq.request(
        method,
        server.url + path,
        headers=server.auth(),
        data=json.dumps(body).encode() if body is not None else None,
    )
    text = await response.text()
    return response.code, (json.loads(text) if text else None)


async def login(server, user):
    client = await server.connect("?token=" + make_user_token(SECRET, user))
    await client.next_of("connected")
    return client


@ensureDeferred
async def test_offline_user_gets_stored_messages_on_connect(start_server, backend_for):
    """A user who was offline gets what was kept for it on connect, in order and bounded by offline-queue."""
    server = await start_server(backend=backend_for(), offline_queue=3)
    code, _ = await api(server, "PUT", "/api/users/ann/channels/news")
    assert code == 204
    assert (await api(server, "GET", "/api/users/ann/channels"))[1] == {
        "user_id": "ann",
        "channels": ["news"],
    }
    await api(
        server, "POST", "/api/users/ann/messages", {"event": "dm", "data": "hello"}
    )
    for n in range(3):
        await api(
            server, "POST", "/api/channels/news/messages", {"event": "e", "data": n}
        )
    ann = await login(server, "ann")
    got = [
        (m["channel"], m["data"])
        for m in [await ann.next_of("message") for _ in range(3)]
    ]
    assert got == [("news", 0), ("news", 1), ("news", 2)]  # bounded: the dm was oldest
    # online now: live delivery on the kept channel, nothing stored twice
    await api(
        server, "POST", "/api/channels/news/messages", {"event": "e", "data": "live"}
    )
    assert (await ann.next_of("message"))["data"] == "live"
    ann.assert_nothing_queued()
    await ann.close()
    await server.wait_sessions(0)
    await api(
        server, "POST", "/api/users/ann/messages", {"event": "dm", "data": "later"}
    )
    again = await login(server, "ann")
    assert (await again.next_of("message"))["data"] == "later"
    again.assert_nothing_queued()


@ensureDeferred
async def test_unkept_channel_and_online_users_store_nothing(start_server, backend_for):
    """Nothing is stored for channels a user does not keep, or for users who are online."""
    server = await start_server(backend=backend_for())
    await api(server, "PUT", "/api/users/bob/channels/news")
    code, _ = await api(server, "DELETE", "/api/users/bob/channels/news")
    assert code == 204
    await api(server, "POST", "/api/channels/news/messages", {"event": "e", "data": 1})
    carl = await login(server, "carl")
    await api(
        server, "POST", "/api/users/carl/messages", {"event": "dm", "data": "live"}
    )
    assert (await carl.next_of("message"))["data"] == "live"
    await carl.close()
    await server.wait_sessions(0)
    for user in ("bob", "carl"):
        client = await login(server, user)
        await client.subscribe(
            "sync"
        )  # a round trip: anything stored would be here first
        client.assert_nothing_queued()
    code, body = await api(server, "PUT", "/api/users/bad%20user/channels/news")
    assert (code, body["error"]) == (400, "invalid_field")
