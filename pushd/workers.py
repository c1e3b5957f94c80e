"""``--workers N``: one pushd on every core of a machine, as one server.

The process started by the user becomes a supervisor.  It opens the
listeners (so a bind error, or a ``systemd:`` socket, is handled exactly as
without workers) and never accepts on them; N worker processes inherit the
sockets (``pushd.worker_sockets``: a SO_REUSEPORT socket per worker for
``tcp:``, one shared socket for ``systemd:`` and ``unix:``) and serve them
(``pushd.worker_child``).  While a worker is dead, new connections go to
the others (its SO_REUSEPORT socket is closed until it restarts; a shared
socket is served by the rest).

Every worker is a node of the backend, which must be shared by processes
(``IMultiProcess``: redis).  The supervisor restarts a worker that dies, with
back-off; SIGTERM to it stops every worker the way SIGTERM stops one pushd
(clients are told 1001).  Worker logs come to the supervisor as JSON events
and are logged again by it, each marked with the worker's index and pid.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, eventFromJSON, globalLogPublisher

from pushd.config import Config
from pushd.summary import summary_lines
from pushd.worker_child import FIRST_FD, WORKER_ENV, WorkerInfo
from pushd.worker_sockets import open_listener

# A worker that dies is restarted after RESTART_DELAY, doubled for each
# further death in a row up to RESTART_MAX; one that lived STABLE_AFTER
# seconds starts the count again.
RESTART_DELAY = 0.5
RESTART_MAX = 30.0
STABLE_AFTER = 10.0
# Seconds a worker has to stop after SIGTERM (it gives its clients up to
# pushd.service.SHUTDOWN_GRACE to close) before it is killed.
STOP_TIMEOUT = 10.0
# A worker's log line longer than this is cut (it could not grow the
# supervisor's memory without bound).
MAX_LINE = 1 << 20
READY_EVENT = "pushd_worker_ready"

_TWISTD = "from twisted.scripts.twistd import run; run()"


def worker_command(args: list[str]) -> list[str]:
    """The argv of a worker: twistd in the foreground, JSON logs on stdout,
    and the supervisor's own pushd arguments."""
    return [
        sys.executable,
        "-c",
        _TWISTD,
        "--nodaemon",
        "--pidfile=",
        "--logger=pushd.worker_child.worker_log_observer",
        "pushd",
        *args,
    ]


class _LineRelay:
    """Bytes from one pipe of a worker, cut into lines."""

    def __init__(self, emit: Any) -> None:
        self._buffer = b""
        self._emit = emit

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            lines.append(self._buffer[:MAX_LINE])
            self._buffer = b""
        for line in lines:
            if line.strip(b"\x1e \r\t"):
                self._emit(line.decode("utf-8", "replace"))

    def flush(self) -> None:
        self.feed(b"\n")


class _WorkerProtocol(ProcessProtocol):
    """One worker process: relays its logs, reports its end."""

    def __init__(self, slot: _Slot) -> None:
        self._slot = slot
        self._out = _LineRelay(self._event)
        self._err = _LineRelay(self._text)
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._out.feed(data)

    def errReceived(self, data: bytes) -> None:
        self._err.feed(data)

    def _event(self, line: str) -> None:
        try:
            event = eventFromJSON(line.lstrip("\x1e"))
        except ValueError:
            self._text(line)
            return
        if not isinstance(event, dict):
            self._text(line)
            return
        self._slot.relay(event)

    def _text(self, line: str) -> None:
        """What a worker wrote outside its logger (Python's own errors)."""
        self._slot.relay(
            {"log_format": "{line}", "line": line, "log_level": LogLevel.warn}
        )

    def processEnded(self, reason: Any) -> None:
        self._out.flush()
        self._err.flush()
        self._slot.ended(self, reason)
        self.ended.callback(None)


class _Slot:
    """Worker number ``index``: its process, now and after restarts."""

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.process: Any = None
        self.protocol: _WorkerProtocol | None = None
        self.pid: int | None = None
        self.started_at = 0.0
        self.deaths = 0
        self.restart: Any = None
        self.ready = False

    def relay(self, event: dict) -> None:
        """Log a worker's event as the supervisor's, saying whose it is."""
        namespace = event.get("log_namespace", "worker")
        level = event.get("log_level", LogLevel.info)
        name = getattr(level, "name", str(level))
        event["log_system"] = "worker %d pid %s %s#%s" % (
            self.index,
            self.pid,
            namespace,
            name,
        )
        event["pushd_worker"] = self.index
        event["pushd_worker_pid"] = self.pid
        event.setdefault("log_time", self.supervisor.clock.seconds())
        event.setdefault("log_level", LogLevel.info)
        globalLogPublisher(event)
        if event.get(READY_EVENT):
            self.supervisor.worker_ready(self)

    def ended(self, protocol: _WorkerProtocol, reason: Any) -> None:
        if protocol is not self.protocol:
            return
        self.process = self.protocol = None
        self.supervisor.worker_ended(self, reason)


