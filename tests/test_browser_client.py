"""pushd.js, as served by pushd, driven by Node's WebSocket (the browser API)."""

import json
import shutil
import subprocess

import pytest
import treq
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.task import deferLater

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (.ci/run installs it)")

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
            [NODE, "--experimental-websocket", "--no-warnings", str(tmp_path / "run.js"),
             str(tmp_path / "pushd.js"), "ws://127.0.0.1:%d/ws" % server.port, key],
            stdout=self.out, stderr=subprocess.STDOUT)

    def lines(self):
        return [json.loads(line) for line in self.path.read_text().splitlines()
                if line.startswith("{")]

    async def wait_for(self, wanted, count=1, timeout=10.0):
        waited = 0.0
        while self.lines().count(wanted) < count:
            assert waited < timeout, "never saw %r: %s" % (wanted, self.path.read_text())
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
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/javascript")
    server.js = await response.content()
    return server


async def publish(server, data):
    response = await treq.post(server.url + "/api/channels/news/messages",
                               json={"event": "headline", "data": data},
                               headers=server.auth())
    assert response.code == 202
    return (await response.json())["id"]


@ensureDeferred
async def test_served_client_receives_and_resubscribes_after_reconnect(
        start_server, tmp_path, node_clients):
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
        "connecting", "connected", "disconnected", "connecting", "connected", "disconnected"]


@ensureDeferred
async def test_wrong_key_fails_without_retrying(start_server, tmp_path, node_clients):
    server = await start(start_server, client_key="ck")
    client = NodeClient(tmp_path, server, "wrong")
    node_clients.append(client)
    await client.wait_for({"state": "failed"})
    await deferLater(reactor, 1.0, lambda: None)
    assert [line["state"] for line in client.lines() if "state" in line] == [
        "connecting", "failed"]
