"""Trace a pushd process for bench/trace_latency.py (not for production).

Loaded by Python at start-up when this directory is on PYTHONPATH and
LATTRACE_OUT is set; only a twistd process records.  It wraps, as their
modules are imported, the WebSocket Flusher's slices, Hub._on_message,
the reactor's epoll waits, and listens to gc.callbacks; at shutdown it
writes what it saw (time.time() stamps) to ``$LATTRACE_OUT.<pid>`` with
marshal.
"""

from __future__ import annotations

import gc
import importlib.abc
import importlib.util
import marshal
import os
import sys
import time
from resource import RUSAGE_THREAD, getrusage

OUT = os.environ.get("LATTRACE_OUT")
with open("/proc/self/cmdline", "rb") as _f:
    _TWISTD = b"twistd" in _f.read()

SLICES: list = []  # (start, end, connection ids, involuntary switches)
MSGS: list = []  # (fan-out start, end, the publish's "t")
GCS: list = []  # (start, end, generation)
POLLS: list = []  # (start, end, events)
now = time.time


def _gc(phase: str, info: dict, _start: list = [0.0]) -> None:  # noqa: B006
    if phase == "start":
        _start[0] = now()
    else:
        GCS.append((_start[0], now(), info["generation"]))


def _patch_ws(mod) -> None:
    orig = mod.Flusher._write_slice

    def _write_slice(self) -> None:
        start = self._at if self._pass else 0
        switches = getrusage(RUSAGE_THREAD).ru_nivcsw
        t0 = now()
        orig(self)
        t1 = now()
        switches = getrusage(RUSAGE_THREAD).ru_nivcsw - switches
        ids = [id(p) for p in self._pass[start : self._at]]
        SLICES.append((t0, t1, ids, switches))

    mod.Flusher._write_slice = _write_slice


def _patch_hub(mod) -> None:
    orig = mod.Hub._on_message

    def _on_message(self, message) -> None:
        t0 = now()
        orig(self, message)
        data = message.data
        sent = float(data["t"]) if isinstance(data, dict) and "t" in data else 0.0
        MSGS.append((t0, now(), sent))

    mod.Hub._on_message = _on_message


class _Poller:
    def __init__(self, poller) -> None:
        self._p = poller
        self.register, self.unregister = poller.register, poller.unregister
        self.modify, self.close, self.fileno = (
            poller.modify,
            poller.close,
            poller.fileno,
        )

    def poll(self, *args):
        t0 = now()
        events = self._p.poll(*args)
        POLLS.append((t0, now(), len(events)))
        return events


def _dump() -> None:
    with open("%s.%d" % (OUT, os.getpid()), "wb") as f:
        marshal.dump({"slices": SLICES, "msgs": MSGS, "gcs": GCS, "polls": POLLS}, f)


def _patch_epoll(mod) -> None:
    orig = mod.EPollReactor.__init__

    def __init__(self, *args, **kwargs) -> None:
        orig(self, *args, **kwargs)
        self._poller = _Poller(self._poller)
        # twistd re-raises SIGTERM after the reactor stops: atexit never runs
        self.addSystemEventTrigger("before", "shutdown", _dump)

    mod.EPollReactor.__init__ = __init__


PATCHES = {
    "pushd.transports.websocket": _patch_ws,
    "pushd.hub": _patch_hub,
    "twisted.internet.epollreactor": _patch_epoll,
}


class _Finder(importlib.abc.MetaPathFinder):
    """Patches a module right after it is first executed."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


if OUT and _TWISTD:
    gc.callbacks.append(_gc)
    sys.meta_path.insert(0, _Finder())
