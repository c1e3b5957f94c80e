"""The Python clients against a real pushd: the synchronous publishing client
(in a thread, as an app backend calls it), the Twisted one (treq), and the
Autobahn subscriber with pushd.js's resume rules."""

from __future__ import annotations

import socket

import pytest
from conftest import SECRET
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from pushd.client import PushClient, PushError
from pushd.history import HistoryRule, Retention
from pushd.subscriber import PushSubscriber
from pushd.testing import eventually, free_port
from pushd.txclient import TxPushClient

HISTORY = (HistoryRule("chat-*", Retention(size=20, ttl=60)),)


class SyncInThread:
    """PushClient's methods, run in a thread so the in-process pushd answers."""

    def __init__(self, client: PushClient) -> None:
        self._client = client

    def __getattr__(self, name):
        method = getattr(self._client, name)
        if name in ("user_token", "channel_auth"):  # local computations
            return method
        return lambda *a, **kw: deferToThread(method, *a, **kw)


async def exercise_rest_api(server, push) -> None:
    """Every REST call, each checked by what a connected user sees or what
    the server holds; ``push`` is either client (calls return Deferreds)."""
    ann = await server.connected("?token=" + push.user_token("ann", {"n": "Ann"}))
    bob = await server.connected("?token=" + push.user_token("bob"))
    for client in (ann, bob):
        await client.subscribe("chat-1")
    message_id = await push.publish(
        "chat-1", "say", {"t": 1}, exclude=bob.connection_id
    )
    frame = await ann.next_of("message")
    assert (frame["id"], frame["data"]) == (message_id, {"t": 1})
    await push.publish("chat-1", "say", 2, users=["bob"])
    assert (await bob.next_of("message"))["data"] == 2
    shared = await push.publish_many(["chat-1", "chat-2"], "say", 3)
    assert (await ann.next_of("message"))["id"] == shared
    assert (await bob.next_of("message"))["id"] == shared
    results = await push.batch(
        [
            {"channel": "chat-1", "event": "say", "data": "b1"},
            {"channel": "bad name", "event": "say", "data": "lost"},
            {"channel": "chat-1", "event": "say", "data": "b2"},
        ]
    )
    assert [r["status"] for r in results] == [202, 400, 202]
    assert results[1]["error"] == "invalid_channel"
    for client in (ann, bob):
        assert [(await client.next_of("message"))["data"] for _ in "12"] == [
            "b1",
            "b2",
        ]
    await push.publish_to_user("ann", "dm", "hi")
    assert (await ann.next_of("message"))["channel"] == "personal-ann"
    assert (await push.channels())["chat-1"] == 2
    assert await push.channel("chat-1") == {
        "channel": "chat-1",
        "occupied": True,
        "subscribers": 2,
    }
    history = await push.history("chat-1")
    assert [m["data"] for m in history["messages"]] == [{"t": 1}, 2, 3, "b1", "b2"]
    after = await push.history("chat-1", since=4, epoch=history["epoch"])
    assert ([m["data"] for m in after["messages"]], after["recovered"]) == (
        ["b2"],
        True,
    )
    assert len((await push.history("chat-1", limit=1))["messages"]) == 1
    auth = push.channel_auth(ann.connection_id, "presence-room")
    ann.send(dict(auth, type="subscribe", channel="presence-room"))
    await ann.next_of("subscribed")
    assert await push.channel_users("presence-room") == {"ann": {"n": "Ann"}}
    assert await push.user("ann") == {
        "user_id": "ann",
        "online": True,
        "connections": 1,
    }
    assert await push.users_online() == 2
    assert await push.keep_channel("carl", "chat-9") is None
    assert await push.kept_channels("carl") == ["chat-9"]
    await push.unkeep_channel("carl", "chat-9")
    assert await push.kept_channels("carl") == []
    assert await push.logout("bob") is None
    assert (await bob.wait_closed())[0] == 4010


@ensureDeferred
async def test_sync_client_covers_the_rest_api(start_server):
    """PushClient: every REST route, as a user of the API sees it."""
    server = await start_server(history=HISTORY)
    await exercise_rest_api(server, SyncInThread(PushClient(server.url, SECRET)))


