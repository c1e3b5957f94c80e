"""PushService: the running server as a Twisted service tree.

Starting order matters: the backend first (a node that cannot reach Redis
must not accept clients), then the listeners.  Stopping: tell clients we are
going away (1001, so they reconnect elsewhere), stop listening, then close
the backend.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from pushd.errors import CloseCode
from pushd.hub import Hub
from pushd.summary import summary_lines

SHUTDOWN_GRACE = 3.0


def _fail_startup(reactor: Any) -> None:
    """Stop with exit status 1, so systemd's Restart=on-failure and any
    supervisor see the failure (twistd itself would exit 0)."""

    def stop() -> None:
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.stop()

    # A bind failure happens inside startService, before reactor.run().
    reactor.callWhenRunning(stop)


class ListenService(Service):
    """Listen on one endpoint; failing to listen stops the server.

    Twisted's StreamServerEndpointService only logs a bind failure and keeps
    running with nothing listening, which is the worst outcome for a server
    run under systemd: it looks healthy and serves nobody.
    """

    _log = Logger()

    def __init__(
        self, reactor: Any, description: str, endpoint: Any, factory: Any
    ) -> None:
        self._reactor = reactor
        self.description = description
        self._endpoint = endpoint
        self._factory = factory
        self.port: Any = None
        self.listening: Deferred = Deferred()

    def startService(self) -> None:
        super().startService()
        d = self._endpoint.listen(self._factory)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: Any) -> None:
        self.port = port
        address = port.getHost()
        self._log.info(
            "pushd listening on {host}:{port} ({description})",
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
            description=self.description,
        )
        self.listening.callback(port)

    def _failed(self, failure: Any) -> None:
        self._log.critical(
            "cannot listen on {description}: {error}",
            description=self.description,
            error=failure.getErrorMessage(),
        )
        self.listening.errback(failure)
        self.listening.addErrback(lambda _: None)
        _fail_startup(self._reactor)

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self.port is not None:
            return maybeDeferred(self.port.stopListening)
        return None


class PushService(MultiService):
    _log = Logger()

    def __init__(self, reactor: Any, hub: Hub, worker: int | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self.hub = hub
        # With --workers, this process is worker number ``worker`` and the
        # supervisor logs the summary once for all (pushd.workers).
        self.worker = worker
        self._backend_failed_to_start = False

    def startService(self) -> None:
        d = self.hub.backend.start()
        d.addCallbacks(self._backend_started, self._backend_failed)

    def _backend_started(self, _: Any) -> None:
        MultiService.startService(self)
        # What start-up built (modules, apps, routes) lives as long as the
        # process: frozen out of the garbage collector's sight, the full
        # collections a reconnect storm triggers no longer walk it
        # (bench/connections.py).
        gc.collect()
        gc.freeze()
        self.listening().addCallbacks(self._summarize, lambda _: None)

    def _summarize(self, _: Any) -> None:
        """One block saying what this node is and where to point clients."""
        if self.worker is not None:
            self._log.info(
                "worker {index} ready: node {node}",
                index=self.worker,
                node=self.hub.node_id,
                pushd_worker_ready=True,
            )
            return
        listeners = [
            (s.description, s.port) for s in self if isinstance(s, ListenService)
        ]
        config = self.hub.config
        lines = summary_lines(config, config.backend, list(self.hub.apps), listeners)
        self._log.info("{summary}", summary="\n".join(lines))

    def _backend_failed(self, failure: Any) -> None:
        # One line says it all (an operator reads it in the journal); a
        # backend whose start failed has let go of what it held, so stopping
        # it again would only add a second, confusing failure (#15).
        self._backend_failed_to_start = True
        self._log.critical(
            "backend failed to start: {error}", error=failure.getErrorMessage()
        )
        _fail_startup(self._reactor)

    def stopService(self) -> Deferred:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._log.info(
            "shutting down: closing {count} connections", count=len(self.hub.sessions)
        )
        self.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
        # Give clients the closing handshake (bounded by Autobahn's
        # closeHandshakeTimeout) so they see 1001, not a dropped socket.
        waited = 0.0
        while self.hub.sessions and waited < SHUTDOWN_GRACE:
            await deferLater(self._reactor, 0.05, lambda: None)
            waited += 0.05
        if self.running:
            await maybeDeferred(MultiService.stopService, self)
        if self.hub.webhooks is not None:
            await self.hub.webhooks.stop()
        if not self._backend_failed_to_start:
            await self.hub.backend.stop()

    def listening(self) -> Deferred:
        """Fires with the listening ports once every listener is up."""
        return DeferredList(
            [s.listening for s in self if isinstance(s, ListenService)],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
