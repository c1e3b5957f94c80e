"""Relay channel state: bounded against anonymous subscribers, the same on
every node, and honest at shutdown.  Real sockets, a real redis-server and
real ``twistd pushd`` processes."""

import signal

import treq
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from pushd.testing import eventually, eventually_equals
from pushd.transports.relay import location_from_mapping

SECRET = "relay-state-secret-that-is-long-enough"
BEARER = {"Authorization": "Bearer " + SECRET}


class Pipelined(Protocol):
    """Sends many GETs down one connection (HTTP/1.1 pipelining) and counts
    the answers by status: the cheapest way to be 20,000 clients."""

    def __init__(self, paths):
        self.paths = paths
        self.received = b""
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(
            b"".join(
                b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode() for p in self.paths
            )
        )

    def dataReceived(self, data):
        self.received += data
        if self.received.count(b"HTTP/1.1 ") >= len(self.paths):
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.done.callback(self.received)


async def pipelined_gets(server, paths, per_connection=2000):
    statuses = {}
    for start in range(0, len(paths), per_connection):
        client = Pipelined(paths[start : start + per_connection])
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), client
        )
        received = await client.done
        for part in received.split(b"HTTP/1.1 ")[1:]:
            status = int(part[:3])
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


def state_sizes(server):
    """Everything the relay path could grow, per kind."""
    hub = server.hub
    return {
        "relay channels": hub.backend.relay_size(),
        "kept history": hub.history.kept_count(),
        "hub channels": len(hub._channels),
        "sessions": len(hub.sessions),
    }


LOCATIONS = (
    {"type": "subscriber", "prefix": "/poll/", "polling": "interval"},
    {"type": "subscriber", "prefix": "/subscriber/"},
    {"type": "publisher", "prefix": "/publisher/"},
)


@ensureDeferred
async def test_20000_gets_of_new_names_leave_no_state(start_server):
    """Anonymous subscribers asking for 20,000 channel names that do not
    exist (interval polling, and long polls that give up) leave nothing
    behind: no relay channel, no kept history, no hub channel, no session.
    A PUT (authenticated) is what creates a channel."""
    server = await start_server(
        api_secret=SECRET,
        relay_locations=tuple(location_from_mapping(r) for r in LOCATIONS),
    )
    empty = state_sizes(server)
    assert empty == dict.fromkeys(empty, 0)
    statuses = await pipelined_gets(server, ["/poll/new-%d" % n for n in range(20000)])
    assert statuses == {304: 20000}
    assert state_sizes(server) == empty
    waiting = [treq.get(server.url + "/subscriber/gone-%d" % n) for n in range(50)]
    await eventually(lambda: len(server.hub.sessions) == 50)
    for d in waiting:
        d.addErrback(lambda _: None)
        d.cancel()  # clients give up and close
    await server.wait_sessions(0)
    assert state_sizes(server) == empty
    response = await treq.put(server.url + "/publisher/made", headers=BEARER)
    assert response.code == 200
    assert state_sizes(server)["relay channels"] == 1


@ensureDeferred
async def test_two_nodes_on_one_redis_answer_the_same_and_honour_one_put(
    start_server, redis_server
):
    """Two hubs on one real redis-server: a PUT on one lets the other accept
    a POST where the location demands PUT first; both report the same
    messages, subscribers and last request; a DELETE on one is seen by both."""
    from pushd.backends.redis import RedisBackend

    strict = (
        {"type": "subscriber", "prefix": "/subscriber/"},
        {"type": "publisher", "prefix": "/publisher/", "create_on_post": False},
    )
    nodes = [
        await start_server(
            backend=RedisBackend(reactor, port=redis_server.port, heartbeat=0.3),
            api_secret=SECRET,
            relay_locations=tuple(location_from_mapping(r) for r in strict),
        )
        for _ in range(2)
    ]
    one, two = nodes
    url = "/publisher/shared"
    assert (await treq.post(two.url + url, data=b"x", headers=BEARER)).code == 403
    assert (await treq.put(one.url + url, headers=BEARER)).code == 200
    response = await treq.post(two.url + url, data=b"first", headers=BEARER)
    assert response.code == 202
    answer = await treq.get(one.url + "/subscriber/shared")  # last requested: now
    assert await answer.content() == b"first"
    since = {
        "If-Modified-Since": answer.headers.getRawHeaders("last-modified")[0],
        "If-None-Match": answer.headers.getRawHeaders("etag")[0],
    }
    waiting = treq.get(one.url + "/subscriber/shared", headers=since)

    async def info(node):
        response = await treq.get(
            node.url + url, headers={"Accept": "application/json", **BEARER}
        )
        assert response.code == 200
        return await response.json()

    expected = {
        "channel": "shared",
        "messages": 1,
        "subscribers": 1,
        "last_requested": 0,
    }
    for node in nodes:
        await eventually_equals(lambda node=node: info(node), expected)
    response = await treq.post(two.url + url, data=b"second", headers=BEARER)
    assert response.code == 201  # the subscriber waiting on the other node
    assert await (await waiting).content() == b"second"
    assert (await treq.delete(two.url + url, headers=BEARER)).code == 200
    for node in nodes:
        assert (await treq.get(node.url + url, headers=BEARER)).code == 404


@ensureDeferred
async def test_shutdown_answers_waiting_subscribers_503_with_retry_after(
    pushd_process,
):
    """At shutdown a waiting long-poll gets 503 with Retry-After (come back
    soon), not 410 (which says the channel was deleted)."""
    proc = pushd_process(
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--api-secret",
        SECRET,
        "--relay-retry-after",
        "7",
    )
    base = "http://127.0.0.1:%d" % await proc.port()
    assert (await treq.put(base + "/publisher/bye", headers=BEARER)).code == 200
    waiting = treq.get(base + "/subscriber/bye")

    async def subscribers():
        response = await treq.get(
            base + "/publisher/bye", headers={"Accept": "application/json", **BEARER}
        )
        return (await response.json())["subscribers"]

    await eventually_equals(subscribers, 1)
    proc.proc.send_signal(signal.SIGTERM)
    response = await waiting
    assert response.code == 503
    assert response.headers.getRawHeaders("retry-after") == ["7"]
