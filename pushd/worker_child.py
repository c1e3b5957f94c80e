"""The worker side of ``--workers N``: what a process started by the
supervisor (``pushd.workers``) does differently from a lone pushd.

The supervisor runs the same ``twistd pushd ARGS`` command line with
``PUSHD_WORKER`` in the environment (JSON: the worker's index, the
supervisor's pid and, when pushd generated one, the API secret, which must be
the same in every worker).  The listening sockets are inherited, in the order
of ``listen``, from descriptor 3 on: the worker adopts them instead of binding
(as Twisted's ``AdoptedStreamServerEndpoint`` does), so every worker accepts from the
same kernel queue.  It logs JSON events on stdout (``worker_log_observer``,
given to twistd as ``--logger``) for the supervisor to relay with its index
and pid, and stops by itself if the supervisor goes away.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred, execute
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger, jsonFileLogObserver
from zope.interface import implementer

WORKER_ENV = "PUSHD_WORKER"
FIRST_FD = 3
# Seconds between two checks that the supervisor is still there.
PARENT_CHECK = 1.0


@dataclass(frozen=True)
class WorkerInfo:
    """What the supervisor tells one worker (``PUSHD_WORKER``)."""

    index: int
    parent: int
    api_secret: str | None = None

    def to_env(self) -> str:
        return json.dumps(
            {"index": self.index, "parent": self.parent, "api_secret": self.api_secret}
        )


def worker_info(environ: Any = None) -> WorkerInfo | None:
    """This process's worker identity, or None when it is not a worker."""
    raw = (os.environ if environ is None else environ).get(WORKER_ENV)
    if not raw:
        return None
    values = json.loads(raw)
    return WorkerInfo(int(values["index"]), int(values["parent"]), values["api_secret"])


def worker_log_observer() -> Any:
    """twistd ``--logger`` of a worker: one JSON event per line on stdout,
    which the supervisor reads and logs again as its own, so a worker's log
    keeps its levels, namespaces and failures wherever the supervisor's goes
    (``--logfile``, the journal)."""
    return jsonFileLogObserver(sys.stdout)


class _TakeOneAtATime:
    """Accept one connection per wake-up of the reactor.

    Twisted accepts up to 100 pending connections each time a listening
    socket is readable; on a socket shared by workers, the first worker to
    wake takes a whole burst (40 connections opened at once all landed on
    one of two workers) and does every handshake of it alone.  Taking one
    lets the others, woken for the same socket, take the next: the burst is
    shared (bench/README.md, "Workers")."""

    def doRead(self) -> Any:
        self.numberAccepts = 1
        return super().doRead()  # type: ignore[misc]


class _SharedTCPPort(_TakeOneAtATime, tcp.Port):
    pass


class _SharedUNIXPort(_TakeOneAtATime, unix.Port):
    pass


@implementer(IStreamServerEndpoint)
class _InheritedEndpoint:
    """A listening socket inherited from the supervisor, accepted from
    one connection at a time."""

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self._reactor, self._fd, self._family = reactor, fd, family

    def listen(self, factory: Any) -> Deferred:
        return execute(self._adopt, factory)

    def _adopt(self, factory: Any) -> Any:
        if self._family == socket.AF_UNIX:
            port = _SharedUNIXPort._fromListeningDescriptor(
                self._reactor, self._fd, factory
            )
        else:
            port = _SharedTCPPort._fromListeningDescriptor(
                self._reactor, self._fd, self._family, factory
            )
        port.startListening()
        os.close(self._fd)  # the port holds its own duplicate
        return port


def inherited_endpoints(reactor: Any, count: int) -> list[Any]:
    """Endpoints for the ``count`` listening sockets the supervisor passed."""
    endpoints = []
    for fd in range(FIRST_FD, FIRST_FD + count):
        probe = socket.socket(fileno=fd)
        family = probe.family
        probe.detach()  # only asked its family; the descriptor stays open
        endpoints.append(_InheritedEndpoint(reactor, fd, family))
    return endpoints


class ParentWatch(TimerService):
    """Stop this worker when its supervisor is gone (killed with -9 it
    cannot stop us): a worker left alone would keep serving with nobody to
    restart it or stop it."""

    _log = Logger()

    def __init__(self, reactor: Any, parent: int) -> None:
        super().__init__(PARENT_CHECK, self._check)
        self.clock = reactor
        self._reactor = reactor
        self._parent = parent

    def _check(self) -> None:
        if os.getppid() != self._parent:
            self._log.warn("supervisor (pid {pid}) is gone; stopping", pid=self._parent)
            self._reactor.stop()
