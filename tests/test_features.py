"""A backend may provide only some duties: pushd says clearly, at start or
per request, what it cannot do with it, and does the rest."""

import json

import pytest
import treq
from pytest_twisted import ensureDeferred
from test_users_channels import as_user, sub_frame
from twisted.internet import reactor
from zope.interface import implementer_only

from pushd.backends.memory import MemoryBackend
from pushd.config import Config
from pushd.history import rule_from_mapping
from pushd.hub import Hub
from pushd.interfaces import IBackendLifecycle, IPubSub, missing_features
from pushd.tap import Options
from pushd.testing import BackendContract


@implementer_only(IBackendLifecycle, IPubSub)
class PubSubOnly(MemoryBackend):
    """The least a backend can be: messages between nodes, nothing kept."""


class TestPubSubOnlyBackend(BackendContract):
    """A backend that declares only pub/sub passes the contract: the tests
    of what it lacks are skipped, not failed."""

    async def make_backend(self):
        return PubSubOnly()


def test_missing_features_are_named():
    """An operator can tell what a backend lacks."""
    assert missing_features(PubSubOnly()) == [
        "occupancy",
        "history",
        "presence",
        "users",
        "offline",
        "relay state",
    ]
    assert missing_features(MemoryBackend()) == []


def test_history_rules_need_a_backend_with_history():
    """Configuring history for a backend that keeps none fails at start,
    naming the setting, instead of silently keeping nothing."""
    rule = rule_from_mapping({"channel": "news", "size": 10, "ttl": 60})
    config = Config(api_secret="s" * 32, history=(rule,))
    with pytest.raises(ValueError, match=r"keeps no history .* .history. setting"):
        Hub(PubSubOnly(), reactor, config)
    Hub(MemoryBackend(), reactor, config)  # fine with one that has it


def test_start_refuses_a_backend_missing_a_required_duty(monkeypatch, capsys, tmp_path):
    """``twistd pushd`` with such a configuration exits 2 with one clear
    line, before listening."""
    monkeypatch.setattr("pushd.tap.make_backend", lambda reactor, spec: PubSubOnly())
    config = tmp_path / "pushd.yaml"
    config.write_text("history:\n  - {channel: 'news*', size: 10, ttl: 60}\n")
    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(["--config", str(config)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pushd: error: backend PubSubOnly keeps no history")


@implementer_only(IBackendLifecycle)
class NoPubSub(MemoryBackend):
    """Not a backend pushd can use."""


def test_pub_sub_is_required():
    """A backend that cannot carry messages is refused, saying why."""
    with pytest.raises(ValueError, match="does not provide IPubSub"):
        Hub(NoPubSub(), reactor, Config(api_secret="s" * 32))


@ensureDeferred
async def test_pub_sub_only_backend_serves_what_it_can(start_server):
    """With a pub/sub-only backend, clients still subscribe and receive;
    presence and user queries are refused with 'not_supported' (501), not
    an internal error."""
    server = await start_server(backend=PubSubOnly())
    client = await as_user(server, "ann")
    await client.subscribe("news")
    response = await treq.post(
        server.url + "/api/channels/news/messages",
        json={"event": "e", "data": 1},
        headers=server.auth(),
    )
    assert response.code == 202
    assert (await client.next_of("message"))["data"] == 1
    client.send(sub_frame(client, "presence-room", json.dumps({"user_id": "ann"})))
    error = await client.next_of("error")
    assert error["code"] == "not_supported" and "presence" in error["message"]
    for path in ("/api/users", "/api/users/ann", "/api/users/ann/channels"):
        response = await treq.get(server.url + path, headers=server.auth())
        assert response.code == 501, path
        assert (await response.json())["error"] == "not_supported"
    response = await treq.get(server.url + "/api/channels/news", headers=server.auth())
    body = await response.json()
    assert body["subscribers"] == 1  # this node's count, without IOccupancy
