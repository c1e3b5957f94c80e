"""Redis faults on a real cluster: the scenario shared by the fault tests
(tests/test_redis_faults.py) and the soak benchmark (bench/redis_soak.py).

Two ``twistd pushd`` processes share one real redis-server.  A publisher
posts numbered messages at a steady rate, alternating nodes, to a channel
that keeps history and one that does not; on each node a WebSocket client
subscribes to both, and a user sits in a presence channel.  Then
redis-server is killed (-9) and started again, and ``Scenario.check`` says
what every client got: every acknowledged (202) message once and in order
on the history channel; everything or a ``messages_lost`` notice on the
other; no presence event after the setup; and how long the cluster took to
be right again (users, members, counts, readiness).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater

from pushd.auth import channel_signature, make_user_token

SECRET = "soak-secret-that-is-at-least-32-bytes-long"
KEPT, LIVE, ROOM = "kept-feed", "live-feed", "presence-room"


def kept(stream: int) -> str:
    """Publisher ``stream``'s channel with history (stream 0: ``kept-feed``)."""
    return KEPT + ("-%d" % stream if stream else "")


def live(stream: int) -> str:
    return LIVE + ("-%d" % stream if stream else "")


TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def until(check: Any, timeout: float, step: float = 0.05) -> float:
    """Await ``check()`` (sync or async) until true; seconds it took."""
    start = time.monotonic()
    while True:
        value = check()
        if isinstance(value, Deferred) or hasattr(value, "__await__"):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError("not true within %ss: %r" % (timeout, check))
        await sleep(step)


