"""Fixtures: a real pushd listening on 127.0.0.1 on an ephemeral port."""

from __future__ import annotations

import pytest
import pytest_twisted
from clients import RunningServer
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from pushd.backends.memory import MemoryBackend
from pushd.config import Config
from pushd.hub import Hub
from pushd.web import make_site

SECRET = "test-api-secret-that-is-at-least-32-bytes"


@pytest_twisted.async_yield_fixture
async def start_server():
    """A factory: ``await start_server(**config)`` gives a running pushd."""
    servers: list[RunningServer] = []

    async def start(backend=None, **settings) -> RunningServer:
        settings.setdefault("api_secret", SECRET)
        config = Config(**settings)
        hub = Hub(backend or MemoryBackend(), reactor, config)
        await hub.backend.start()
        site = make_site(hub, config)
        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            site
        )
        server = RunningServer(
            hub, listening.getHost().port, site, listening, config.api_secret, []
        )
        servers.append(server)
        return server

    async def stop_all() -> None:
        """Close every client, then every server and its backend (once)."""
        while servers:
            server = servers.pop(0)
            for client in server.clients:
                await client.close()
            for stream in getattr(server, "streams", []):  # SSE (test_sse.py)
                stream.transport.loseConnection()
            await server.wait_sessions(0)
            if server.hub.webhooks is not None:
                await server.hub.webhooks.stop()
            await server.listening.stopListening()
            await server.hub.backend.stop()

    start.stop_all = stop_all
    yield start
    await stop_all()


@pytest.fixture
def secret() -> str:
    return SECRET


@pytest.fixture
def redis_server():
    """A fresh redis-server on a free port, killed after the test."""
    from pushd.testing import RedisServer

    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def pushd_process(tmp_path):
    """A factory: ``pushd_process(*args)`` runs ``twistd -n pushd *args``."""
    from processes import Pushd

    started = []

    def start(*args, name=None, command=None):
        process = Pushd(
            tmp_path, *args, name=name or "pushd%d" % len(started), command=command
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest_twisted.async_yield_fixture(params=["memory", "redis"])
async def backend_for(request):
    """Makes the backend under test: memory, or Redis on a fresh redis-server."""
    if request.param == "memory":
        yield lambda: None
        return
    from pushd.backends.redis import RedisBackend

    redis = request.getfixturevalue("redis_server")
    yield lambda: RedisBackend(reactor, port=redis.port)
    # redis-server was started after the test's pushd, so it would be killed
    # first: stop the pushd while its Redis is still there.
    if "start_server" in request.fixturenames:
        await request.getfixturevalue("start_server").stop_all()