@ensureDeferred
async def test_twisted_client_covers_the_rest_api(start_server):
    """TxPushClient: the same calls, returning Deferreds."""
    server = await start_server(history=HISTORY)
    await exercise_rest_api(server, TxPushClient(server.url, SECRET))


@ensureDeferred
async def test_signed_requests_on_a_single_app_server(start_server):
    """A single-app server has no client key; signed requests still work
    (and a wrong secret is still refused), with both clients."""
    server = await start_server(history=HISTORY)
    for push in (
        SyncInThread(PushClient(server.url, SECRET, signed=True)),
        TxPushClient(server.url, SECRET, signed=True),
    ):
        assert await push.publish("chat-1", "e", 1)
    for push in (
        SyncInThread(PushClient(server.url, "wrong" + SECRET, signed=True)),
        TxPushClient(server.url, "wrong" + SECRET, signed=True),
    ):
        with pytest.raises(PushError) as raised:
            await push.publish("chat-1", "e", 1)
        assert (raised.value.status, raised.value.code) == (401, "unauthorized")


@ensureDeferred
async def test_http_errors_raise_push_error_with_pushd_code(start_server):
    """A refused request says pushd's status and code, with either client."""
    server = await start_server()
    for push in (
        SyncInThread(PushClient(server.url, SECRET)),
        TxPushClient(server.url, SECRET),
    ):
        with pytest.raises(PushError) as raised:
            await push.publish("bad name", "e", 1)
        assert (raised.value.status, raised.value.code) == (400, "invalid_channel")
        with pytest.raises(PushError) as raised:
            await push.history("no-history-here")
        assert (raised.value.status, raised.value.code) == (404, "not_found")


def test_sync_client_connection_errors_are_push_errors():
    """Refused, or accepted and never answered: PushError, not URLError."""
    refused = PushClient("http://127.0.0.1:%d" % free_port(), SECRET)
    with pytest.raises(PushError) as raised:
        refused.publish("news", "e", 1)
    assert (raised.value.status, raised.value.code) == (0, "connection_error")
    with socket.socket() as silent:  # the kernel accepts; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        mute = PushClient(
            "http://127.0.0.1:%d" % silent.getsockname()[1], SECRET, timeout=0.3
        )
        with pytest.raises(PushError) as raised:
            mute.users_online()
    assert raised.value.code == "connection_error"


@ensureDeferred
async def test_twisted_client_connection_errors_are_push_errors():
    """The Twisted client fails the same way: refused, or no answer in time."""
    refused = TxPushClient("http://127.0.0.1:%d" % free_port(), SECRET)
    with pytest.raises(PushError) as raised:
        await refused.publish("news", "e", 1)
    assert (raised.value.status, raised.value.code) == (0, "connection_error")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        mute = TxPushClient(
            "http://127.0.0.1:%d" % silent.getsockname()[1], SECRET, timeout=0.3
        )
        with pytest.raises(PushError) as raised:
            await mute.users_online()
    assert raised.value.code == "connection_error"


@ensureDeferred
async def test_subscriber_resumes_after_a_restart_without_missing_anything(
    start_server,
):
    """A worker's subscriber gets every message once, in order, across a
    server-side disconnect with messages published while it was away."""
    server = await start_server(history=HISTORY)
    push = TxPushClient(server.url, SECRET)
    got, states, recovered = [], [], []
    sub = PushSubscriber(reactor, "ws://127.0.0.1:%d/ws" % server.port)
    sub.on_state = states.append
    sub.on_recovered = lambda channel, ok: recovered.append((channel, ok))
    sub.subscribe("chat-1", lambda frame: got.append(frame["data"]))
    sub.start()
    try:
        await eventually(lambda: len(server.hub.sessions) == 1)
        await eventually(lambda: sub.state == "connected")
        await push.publish("chat-1", "e", 0)
        await eventually(lambda: got == [0])
        server.hub.close_all(1001, "restarting")
        for n in (1, 2):  # before the subscriber can be back
            await push.publish("chat-1", "e", n)
        await eventually(lambda: recovered == [("chat-1", True)])
        await push.publish("chat-1", "e", 3)
        await eventually(lambda: len(got) == 4)
        assert got == [0, 1, 2, 3]
        assert states == [
            "connecting",
            "connected",
            "disconnected",
            "connecting",
            "connected",
        ]
        assert sub.position("chat-1")["offset"] == 4
    finally:
        sub.stop()
        await eventually(lambda: sub.state == "disconnected")
        await server.wait_sessions(0)