class Node:
    """A ``twistd -n pushd`` process; its log in a file we can poll."""

    def __init__(self, directory: str, name: str, *args: str) -> None:
        self.name = name
        self.log_path = os.path.join(directory, name + ".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed by kill)
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "pushd", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
        self.url = ""
        self.port = 0

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    async def started(self, timeout: float = 20.0) -> None:
        pattern = re.compile(r"pushd listening on [0-9.]+:(\d+)")
        await until(lambda: pattern.search(self.log()) or self.proc.poll(), timeout)
        match = pattern.search(self.log())
        assert match, "%s did not start:\n%s" % (self.name, self.log())
        self.port = int(match.group(1))
        self.url = "http://127.0.0.1:%d" % self.port

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    async def api(self, method: str, path: str, body: Any = None, **headers: str):
        sent: dict[bytes | str, bytes | str] = {"Authorization": "Bearer " + SECRET}
        sent.update(headers)
        response = await treq.request(
            method,
            self.url + path,
            headers=sent,
            data=json.dumps(body).encode() if body is not None else None,
        )
        text = await response.text()
        return response.code, (json.loads(text) if text else None)


class _Protocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.client.proto = self
        self.factory.opened.callback(None)

    def onMessage(self, payload, isBinary):
        self.factory.client.received(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.factory.client.closed = code


class Client:
    """A WebSocket client that keeps every frame it gets."""

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.proto: Any = None
        self.closed: int | None = None
        self.connection_id = ""

    def received(self, frame: dict) -> None:
        self.frames.append(frame)
        if frame["type"] == "connected":
            self.connection_id = frame["connection_id"]

    def send(self, frame: dict) -> None:
        self.proto.sendMessage(json.dumps(frame).encode())

    def of(self, kind: str, channel: str | None = None) -> list[dict]:
        return [
            f
            for f in self.frames
            if f["type"] == kind and (channel is None or f.get("channel") == channel)
        ]

    def data(self, channel: str) -> list:
        return [f["data"] for f in self.of("message", channel)]

    async def subscribe(self, channel: str, **extra: Any) -> None:
        self.send({"type": "subscribe", "channel": channel, **extra})
        await until(lambda: self.of("subscribed", channel), 10)

    async def join(self, channel: str) -> None:
        auth = channel_signature(SECRET, self.connection_id, channel)
        await self.subscribe(channel, auth=auth)


async def connect(node: Node, user: str | None = None) -> Client:
    client = Client()
    query = "?token=" + make_user_token(SECRET, user, {"n": user}) if user else ""
    factory: Any = WebSocketClientFactory("ws://127.0.0.1:%d/ws%s" % (node.port, query))
    factory.protocol = _Protocol
    factory.client = client
    factory.opened = Deferred()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", node.port).connect(factory)
    await factory.opened
    await until(lambda: client.connection_id, 10)
    return client


@dataclass
class Publisher:
    """Numbered messages to both channels, alternating nodes, at a steady rate."""

    nodes: list[Node]
    interval: float = 0.01
    stream: int = 0
    acked: list[int] = field(default_factory=list)
    refused: int = 0
    running: bool = True
    done: Deferred = field(default_factory=Deferred)

    def start(self) -> None:
        Deferred.fromCoroutine(self._run()).chainDeferred(self.done)

    async def _run(self) -> None:
        n = 0
        while self.running:
            n += 1
            node = self.nodes[n % len(self.nodes)]
            body = {
                "channels": [kept(self.stream), live(self.stream)],
                "event": "n",
                "data": n,
            }
            key = "s%d-m%d" % (self.stream, n)
            try:
                code, _ = await node.api(
                    "POST", "/api/messages", body, **{"Idempotency-Key": key}
                )
            except Exception:
                code = 0
            if code == 202:
                self.acked.append(n)
            else:
                self.refused += 1
            await sleep(self.interval)

    async def stop(self) -> None:
        self.running = False
        await self.done


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def redis_args(spec: str, heartbeat: float, node_ttl: float) -> str:
    return spec + ":heartbeat=%s:node-ttl=%s:timeout=1" % (heartbeat, node_ttl)


class Scenario:
    """Two nodes, their clients, and the checks after a fault."""

    def __init__(
        self, redis: Any, directory: str, heartbeat=0.5, node_ttl=3.0, streams=1
    ):
        self.redis = redis
        self.streams = streams
        self.dir = directory
        self.heartbeat, self.node_ttl = heartbeat, node_ttl
        self.nodes: list[Node] = []
        self.spares: list[Node] = []
        self.subscribers: list[Client] = []
        self.members: list[Client] = []
        self.presence_seen: dict[int, int] = {}

    async def start(self, spares: int = 0) -> None:
        """Nodes a and b with their clients; ``spares`` more nodes (c, d...)
        with only a presence member each, to be killed by a test."""
        config = os.path.join(self.dir, "pushd.yaml")
        _write(config, "history:\n  - {channel: 'kept-*', size: 100000, ttl: 3600}\n")
        spec = redis_args(self.redis.spec(), self.heartbeat, self.node_ttl)
        names = "abcdefgh"[: 2 + spares]
        everyone = [self._node(config, spec, name) for name in names]
        for node in everyone:
            await node.started()
        self.nodes, self.spares = everyone[:2], everyone[2:]
        for node in self.nodes:
            client = await connect(node)
            for stream in range(self.streams):
                await client.subscribe(kept(stream))
                await client.subscribe(live(stream))
            self.subscribers.append(client)
        for node in everyone:
            member = await connect(node, "user-" + node.name)
            await member.join(ROOM)
            if node in self.nodes:
                self.members.append(member)
        for member in self.members:  # everyone has seen everyone arrive
            await until(lambda m=member: len(self._members_seen(m)) == len(names), 10)
        self.presence_seen = {id(m): len(self._events(m)) for m in self.members}

    def _node(self, config: str, spec: str, name: str) -> Node:
        return Node(
            self.dir,
            "node-" + name,
            "--config",
            config,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--api-secret",
            SECRET,
            "--backend",
            spec,
        )

    def _events(self, member: Client) -> list[dict]:
        return [
            f for f in member.frames if f["type"] in ("member_added", "member_removed")
        ]

    def _members_seen(self, member: Client) -> set:
        seen = {m["user_id"] for m in member.of("subscribed", ROOM)[0]["members"]}
        for event in self._events(member):
            if event["type"] == "member_added":
                seen.add(event["user_id"])
            else:
                seen.discard(event["user_id"])
        return seen

    def stop(self) -> None:
        for node in self.nodes + self.spares:
            node.kill()

    async def healthy(self) -> bool:
        """Users, members, counts and readiness right on every node."""
        users = sorted("user-" + n.name for n in self.nodes)
        for node in self.nodes:
            ready = await treq.get(node.url + "/ready")
            await ready.content()
            if ready.code != 200:
                return False
            _, online = await node.api("GET", "/api/users")
            _, room = await node.api("GET", "/api/channels/%s/users" % ROOM)
            _, kept = await node.api("GET", "/api/channels/" + KEPT)
            if (
                online != {"online": 2}
                or sorted(u["user_id"] for u in room["users"]) != users
                or kept["subscribers"] != len(self.subscribers)
            ):
                return False
        return True

    async def restart_redis(self, outage: float, during: Any = None) -> float:
        """Kill -9 redis-server, (call ``during()``,) start it after
        ``outage`` s; seconds from the restart until the cluster is healthy
        again."""
        self.redis.stop()
        if during is not None:
            during()
        await sleep(outage)
        self.redis.start()
        return await until(self.healthy, 30, step=0.1)

    async def check(self, *acked: list[int]) -> dict:
        """Wait for delivery to settle, then count what each client got;
        ``acked``: what each publisher stream had acknowledged."""

        def settled() -> bool:
            return all(
                not done or done[-1] in c.data(kept(stream))
                for stream, done in enumerate(acked)
                for c in self.subscribers
            )

        await until(settled, 15)
        await sleep(0.3)
        figures = {"acked": sum(map(len, acked))}
        figures.update(lost=0, duplicated=0, reordered=0)
        figures.update(live_complete=0, live_notified=0, live_silent_loss=0)
        for stream, done in enumerate(acked):
            wanted = set(done)
            for client in self.subscribers:
                got = client.data(kept(stream))
                figures["lost"] += len(wanted - set(got))
                figures["duplicated"] += len(got) - len(set(got))
                figures["reordered"] += sum(1 for x, y in pairwise(got) if y <= x)
                if wanted <= set(client.data(live(stream))):
                    figures["live_complete"] += 1
                elif client.of("messages_lost", live(stream)):
                    figures["live_notified"] += 1
                else:
                    figures["live_silent_loss"] += 1
        figures["spurious_presence"] = sum(
            len(self._events(m)) - self.presence_seen[id(m)] for m in self.members
        )
        return figures
