"""Writing to a TCP connection without Twisted's buffer when it is empty.

Twisted's ``write`` always buffers and registers the socket with epoll,
then unregisters it after the next send: two extra syscalls per write, a
fifth of fan-out time when measured (bench/fanout.py) and a visible share
of a keep-alive publish's answer (bench/compare.py).  When nothing is
queued, sending directly keeps byte order; whatever the kernel does not
take goes through ``write`` as usual, and with it Twisted's backpressure.
"""

from __future__ import annotations

from typing import Any


def write_now(transport: Any, sock: Any, data: bytes) -> None:
    """``transport.write(data)``, by one ``send()`` when nothing waits.

    ``sock`` is the transport's socket (``getHandle()``) for plain TCP, or
    None (TLS, tests' fake transports): then it is a plain ``write``.
    """
    if (
        sock is not None
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
        and not transport.disconnecting
    ):
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error that write() will report
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
