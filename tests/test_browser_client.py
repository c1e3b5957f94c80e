"""pushd.js, as served by pushd, driven by Node's WebSocket (the browser API)."""

import json
import shutil
import subprocess

import pytest
import treq
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.task import deferLater

from pushd.testing import eventually

NODE = shutil.which("node")


def _node_has_websocket() -> bool:
    """Node >= 20.10 has the browser WebSocket API behind a flag (22: always)."""
    if NODE is None:
        return False
    probe = subprocess.run(
        [
            NODE,
            "--experimental-websocket",
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _node_has_websocket(), reason="needs node >= 20.10 with the WebSocket API"
)

SCRIPT = r"""
const Pushd = require(process.argv[2]);
const push = new Pushd(process.argv[3], {key: process.argv[4]});
const out = (o) => console.log(JSON.stringify(o));
push.on("state", (state) => out({state}));
push.on("subscribed", (channel) => out({subscribed: channel}));
push.subscribe("news").bind("headline", (data, frame) => {
  out({data, id: frame.id});
  if (data.last) push.close();
});
"""


class NodeClient:
    def __init__(self, tmp_path, server, key):
        (tmp_path / "pushd.js").write_bytes(server.js)
        (tmp_path / "run.js").write_text(SCRIPT)
        self.out = open(tmp_path / "out.txt", "wb+")
        self.path = tmp_path / "out.txt"
        self.proc = subprocess.Popen(
            [
                NODE,
                "--experimental-websocket",
                "--no-warnings",
                str(tmp_path / "run.js"),
                str(tmp_path / "pushd.js"),
                "ws://127.0.0.1:%d/ws" % server.port,
                key,
            ],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def lines(self):
        return [
            json.loads(line)
            for line in self.path.read_text().splitlines()
            if line.startswith("{")
        ]

    async def wait_for(self, wanted, count=1, timeout=10.0):
        waited = 0.0
        while self.lines().count(wanted) < count:
            assert waited < timeout, "never saw %r: %s" % (
                wanted,
                self.path.read_text(),
            )
            await deferLater(reactor, 0.05, lambda: None)
            waited += 0.05

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.out.close()


@pytest.fixture
def node_clients():
    clients = []
    yield clients
    for client in clients:
        client.stop()


async def start(start_server, **settings):
    server = await start_server(**settings)
    response = await treq.get(server.url + "/pushd.js")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith(
        "text/javascript"
    )
    server.js = await response.content()
    return server


async def publish(server, data):
    response = await treq.post(
        server.url + "/api/channels/news/messages",
        json={"event": "headline", "data": data},
        headers=server.auth(),
    )
    assert response.code == 202
    return (await response.json())["id"]


@ensureDeferred
async def test_served_client_receives_and_resubscribes_after_reconnect(
    start_server, tmp_path, node_clients
):
    """pushd.js gets messages, and after the server drops it, reconnects and subscribes again by itself."""
    server = await start(start_server, client_key="ck")
    client = NodeClient(tmp_path, server, "ck")
    node_clients.append(client)
    await client.wait_for({"subscribed": "news"})
    first = await publish(server, {"n": 1})
    await client.wait_for({"data": {"n": 1}, "id": first})
    server.hub.close_all(1001, "restarting")  # as on a server restart
    await client.wait_for({"subscribed": "news"}, count=2)
    last = await publish(server, {"n": 2, "last": True})
    await client.wait_for({"data": {"n": 2, "last": True}, "id": last})
    await client.wait_for({"state": "disconnected"}, count=2)
    assert [line["state"] for line in client.lines() if "state" in line] == [
        "connecting",
        "connected",
        "disconnected",
        "connecting",
        "connected",
        "disconnected",
    ]


@ensureDeferred
async def test_wrong_key_fails_without_retrying(start_server, tmp_path, node_clients):
    """pushd.js with a wrong key stops in state failed instead of hammering the server with retries."""
    server = await start(start_server, client_key="ck")
    client = NodeClient(tmp_path, server, "wrong")
    node_clients.append(client)
    await client.wait_for({"state": "failed"})
    # Node exits once nothing is scheduled: no retry timer is left behind.
    await eventually(lambda: client.proc.poll() is not None, timeout=10)
    assert [line["state"] for line in client.lines() if "state" in line] == [
        "connecting",
        "failed",
    ]


PRESENCE_SCRIPT = r"""
const Pushd = require(process.argv[2]);
const [url, auth, annToken, bobToken] = process.argv.slice(3);
const out = (o) => console.log(JSON.stringify(o));
const ann = new Pushd(url, {token: annToken, authEndpoint: auth});
const room = ann.subscribe("presence-room");
room.bind("pushd:subscription_succeeded", (members) => {
  out({ann_members: Object.keys(members).sort()});
  const bob = new Pushd(url, {token: bobToken, authEndpoint: auth});
  const bobRoom = bob.subscribe("presence-room");
  bobRoom.bind("pushd:subscription_succeeded", () => bobRoom.trigger("client-wave", {hi: 1}));
  room.bind("client-wave", (data, frame) => { out({wave: data, from: frame.user_id}); bob.close(); });
});
room.bind("pushd:member_added", (m) => out({added: m.user_id, info: m.user_info}));
room.bind("pushd:member_removed", (m) => { out({removed: m.user_id}); ann.close(); });
const secret = ann.subscribe("private-denied");
secret.bind("pushd:subscription_error", (e) => out({denied: e.code}));
"""


@ensureDeferred
async def test_presence_auth_endpoint_and_client_events(
    start_server, tmp_path, node_clients
):
    """pushd.js gets signatures from the app's auth endpoint, tracks members
    and sends client events; the app's endpoint refuses one channel."""
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from pushd.client import PushClient

    server = await start(start_server, client_events=True)
    push = PushClient(server.url, server.secret)

    class AuthEndpoint(Resource):
        """What an app backend does: check its session, then sign."""

        isLeaf = True

        def render_POST(self, request):
            body = json.loads(request.content.read())
            if body["channel"] == "private-denied":
                request.setResponseCode(403)
                return b"{}"
            return json.dumps(
                push.channel_auth(body["connection_id"], body["channel"])
            ).encode()

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(AuthEndpoint())
    )
    try:
        (tmp_path / "pushd.js").write_bytes(server.js)
        (tmp_path / "run.js").write_text(PRESENCE_SCRIPT)
        client = NodeClient.__new__(NodeClient)
        client.path = tmp_path / "out.txt"
        client.out = open(client.path, "wb+")
        client.proc = subprocess.Popen(
            [
                NODE,
                "--experimental-websocket",
                "--no-warnings",
                str(tmp_path / "run.js"),
                str(tmp_path / "pushd.js"),
                "ws://127.0.0.1:%d/ws" % server.port,
                "http://127.0.0.1:%d/auth" % port.getHost().port,
                push.user_token("ann", {"name": "Ann"}),
                push.user_token("bob", {"name": "Bob"}),
            ],
            stdout=client.out,
            stderr=subprocess.STDOUT,
        )
        node_clients.append(client)
        await client.wait_for({"ann_members": ["ann"]})
        await client.wait_for({"denied": "auth_failed"})
        await client.wait_for({"added": "bob", "info": {"name": "Bob"}})
        await client.wait_for({"wave": {"hi": 1}, "from": "bob"})
        await client.wait_for({"removed": "bob"})
    finally:
        await port.stopListening()
