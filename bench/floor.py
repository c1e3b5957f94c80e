"""What one send() per delivery costs on this machine, with no server at all.

    python bench/floor.py                 # 3 runs
    python bench/floor.py --runs 5 --json

Chat-like traffic (bench/chat.py: 1,000 channels x 1 subscriber) gives
every delivery a send() of its own: no two messages of one flush go to
the same connection, so nothing coalesces.  This script measures that
syscall alone: plain Python on the first CPU writes ~170-byte frames
round-robin to 1,000 loopback TCP connections (TCP_NODELAY, as pushd's),
read by a child process on the second CPU, and divides the sends by the
sender's CPU time.  On loopback the kernel runs the receiving side's TCP
work in the sender's context too, so this is the most deliveries per
CPU-second any single-threaded server can reach on this path here,
however little else it does; a server's figure from bench/chat.py
divided by this one is the share of its CPU left to everything that is
not the send.

``--json`` keys (medians): ``sends_per_cpu_s``, ``us_per_send``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import statistics
import time

CONNECTIONS = 1000
FRAME = b"\x81\x7e\x00\xa8" + b"x" * 168


def reader(port: int, stop_at: float, cpu: int | None) -> None:
    """The subscribers: drain every connection until ``stop_at``."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    poll = select.epoll()
    by_fd = {}
    for sock in socks:
        sock.setblocking(False)
        poll.register(sock.fileno(), select.EPOLLIN)
        by_fd[sock.fileno()] = sock
    while time.time() < stop_at:
        for fd, _ in poll.poll(0.02):
            try:
                by_fd[fd].recv(1 << 20)
            except BlockingIOError:
                pass


def one_run(sends: int, cpus: list[int]) -> float:
    """CPU seconds per send for ``sends`` round-robin sends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(CONNECTIONS)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        try:
            reader(port, time.time() + 60, cpus[1] if len(cpus) > 1 else None)
        finally:
            os._exit(0)
    try:
        conns = [listener.accept()[0] for _ in range(CONNECTIONS)]
        for conn in conns:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        send = [conn.send for conn in conns]
        before = resource.getrusage(resource.RUSAGE_SELF)
        for i in range(sends):
            try:
                send[i % CONNECTIONS](FRAME)
            except BlockingIOError:
                pass  # the reader fell behind: counted as a send all the same
        after = resource.getrusage(resource.RUSAGE_SELF)
        for conn in conns:
            conn.close()
        return (
            after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        ) / sends
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        listener.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sends", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 5000)), hard))
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})
    costs = []
    for _ in range(args.runs):
        cost = one_run(args.sends, cpus)
        costs.append(cost)
        print(
            "one send() per delivery: %.2f us of sender CPU, %.0f sends per CPU-s"
            % (cost * 1e6, 1 / cost),
            flush=True,
        )
    median = statistics.median(costs)
    print("median: %.2f us, %.0f per CPU-s" % (median * 1e6, 1 / median))
    if args.json:
        print(
            json.dumps(
                {
                    "sends_per_cpu_s": round(1 / median),
                    "us_per_send": round(median * 1e6, 3),
                }
            )
        )


if __name__ == "__main__":
    main()
