"""The OpenAPI document (pushd/openapi.json, served at /api/openapi.json) is
the REST API's contract: it names exactly the routes pushd serves, and a live
pushd answers what it says (schemathesis)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import treq
from pytest_twisted import ensureDeferred
from twisted.internet.threads import deferToThread

from pushd.api.root import OPENAPI
from pushd.config import Config
from pushd.hub import Hub
from pushd.web import make_site

# Served by the site but not REST: the transports (/app is Pusher's
# WebSocket), the client script and its types, the demo (docs/protocol.md,
# docs/pusher.md document them).
NOT_REST = {"/ws", "/sse", "/app", "/pushd.js", "/pushd.d.ts", "/demo"}
METHODS = {"get", "put", "post", "delete", "patch"}


def _klein_routes(resource, prefix: str) -> set[tuple[str, str]]:
    """Routes of a Klein app, following its branch routes into the resources
    they mount."""
    app = resource._app
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.endswith("_branch"):
            mounted = app.execute_endpoint(rule.endpoint[: -len("_branch")], None)
            mount = prefix + rule.rule.split("<path:__rest__>")[0].rstrip("/")
            routes |= served_routes(mounted, mount)
            continue
        if rule.methods is None:  # the root of a branch route
            continue
        path = prefix + re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes |= {(m.lower(), path) for m in rule.methods if m.lower() in METHODS}
    return routes


def served_routes(resource, prefix: str = "") -> set[tuple[str, str]]:
    """Every (method, path) the resource tree answers, read from the tree
    itself: Klein apps' URL maps (and their branches), fixed children, and
    leaf resources' render_* methods, so a route added anywhere shows up."""
    if hasattr(getattr(resource, "_app", None), "url_map"):
        return _klein_routes(resource, prefix)
    routes: set[tuple[str, str]] = set()
    for name, child in getattr(resource, "children", {}).items():
        path = prefix + "/" + name.decode()
        if path in NOT_REST:
            continue
        if hasattr(getattr(child, "_app", None), "url_map") or getattr(
            child, "children", None
        ):
            routes |= served_routes(child, path)
            continue
        methods = {
            m[len("render_") :].lower()
            for m in dir(child)
            if m.startswith("render_") and m[len("render_") :].lower() in METHODS
        }
        routes |= {(m, path) for m in methods or {"get"}}
    return routes


def documented_routes() -> set[tuple[str, str]]:
    with open(OPENAPI, encoding="utf-8") as f:
        doc = json.load(f)
    return {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


def test_documented_routes_are_exactly_the_served_routes():
    """A route served but not documented, or documented but not served, fails
    here: the document cannot drift from the server."""
    from twisted.internet import reactor

    from pushd.backends.memory import MemoryBackend

    config = Config(api_secret="x" * 16)
    site = make_site(Hub(MemoryBackend(), reactor, config), config)
    served = served_routes(site.resource)
    documented = documented_routes()
    assert served - documented == set(), "served but not in pushd/openapi.json"
    assert documented - served == set(), "in pushd/openapi.json but not served"
    assert ("post", "/api/channels/{channel}/messages") in served


@ensureDeferred
async def test_document_is_served(start_server):
    """GET /api/openapi.json needs no secret and answers the repository's
    document, OpenAPI 3.1."""
    server = await start_server()
    response = await treq.get(server.url + "/api/openapi.json")
    assert response.code == 200
    served = await response.json()
    with open(OPENAPI, encoding="utf-8") as f:
        assert served == json.load(f)
    assert served["openapi"].startswith("3.1")


SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")


@ensureDeferred
async def test_schemathesis_finds_no_server_error_or_schema_mismatch(
    pushd_process, tmp_path
):
    """schemathesis drives every documented operation of a live pushd with
    generated requests, valid and invalid: no 5xx, every status and body as
    documented.  Bounded for the suite (PUSHD_SCHEMATHESIS=long for the
    longer profile, docs/operations.md)."""
    config = tmp_path / "pushd.yaml"
    config.write_text(
        "listen: tcp:0:interface=127.0.0.1\n"
        "api-secret: schema-secret-value\n"
        "client-key: schema-key\n"
        "history: [{channel: 'h-*', size: 10, ttl: 60}]\n"
    )
    (tmp_path / "schemathesis.toml").write_text(
        '[parameters]\n"path.apikey" = "schema-key"\n'
    )
    port = await pushd_process("--config", str(config)).port()
    long = os.environ.get("PUSHD_SCHEMATHESIS") == "long"
    profile = (
        ["-n", "100", "--phases", "examples,coverage,fuzzing,stateful"]
        if long
        else ["-n", "5", "--phases", "fuzzing", "--seed", "15"]
    )
    result = await deferToThread(
        subprocess.run,
        [
            SCHEMATHESIS,
            "--config-file",
            str(tmp_path / "schemathesis.toml"),
            "run",
            "http://127.0.0.1:%d/api/openapi.json" % port,
            "--checks",
            "not_a_server_error,status_code_conformance,"
            "content_type_conformance,response_schema_conformance",
            "-H",
            "Authorization: Bearer schema-secret-value",
            "-H",
            "X-Thunder-Secret-Key: schema-secret-value",
            "--workers",
            "1",
            *profile,
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=900 if long else 120,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert re.search(r"\b20 passed\b|\d+ generated, \d+ passed", result.stdout)


@ensureDeferred
async def test_unroutable_paths_get_json_not_html(start_server):
    """A path no route can take (a control character in it; schemathesis found
    this) is answered 404 in JSON, in the shape of the API it names."""
    server = await start_server()
    response = await treq.get(server.url + "/api/users/a%0Ab", headers=server.auth())
    assert response.code == 404
    assert (await response.json())["error"] == "not_found"
    response = await treq.post(
        server.url + "/api/1.0.0/key/users/%0A/", headers=server.auth()
    )
    assert response.code == 404
    assert await response.json() == {"message": "Not found.", "status": 404}
