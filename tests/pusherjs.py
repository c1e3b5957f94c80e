"""The real Pusher clients for tests: pusher-js and Laravel Echo (Node, from
tests/js) driven over a pipe, the official Python server library, and an app
backend that authorizes with that library as a Laravel/Django app would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from urllib.parse import parse_qs

import pusher
from klein import Klein
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from pushd.testing import eventually

NODE = shutil.which("node")
DRIVER = os.path.join(os.path.dirname(__file__), "js", "pusher_driver.mjs")
KEY = "pusher-test-key"
APP_ID = "4242"


def has_pusher_js() -> bool:
    return NODE is not None and os.path.isdir(
        os.path.join(os.path.dirname(DRIVER), "node_modules", "pusher-js")
    )


class Driver:
    """One Node process holding any number of pusher-js / Echo clients."""

    def __init__(self, tmp_path, name: str = "node") -> None:
        self.path = tmp_path / ("%s.out" % name)
        self._out = open(self.path, "wb")
        self.proc = subprocess.Popen(
            [NODE, DRIVER],
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=os.path.dirname(DRIVER),
        )

    def send(self, **command) -> None:
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()

    def lines(self) -> list[dict]:
        return [
            json.loads(line)
            for line in self.path.read_text().splitlines()
            if line.startswith("{")
        ]

    def matching(self, **wanted) -> list[dict]:
        return [
            line
            for line in self.lines()
            if all(k in line and line[k] == v for k, v in wanted.items())
        ]

    async def wait_for(self, count: int = 1, timeout: float = 10.0, **wanted) -> dict:
        """The ``count``-th line with these fields (waits for it)."""
        try:
            await eventually(lambda: len(self.matching(**wanted)) >= count, timeout)
        except AssertionError:
            raise AssertionError(
                "never saw %r x%d in:\n%s"
                % (wanted, count, self.path.read_text()[-3000:])
            ) from None
        return self.matching(**wanted)[count - 1]

    def options(self, server, auth=None, user: str = "ann", **extra) -> dict:
        options = {
            "cluster": "mt1",
            "wsHost": "127.0.0.1",
            "wsPort": server.port,
            "forceTLS": False,
            "enabledTransports": ["ws"],
            "disableStats": True,
        }
        if auth is not None:
            options["channelAuthorization"] = {
                "endpoint": "%s/auth?user=%s" % (auth.url, user),
                "transport": "ajax",
            }
            options["userAuthentication"] = {
                "endpoint": "%s/signin?user=%s" % (auth.url, user),
                "transport": "ajax",
            }
        options.update(extra)
        return options

    async def connect(
        self, id: str, server, key: str = KEY, auth=None, user="ann", **extra
    ) -> str:
        """Connect pusher-js client ``id``; fires with its socket id."""
        self.send(
            op="connect",
            id=id,
            key=key,
            options=self.options(server, auth, user, **extra),
        )
        return (await self.wait_for(id=id, state="connected"))["socket_id"]

    async def subscribe(self, id: str, channel: str) -> dict:
        self.send(op="subscribe", id=id, channel=channel)
        return await self.wait_for(
            id=id, channel=channel, event="pusher:subscription_succeeded"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self._out.close()


class AuthServer:
    """The app's own backend: authorizes channels and users with the
    official Python library, as ``/broadcasting/auth`` does in Laravel.
    ``?user=`` says who the browser is logged in as (digits: sent as an
    integer, as Laravel does); ``?secret=`` signs with another secret."""

    app = Klein()

    def __init__(self, client: pusher.Pusher) -> None:
        self.client = client
        self.url = ""
        self.requests = 0

    def _library(self, args) -> pusher.Pusher:
        secret = args.get("secret", [None])[0]
        if secret is None:
            return self.client
        c = self.client._pusher_client
        return pusher.Pusher(c.app_id, c.key, secret, ssl=False)

    @app.route("/auth", methods=["POST"])
    def auth(self, request):
        self.requests += 1
        form = parse_qs(request.content.read().decode())
        args = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        user = args["user"][0]
        channel, socket_id = form["channel_name"][0], form["socket_id"][0]
        data = None
        if channel.startswith("presence-"):
            data = {
                "user_id": int(user) if user.isdigit() else user,
                "user_info": {"name": user.title()},
            }
        body = self._library(args).authenticate(channel, socket_id, data)
        # The library gives private-encrypted- channels' shared_secret as bytes.
        body = {k: v.decode() if isinstance(v, bytes) else v for k, v in body.items()}
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    @app.route("/signin", methods=["POST"])
    def signin(self, request):
        form = parse_qs(request.content.read().decode())
        args = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        user = args["user"][0]
        body = self._library(args).authenticate_user(
            form["socket_id"][0], {"id": user, "user_info": {"name": user.title()}}
        )
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()


def library(server, app_id: str = APP_ID, key: str = KEY, secret=None):
    """The official Python server library, pointed at pushd."""
    return pusher.Pusher(
        app_id=app_id,
        key=key,
        secret=secret or server.secret,
        host="127.0.0.1",
        port=server.port,
        ssl=False,
    )


async def call(function, *args, **kwargs):
    """The library is synchronous (requests): call it off the reactor thread."""
    return await deferToThread(function, *args, **kwargs)


async def start_auth_server(client: pusher.Pusher):
    auth = AuthServer(client)
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(auth.app.resource())
    )
    auth.url = "http://127.0.0.1:%d" % listening.getHost().port
    auth.listening = listening
    return auth
