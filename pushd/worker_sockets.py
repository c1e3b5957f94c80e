"""The listening sockets of ``--workers N``, opened by the supervisor.

A ``tcp:``/``tcp6:`` listener becomes N sockets bound to the same address
with SO_REUSEPORT, one per worker: the kernel spreads new connections over
them by a hash of each connection's addresses, so a burst of connections is
shared even while one worker happens to be awake first.  Through one shared
socket the first worker to wake took all 40 connections of a burst (bench
README, "Workers").  When a worker dies its socket is closed, so new
connections go to the live workers at once instead of waiting for its
restart (the few it had queued are reset, and clients reconnect); it is
bound again for the restarted worker.

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
        self._family = (
            socket.AF_INET6 if description.startswith("tcp6") else socket.AF_INET
        )
        self._address = (endpoint._interface or "", endpoint._port)
        self._backlog = endpoint._backlog
        self.sockets: list[socket.socket | None] = []
        try:
            for _ in range(workers):
                self.sockets.append(self._bind())
                # tcp:0 picks a port: the same one for every worker
                self._address = (self._address[0], self._port_of(0))
        except OSError:
            self.close()
            raise
        self.port = _Host(self._socket(0))

    def _bind(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(self._address)
            sock.listen(self._backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _socket(self, position: int) -> socket.socket:
        sock = self.sockets[position]
        assert sock is not None
        return sock

    def _port_of(self, position: int) -> int:
        return self._socket(position).getsockname()[1]

    def retire(self, index: int) -> None:
        """Worker ``index`` died: close its socket, so new connections hash
        onto the live workers' sockets instead of waiting (up to the restart
        back-off) for it; the few it had queued are reset and reconnect."""
        sock = self.sockets[index - 1]
        if sock is not None and len(self.sockets) > 1:
            sock.close()
            self.sockets[index - 1] = None

    def fd_for(self, index: int) -> int:
        """The socket of worker ``index``, bound again if it was retired."""
        if self.sockets[index - 1] is None:
            self.sockets[index - 1] = self._bind()
        return self._socket(index - 1).fileno()

    def close(self) -> Any:
        for sock in self.sockets:
            if sock is not None:
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

    def retire(self, index: int) -> None:
        """Nothing to do: the live workers keep accepting from the socket."""

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
