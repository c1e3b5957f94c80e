"""Pusher clients on several pushd nodes (real processes) on one real Redis:
presence, send_to_user and terminate_connections span the nodes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pusherjs import Driver, call, has_pusher_js, library, start_auth_server
from pytest_twisted import ensureDeferred
from test_cluster import SECRET, start_nodes

pytestmark = pytest.mark.skipif(not has_pusher_js(), reason="needs node + tests/js")


@pytest.fixture
def node_driver(tmp_path):
    driver = Driver(tmp_path, "pusherjs")
    yield driver
    driver.stop()


async def pusher_nodes(pushd_process, redis_server):
    procs = await start_nodes(pushd_process, redis_server, 2)
    # A single app without a client key: any key at /app/{key}, any app id.
    return [SimpleNamespace(port=p.http_port, secret=SECRET, proc=p) for p in procs]


@ensureDeferred
async def test_presence_and_terminate_across_nodes(
    pushd_process, redis_server, node_driver
):
    """A presence member on one node is announced once to a member on the
    other, whatever its number of connections; the Pusher API of either node
    lists both; send_to_user and terminate_connections sent to one node
    reach the user's connections on both (4009, no reconnect); a killed
    node's members are removed for the others."""
    one, two = await pusher_nodes(pushd_process, redis_server)
    auth = await start_auth_server(library(one))
    node = node_driver
    try:
        await node.connect("a1", one, key="any-key", auth=auth, user="1")
        await node.connect("b2", two, key="any-key", auth=auth, user="2")
        await node.connect("b1", one, key="any-key", auth=auth, user="2")
        await node.subscribe("a1", "presence-room")
        joined = await node.subscribe("b2", "presence-room")
        assert joined["count"] == 2
        added = await node.wait_for(id="a1", event="pusher:member_added")
        assert added["data"]["id"] == "2"
        await node.subscribe("b1", "presence-room")
        users = await call(library(two).users_info, "presence-room")
        assert users == {"users": [{"id": "1"}, {"id": "2"}]}
        for id in ("b1", "b2"):
            node.send(op="signin", id=id)
            await node.wait_for(
                id=id, signed_in={"id": "2", "user_info": {"name": "2"}}
            )
        # Both connections have joined #server-to-user-2 once send_to_user
        # reaches both.
        for attempt in range(50):
            await call(library(two).send_to_user, "2", "note", attempt)
            if all(node.matching(id=i, user_event="note") for i in ("b1", "b2")):
                break
        for id in ("b1", "b2"):
            await node.wait_for(id=id, user_event="note")
        assert await call(library(two).terminate_user_connections, "2") == {}
        for id in ("b1", "b2"):
            await node.wait_for(
                id=id, conn_error={"code": 4009, "message": "logged out by the app"}
            )
            await node.wait_for(id=id, state="disconnected")
        removed = await node.wait_for(id="a1", event="pusher:member_removed")
        assert removed["data"]["id"] == "2"
        assert len(node.matching(id="a1", event="pusher:member_added")) == 1
        assert await call(library(one).users_info, "presence-room") == {
            "users": [{"id": "1"}]
        }
        assert not node.matching(id="a1", state="disconnected")
        # A node dies (kill -9): its members leave once its lease expires, and
        # its pusher-js clients are not told to give up.
        await node.connect("c2", two, key="any-key", auth=auth, user="3")
        await node.subscribe("c2", "presence-room")
        await node.wait_for(id="a1", event="pusher:member_added", count=2)
        two.proc.kill()
        removed = await node.wait_for(id="a1", event="pusher:member_removed", count=2)
        assert removed["data"]["id"] == "3"
        await node.wait_for(id="c2", state="connecting")
        assert not node.matching(id="c2", state="failed")
        assert await call(library(one).users_info, "presence-room") == {
            "users": [{"id": "1"}]
        }
    finally:
        await auth.listening.stopListening()
