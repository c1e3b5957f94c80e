"""The listening sockets of ``--workers N``, opened by the supervisor.

A ``tcp:``/``tcp6:`` listener becomes N sockets bound to the same address
with SO_REUSEPORT, one per worker: the kernel spreads new connections over
them by a hash of each connection's addresses, so a burst of connections is
shared even while one worker happens to be awake first.  Through one shared
socket the first worker to wake took all 40 connections of a burst (bench
README, "Workers").  The supervisor keeps every socket open, so the
connections queued on a worker that dies wait for its restart instead of
being reset.

A ``systemd:`` or ``unix:`` listener stays one socket shared by every worker
(systemd hands over one socket; a UNIX socket has no reuse-port): workers
accept from it one connection per wake-up (``pushd.worker_child``).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory

REUSEPORT_KINDS = ("tcp", "tcp6")


class _Refuse(Factory):
    """The supervisor's factory on a shared socket; it never accepts (reading
    stops as soon as the socket listens), so this is never used."""

    noisy = False

    def buildProtocol(self, addr: Any) -> None:
        return None


class _Host:
    """What ``getHost`` answers for a socket the supervisor bound itself."""

    def __init__(self, sock: socket.socket) -> None:
        host, port = sock.getsockname()[:2]
        kind = IPv6Address if sock.family == socket.AF_INET6 else IPv4Address
        self._address = kind("TCP", host, port)

    def getHost(self) -> Any:
        return self._address


class ReusePortListener:
    """One socket per worker on the same address (SO_REUSEPORT)."""

    def __init__(self, description: str, endpoint: Any, workers: int) -> None:
        self.description = description
        family = socket.AF_INET6 if description.startswith("tcp6") else socket.AF_INET
        port = endpoint._port
        self.sockets: list[socket.socket] = []
        try:
            for _ in range(workers):
                sock = socket.socket(family, socket.SOCK_STREAM)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((endpoint._interface or "", port))
                port = sock.getsockname()[1]  # tcp:0 picks one, for all workers
                sock.listen(endpoint._backlog)
                sock.setblocking(False)
        except OSError:
            self.close()
            raise
        self.port = _Host(self.sockets[0])

    def fd_for(self, index: int) -> int:
        return self.sockets[index - 1].fileno()

    def close(self) -> Any:
        for sock in self.sockets:
            sock.close()
        return None


class SharedListener:
    """One socket, listened on by Twisted (endpoint strings of every kind),
    never read by the supervisor, handed to every worker."""

    def __init__(self, description: str, port: Any) -> None:
        self.description = description
        port.stopReading()
        self.port = port

    def fd_for(self, index: int) -> int:
        return self.port.fileno()

    def close(self) -> Any:
        return maybeDeferred(self.port.stopListening)


def open_listener(reactor: Any, description: str, backlog: int, workers: int) -> Any:
    """The listener for ``description``; raises what binding raises."""
    from pushd.tap import with_backlog

    endpoint = serverFromString(reactor, with_backlog(description, backlog))
    kind = description.split(":", 1)[0].strip().lower()
    if kind in REUSEPORT_KINDS:
        return ReusePortListener(description, endpoint, workers)
    failure: list = []
    ports: list = []
    endpoint.listen(_Refuse()).addCallbacks(ports.append, failure.append)
    if failure:
        failure[0].raiseException()
    return SharedListener(description, ports[0])
