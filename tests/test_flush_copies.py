"""The WebSocket flush waits for this node's publishes on their way back from
Redis (``flush-copy-wait``, ``IInFlight``; issue 16): copies that land a
reactor turn or two apart share each subscriber's send() instead of costing
one each, never later than the cap, and the memory backend never waits."""

from __future__ import annotations

import json
from types import SimpleNamespace

import treq
from clients import ws_total
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.protocols import portforward

from pushd.backends.redis import RedisBackend
from pushd.backends.redis_subscriber import _INCOMPLETE, parse_reply
from pushd.message import decode_message
from pushd.testing import _msg, eventually
from pushd.transports.websocket import Flusher, PushServerProtocol


class Copies:
    """An ``IInFlight`` whose copies land when the test says."""

    def __init__(self) -> None:
        self.flying = 0
        self._landed: list = []

    def in_flight(self) -> int:
        return self.flying

    def watch_landed(self, callback) -> None:
        self._landed.append(callback)

    def land(self) -> None:
        self.flying -= 1
        if not self.flying:
            for callback in self._landed:
                callback()


class Counted:
    frames = writes = 0

    def flushed(self, frames, nbytes, writes=0):
        self.frames += frames
        self.writes += writes


def _turn(clock: Clock) -> None:
    """One reactor turn: the calls due now, not the ones they schedule."""
    due = [c for c in clock.calls if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


def _connections(flusher: Flusher, n: int) -> list:
    conns = []
    for i in range(n):
        conn = PushServerProtocol()
        conn.factory = SimpleNamespace(flusher=flusher)
        conn.state, conn.connection_id = conn.STATE_OPEN, i
        conn.writes = []
        conn.transport = SimpleNamespace(write=conn.writes.append)
        conns.append(conn)
    return conns


def _flusher(copies, wait=0.002, per_turn=0):
    clock = Clock()
    clock.advance(100)
    flusher = Flusher(clock, Counted(), per_turn=per_turn, copies=copies, wait=wait)
    return clock, flusher


def test_a_pass_waits_for_copies_in_flight_and_goes_when_they_land():
    """A message is queued while another publish of this node is on its way
    back from Redis: the pass waits for it, and when it lands (read in a
    later reactor turn) both messages go out in one write per subscriber."""
    copies = Copies()
    clock, flusher = _flusher(copies)
    conns = _connections(flusher, 3)
    copies.flying = 1
    for conn in conns:
        conn._queue(b"a")
    _turn(clock)
    assert [c.writes for c in conns] == [[], [], []]  # held
    assert [c.getTime() for c in clock.getDelayedCalls()] == [100.002]
    for conn in conns:  # the copy arrives, is fanned out...
        conn._queue(b"b")
    copies.land()  # ...and is no longer in flight
    assert [c.getTime() for c in clock.getDelayedCalls()] == [100]
    _turn(clock)
    assert [c.writes for c in conns] == [[b"ab"]] * 3
    assert (flusher._metrics.frames, flusher._metrics.writes) == (6, 3)
    assert clock.getDelayedCalls() == []


def test_a_pass_never_waits_beyond_the_cap():
    """Copies that never come (Redis down, a channel unsubscribed meanwhile)
    and copies that keep coming (publishers flat out) hold a pass at most
    ``flush-copy-wait`` after it was due, counted from the first hold."""
    copies = Copies()
    clock, flusher = _flusher(copies, wait=0.002)
    conns = _connections(flusher, 2)
    copies.flying = 2
    for conn in conns:
        conn._queue(b"a")
    _turn(clock)
    clock.advance(0.001)
    copies.flying = 5  # more publishes sent meanwhile: the cap does not move
    for conn in conns:
        conn._queue(b"b")
    _turn(clock)
    assert [c.writes for c in conns] == [[], []]
    clock.advance(0.001)  # 2 ms after it was due
    assert [c.writes for c in conns] == [[b"ab"]] * 2
    # The next pass waits afresh (at most the cap again).
    for conn in conns:
        conn._queue(b"c")
    _turn(clock)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [100.004]
    clock.advance(0.002)
    assert [c.writes for c in conns] == [[b"ab", b"c"]] * 2


def test_a_pass_goes_at_once_with_nothing_in_flight_or_no_wait():
    """Nothing in flight, ``flush-copy-wait: 0``, or a backend without
    ``IInFlight`` (memory): the pass starts in the turn it was due, as
    before."""
    for copies, wait, flying in ((Copies(), 0.002, 0), (Copies(), 0, 1), (None, 1, 0)):
        clock, flusher = _flusher(copies, wait=wait)
        if copies is not None:
            copies.flying = flying
        (conn,) = _connections(flusher, 1)
        conn._queue(b"a")
        _turn(clock)
        assert conn.writes == [b"a"]


def test_copies_sent_between_two_slices_join_the_writes_not_yet_made():
    """A publish read between two slices of a pass is on its way to Redis
    when the next slice is due: the slice waits for its copy (at most
    ``flush-copy-wait``), so the connections the pass has not reached get
    both messages in one write.  Without the wait, a publish through Redis
    needed two reactor turns per round trip where the memory backend needs
    one, and every send() carried about half as many frames."""
    copies = Copies()
    clock, flusher = _flusher(copies, per_turn=2)
    conns = _connections(flusher, 4)
    for conn in conns:
        conn._queue(b"a")
    _turn(clock)
    assert [c.writes for c in conns] == [[b"a"], [b"a"], [], []]
    copies.flying = 1  # a publish sent between two slices of the pass
    _turn(clock)
    assert [c.writes for c in conns] == [[b"a"], [b"a"], [], []]  # held
    for conn in conns:  # its copy arrives and is fanned out
        conn._queue(b"b")
    copies.land()
    _turn(clock)
    assert [c.writes for c in conns] == [[b"a"], [b"a"], [b"ab"], [b"ab"]]
    _turn(clock)  # the next pass: the two written first
    assert [c.writes for c in conns] == [[b"a", b"b"]] * 2 + [[b"ab"]] * 2


def test_copies_that_never_come_hold_a_pass_five_waits_at_most():
    """A copy that never comes (Redis gone quiet) holds each slice at most
    ``flush-copy-wait`` and the whole pass at most five times that, however
    many slices it has: a channel of many subscribers is late by a bounded
    few milliseconds, not by a wait per slice."""
    copies = Copies()
    clock, flusher = _flusher(copies, wait=0.002, per_turn=2)
    conns = _connections(flusher, 12)  # six slices
    copies.flying = 1
    for conn in conns:
        conn._queue(b"c")
    _turn(clock)
    clock.advance(0.002)  # one wait before the pass: the first slice
    assert sum(1 for c in conns if c.writes) == 2
    clock.advance(0.002)  # and one between two slices
    assert sum(1 for c in conns if c.writes) == 4
    clock.advance(0.006)  # 10 ms in all: the rest goes without waiting
    assert [c.writes for c in conns] == [[b"c"]] * 12
    assert clock.getDelayedCalls() == []


class _PacedClient(portforward.ProxyClient):
    """Redis's side of the proxy: pub/sub messages are passed on one per
    ``gap`` seconds, so copies land in separate reactor turns of pushd, as
    under load; other replies keep their place in the stream."""

    gap = 0.01

    def connectionMade(self):
        super().connectionMade()
        self._buf, self._queue, self._next, self._call = b"", [], 0.0, None

    def dataReceived(self, data):
        buf, pos = self._buf + data, 0
        while pos < len(buf):
            reply, end = parse_reply(buf, pos)
            if reply is _INCOMPLETE:
                break
            message = type(reply) is list and reply[:1] == [b"message"]
            if message:
                self.peer.factory.order.append(reply[2])
            self._queue.append((buf[pos:end], message))
            pos = end
        self._buf = buf[pos:]
        if self._call is None:
            self._pump()

    def _pump(self):
        self._call = None
        while self._queue:
            chunk, message = self._queue[0]
            if message:
                now = reactor.seconds()
                if now < self._next:
                    self._call = reactor.callLater(self._next - now, self._pump)
                    return
                self._next = now + self.gap
            self._queue.pop(0)
            self.peer.transport.write(chunk)

    def connectionLost(self, reason):
        if self._call is not None and self._call.active():
            self._call.cancel()
        super().connectionLost(reason)


class _PacedClientFactory(portforward.ProxyClientFactory):
    protocol = _PacedClient


class _PacedServer(portforward.ProxyServer):
    clientProtocolFactory = _PacedClientFactory


class _PacedProxy(portforward.ProxyFactory):
    protocol = _PacedServer
    noisy = False

    def __init__(self, host, port):
        super().__init__(host, port)
        self.order: list = []  # pub/sub payloads, in the order Redis sent them


@ensureDeferred
async def test_a_burst_through_redis_shares_writes_every_message_once_in_order(
    redis_server, start_server
):
    """20 publishes sent at once through one node, whose copies come back
    from Redis 10 ms apart (one reactor turn each): each of 50 WebSocket
    subscribers gets all 20, once each, in Redis's order, in a few writes
    (pushd_frames_sent_total / pushd_writes_total), not one send() per
    message per subscriber."""
    proxy = _PacedProxy("127.0.0.1", redis_server.port)
    port = reactor.listenTCP(0, proxy, interface="127.0.0.1")
    try:
        server = await start_server(
            backend=RedisBackend(reactor, port=port.getHost().port),
            flush_copy_wait=2.0,
        )
        clients = await server.subscribed("burst", 50)
        frames = await ws_total(server, "pushd_frames_sent_total")
        writes = await ws_total(server, "pushd_writes_total")
        proxy.order.clear()

        async def publish(n):
            response = await treq.post(
                server.url + "/api/channels/burst/messages",
                json.dumps({"event": "e", "data": n}).encode(),
                headers=server.auth(),
            )
            assert response.code == 202
            await response.content()

        await gatherResults([Deferred.fromCoroutine(publish(n)) for n in range(20)])
        await eventually(lambda: len(proxy.order) == 20)
        order = [decode_message(p, "default/burst").data for p in proxy.order]
        assert sorted(order) == list(range(20))
        for client in clients:
            got = [(await client.next_of("message"))["data"] for _ in range(20)]
            assert got == order
        sent = await ws_total(server, "pushd_frames_sent_total") - frames
        made = await ws_total(server, "pushd_writes_total") - writes
        assert sent == 20 * 50
        # One send() per subscriber per message without the wait (the copies
        # land 10 ms apart); with it, a few at most.
        assert made <= sent / 4, (sent, made)
        # Nothing twice: the next frame anyone gets is one published last.
        await publish("end")
        for client in clients:
            assert (await client.next_of("message"))["data"] == "end"
    finally:
        await port.stopListening()


@ensureDeferred
async def test_redis_counts_only_copies_that_will_come_back(redis_server):
    """A publish to a channel this node listens on is in flight until its
    copy arrives (then the flush is told); one to a channel nobody here
    listens on never is; unsubscribing the last listener gives up on copies
    still on their way, so nothing waits for them."""
    backend = RedisBackend(reactor, port=redis_server.port)
    await backend.start()
    try:
        landed = []
        backend.watch_landed(lambda: landed.append(backend.in_flight()))
        got = []
        await backend.subscribe("default/here", got.append)
        d = backend.publish(_msg("default/here", 1))
        assert backend.in_flight() == 1
        await d
        assert (backend.in_flight(), landed, len(got)) == (0, [0], 1)
        await backend.publish(_msg("default/elsewhere", 2))
        assert backend.in_flight() == 0 and landed == [0]
        d = backend.publish(_msg("default/here", 3))
        assert backend.in_flight() == 1
        await backend.unsubscribe("default/here", got.append)
        assert (backend.in_flight(), landed) == (0, [0, 0])
        await d  # the publisher does not wait out the timeout either
    finally:
        await backend.stop()