class WorkerSupervisor(Service):
    """Holds the listening sockets and keeps ``count`` workers on them."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: Config,
        args: list[str],
        api_secret: str | None,
        backend_spec: str,
    ) -> None:
        self.clock = reactor
        self._reactor = reactor
        self._config = config
        self._args = args
        self._api_secret = api_secret
        self._backend_spec = backend_spec  # for the summary; none is made here
        self.listeners: list[Any] = []
        self.slots = [_Slot(self, i) for i in range(1, config.workers + 1)]
        self._stopping = False
        self._summarized = False

    def startService(self) -> None:
        super().startService()
        from pushd.service import _fail_startup

        for description in self._config.listen:
            try:
                listener = open_listener(
                    self._reactor,
                    description,
                    self._config.listen_backlog,
                    len(self.slots),
                )
            except Exception as e:
                self._log.critical(
                    "cannot listen on {description}: {error}",
                    description=description,
                    error=e,
                )
                _fail_startup(self._reactor)
                return
            self.listeners.append(listener)
            address = listener.port.getHost()
            self._log.info(
                "pushd listening on {host}:{port} ({description}), served by "
                "{workers} workers",
                host=getattr(address, "host", "?"),
                port=getattr(address, "port", "?"),
                description=description,
                workers=len(self.slots),
            )
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        slot.restart = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        env[WORKER_ENV] = WorkerInfo(slot.index, os.getpid(), self._api_secret).to_env()
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        try:
            for offset, listener in enumerate(self.listeners):
                fds[FIRST_FD + offset] = listener.fd_for(slot.index)
        except OSError as e:  # its address taken meanwhile: try again later
            self._log.error(
                "cannot listen again for worker {index}: {error}",
                index=slot.index,
                error=e,
            )
            self._schedule_restart(slot)
            return
        slot.protocol = _WorkerProtocol(slot)
        slot.ready = False
        slot.process = self._reactor.spawnProcess(
            slot.protocol,
            sys.executable,
            worker_command(self._args),
            env=env,
            childFDs=fds,
        )
        slot.pid = slot.process.pid
        slot.started_at = self._reactor.seconds()
        self._log.info(
            "started worker {index} (pid {pid})", index=slot.index, pid=slot.pid
        )

    def worker_ready(self, slot: _Slot) -> None:
        slot.ready = True
        if self._summarized or not all(s.ready for s in self.slots):
            return
        self._summarized = True
        config = self._config
        lines = summary_lines(
            config,
            self._backend_spec,
            config.app_list(),
            [(lst.description, lst.port) for lst in self.listeners],
        )
        lines.append(
            "  workers: %d processes (pids %s), each a node of the backend"
            % (len(self.slots), ", ".join(str(s.pid) for s in self.slots))
        )
        self._log.info("{summary}", summary="\n".join(lines))

    def worker_ended(self, slot: _Slot, reason: Any) -> None:
        if self._stopping:
            return
        for listener in self.listeners:
            try:
                listener.retire(slot.index)
            except OSError:
                self._log.failure("closing worker {index}'s socket", index=slot.index)
        self._log.warn(
            "worker {index} (pid {pid}) ended ({why})",
            index=slot.index,
            pid=slot.pid,
            why=reason.getErrorMessage(),
        )
        self._schedule_restart(slot)

    def _schedule_restart(self, slot: _Slot) -> None:
        if self._reactor.seconds() - slot.started_at >= STABLE_AFTER:
            slot.deaths = 0
        delay = min(RESTART_DELAY * 2**slot.deaths, RESTART_MAX)
        slot.deaths += 1
        self._log.info(
            "restarting worker {index} in {delay:.1f}s", index=slot.index, delay=delay
        )
        slot.restart = self._reactor.callLater(delay, self._spawn, slot)

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        waits = []
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            if slot.process is not None and slot.protocol is not None:
                waits.append(slot.protocol.ended)
                self._signal(slot, "TERM")
        self._log.info("stopping {count} workers", count=len(waits))
        kill = self._reactor.callLater(STOP_TIMEOUT, self._kill_all)
        await DeferredList(waits)
        if kill.active():
            kill.cancel()
        for listener in self.listeners:
            await maybeDeferred(listener.close)

    def _kill_all(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                self._log.warn(
                    "worker {index} (pid {pid}) did not stop in {timeout}s; killing it",
                    index=slot.index,
                    pid=slot.pid,
                    timeout=STOP_TIMEOUT,
                )
                self._signal(slot, "KILL")

    @staticmethod
    def _signal(slot: _Slot, name: str) -> None:
        try:
            slot.process.signalProcess(name)
        except Exception:  # already gone: its processEnded is on the way
            pass