@ensureDeferred
async def test_subscriber_signs_private_channels_and_stops_on_wrong_key(
    start_server,
):
    """``auth`` signs private channels for the current connection; a wrong
    key ends in "failed" with no retry."""
    server = await start_server(client_key="ck-12345678")
    push = PushClient(server.url, SECRET)
    got = []
    sub = PushSubscriber(
        reactor,
        "ws://127.0.0.1:%d/ws" % server.port,
        key="ck-12345678",
        auth=push.channel_auth,
    )
    sub.subscribe("private-jobs", lambda frame: got.append(frame["data"]))
    sub.start()
    try:
        await eventually(lambda: server.hub.sessions and sub.state == "connected")
        tx = TxPushClient(server.url, SECRET)
        await eventually(lambda: sub._channels["private-jobs"].subscribed)
        await tx.publish("private-jobs", "job", {"id": 7})
        await eventually(lambda: got == [{"id": 7}])
    finally:
        sub.stop()
        await server.wait_sessions(0)

    states = []
    wrong = PushSubscriber(reactor, "ws://127.0.0.1:%d/ws" % server.port, key="nope")
    wrong.on_state = states.append
    wrong.start()
    await eventually(lambda: wrong.state == "failed")
    assert states == ["connecting", "failed"]


@ensureDeferred
async def test_subscriber_hears_the_loss_notice_after_a_redis_restart(
    start_server, redis_server
):
    """A worker on a channel without history is told (on_lost) when its
    node may have missed messages while Redis was away, then gets new
    messages as before."""
    from pushd.backends.redis import RedisBackend

    backend = RedisBackend(
        reactor, port=redis_server.port, heartbeat=0.2, node_ttl=1.0, timeout=0.5
    )
    server = await start_server(backend=backend)
    got, lost = [], []
    sub = PushSubscriber(reactor, "ws://127.0.0.1:%d/ws" % server.port)
    sub.on_lost = lambda channel, frame: lost.append((channel, frame["type"]))
    sub.subscribe("feed", lambda frame: got.append(frame["data"]))
    sub.start()
    try:
        await eventually(lambda: sub._channels["feed"].subscribed)
        redis_server.stop()
        await eventually(lambda: server.hub.unready_reason() is not None)
        redis_server.start()
        await eventually(lambda: lost == [("feed", "messages_lost")], 10)
        await TxPushClient(server.url, SECRET).publish("feed", "e", "after")
        await eventually(lambda: got == ["after"])
    finally:
        sub.stop()
        await server.wait_sessions(0)


def _self_signed(host: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for ``host``, signed by nobody."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@ensureDeferred
async def test_subscriber_over_wss_verifies_the_server_certificate(start_server):
    """Over wss:// the subscriber refuses a server whose certificate nobody
    it trusts signed (its user token never reaches a man in the middle),
    and connects once told to trust that certificate (``tls=``)."""
    from twisted.internet.endpoints import SSL4ServerEndpoint
    from twisted.internet.ssl import (
        Certificate,
        PrivateCertificate,
        optionsForClientTLS,
    )

    server = await start_server()
    cert_pem, key_pem = _self_signed("localhost")
    options = PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    endpoint = SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1")
    tls_listening = await endpoint.listen(server.site)
    url = "wss://localhost:%d/ws" % tls_listening.getHost().port
    try:
        states: list[str] = []
        untrusting = PushSubscriber(reactor, url, max_delay=60)
        untrusting.on_state = states.append
        untrusting.start()
        await eventually(lambda: "disconnected" in states or "connected" in states)
        untrusting.stop()
        assert states[:2] == ["connecting", "disconnected"]
        assert not server.hub.sessions

        trust = optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(cert_pem)
        )
        trusting = PushSubscriber(reactor, url, tls=trust)
        trusting.start()
        try:
            await eventually(lambda: trusting.state == "connected")
        finally:
            trusting.stop()
            await server.wait_sessions(0)
    finally:
        await tls_listening.stopListening()
