"""The demo's server side (``--demo``): off by default, its own app, and
endpoints that can only vouch inside that app."""

import json

import treq
from pytest_twisted import ensureDeferred

from pushd.auth import channel_signature


async def post(server, path, body):
    response = await treq.post(
        server.url + path, data=json.dumps(body).encode(), persistent=False
    )
    return response.code, json.loads(await response.content())


@ensureDeferred
async def test_demo_is_off_by_default(start_server):
    """Without --demo there is no page, no token endpoint and no demo app."""
    server = await start_server()
    for path in ("/demo/", "/demo/token"):
        response = await treq.get(server.url + path, persistent=False)
        assert response.code == 404
        await response.content()
    assert server.hub.apps.by_id("demo") is None


@ensureDeferred
async def test_demo_page_and_token_connect_to_the_demo_app(start_server):
    """The page is served; a token from the endpoint identifies a user of the
    demo app (key "demo"), whose presence channel the auth endpoint signs."""
    server = await start_server(demo=True)
    page = await treq.get(server.url + "/demo/", persistent=False)
    assert page.code == 200
    assert b'src="../pushd.js"' in await page.content()
    code, answer = await post(server, "/demo/token", {"name": "Ann Smith"})
    assert code == 200 and answer["key"] == "demo"
    assert answer["user_id"].startswith("ann-smith-")
    client = await server.connect("?key=demo&token=" + answer["token"])
    hello = await client.next_of("connected")
    assert hello["user_id"] == answer["user_id"]
    code, auth = await post(
        server,
        "/demo/auth",
        {"connection_id": hello["connection_id"], "channel": "presence-demo-room"},
    )
    assert code == 200
    client.send(dict(auth, type="subscribe", channel="presence-demo-room"))
    subscribed = await client.next_of("subscribed")
    assert subscribed["members"] == [
        {"user_id": answer["user_id"], "user_info": {"name": "Ann Smith"}}
    ]


@ensureDeferred
async def test_demo_cannot_vouch_for_the_real_app(start_server):
    """The demo's tokens and signatures are the demo app's: useless on the
    server's own app, and the auth endpoint signs demo channels only."""
    server = await start_server(demo=True, client_key="real-key-1234")
    _, answer = await post(server, "/demo/token", {"name": "Mallory"})
    client = await server.connect("?key=real-key-1234&token=" + answer["token"])
    assert (await client.wait_closed())[0] == 4002  # forged for this app
    code, error = await post(
        server, "/demo/auth", {"connection_id": "x" * 16, "channel": "private-payroll"}
    )
    assert (code, error["error"]) == (403, "forbidden")
    demo = server.hub.apps.by_id("demo")
    assert demo.secret != server.secret
    assert channel_signature(server.secret, "c", "private-demo-chat") != (
        channel_signature(demo.secret, "c", "private-demo-chat")
    )


@ensureDeferred
async def test_demo_token_refuses_bad_names(start_server):
    """Bad input gets 400 with a JSON error, not a token."""
    server = await start_server(demo=True)
    for body in ({"name": ""}, {"name": "x" * 33}, {"name": 5}, ["Ann"]):
        code, error = await post(server, "/demo/token", body)
        assert (code, error["error"]) == (400, "invalid_field"), body
    response = await treq.post(
        server.url + "/demo/token", data=b"{nope", persistent=False
    )
    assert response.code == 400
    assert json.loads(await response.content())["error"] == "invalid_json"


@ensureDeferred
async def test_keyless_default_app_still_takes_any_key_beside_the_demo(
    start_server,
):
    """--demo adds an app; the keyless default app of a single-app setup
    keeps accepting clients, whatever key they send, except "demo"."""
    server = await start_server(demo=True)
    for query in ("", "?key=anything"):
        client = await server.connect(query)
        await client.next_of("connected")
        await client.subscribe("news")
    assert {s.app.id for s in server.hub.sessions.values()} == {"default"}
