"""Handshakes and memory per connection: a reconnect storm against one pushd.

    python bench/connections.py                       # 10,000 connections, 3 runs
    python bench/connections.py --connections 5000 --runs 5 --json
    python bench/connections.py --base /work/before   # old checkout interleaved

pushd (`twistd pushd`, memory backend, pings off) is pinned to the first
CPU; the load generator, ``conngen`` (bench/conngen.c, compiled here with
``cc`` into a temporary directory: one thread, non-blocking sockets and
epoll), to the others.  Each run starts a fresh server, opens 200
subscribed connections to warm it up, then ``--connections`` more, at most
``--in-flight`` at once, twice on fresh servers:

* **connect**: WebSocket handshakes only (``GET /ws`` upgrade, 101 read);
* **subscribe**: handshake, then a masked ``subscribe`` frame and its
  ``subscribed`` reply (all on one channel, or ``--channels``).

It prints connections/s (wall clock, first connect to last reply) and
connections per server CPU-second (the figure that holds on a shared
machine), and, for the subscribe run, **KB per idle subscribed connection**:
the server's RSS growth over the ``--connections`` connections after they
settle (1 s), divided by their number.

``--json`` prints, as the last line, the medians: ``handshakes_per_s``,
``handshakes_per_cpu_s``, ``subscribes_per_s``, ``subscribes_per_cpu_s``,
``kb_per_idle_connection``, ``storm_seconds`` (seconds to connect and
subscribe all of them); with ``--base`` the same keys prefixed ``base_``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fanout  # noqa: E402

WARM = 200


def build_generator(tmp: str) -> str:
    exe = os.path.join(tmp, "conngen")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench/connections.py needs a C compiler (cc)")
    subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "conngen.c")], check=True)
    return exe


class Generator:
    def __init__(self, exe: str, port: int, cpus: list[int]) -> None:
        pin = (lambda: os.sched_setaffinity(0, set(cpus))) if cpus else None
        self.proc = subprocess.Popen(
            [exe, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pin,
        )

    def ask(self, line: str) -> list[str]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().split()

    def open(self, n: int, subscribe: bool, in_flight: int, channels: int):
        """(connections that got there, failed, seconds)."""
        _, ok, failed, seconds = self.ask(
            "open %d %d %d %d" % (n, int(subscribe), in_flight, channels)
        )
        return int(ok), int(failed), float(seconds)

    def stop(self) -> None:
        self.ask("close")
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(10)


def one_run(exe, server_cpu, load_cpus, args, subscribe: bool) -> dict:
    server = fanout.Server(server_cpu, [])
    gen = Generator(exe, server.port, load_cpus)
    try:
        ok, failed, _ = gen.open(WARM, True, args.in_flight, args.channels)
        if failed:
            raise RuntimeError("warm-up: %d connections failed" % failed)
        time.sleep(0.5)
        rss0, cpu0 = server.rss_kb(), server.cpu_seconds()
        ok, failed, seconds = gen.open(
            args.connections, subscribe, args.in_flight, args.channels
        )
        cpu = server.cpu_seconds() - cpu0
        time.sleep(1.0)
        rss = server.rss_kb()
    finally:
        gen.stop()
        server.stop()
    if failed:
        raise RuntimeError("%d of %d connections failed" % (failed, args.connections))
    return {
        "per_s": ok / seconds,
        "per_cpu_s": ok / cpu if cpu else float("nan"),
        "seconds": seconds,
        "kb_per_connection": (rss - rss0) / ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--base", help="an old checkout to run interleaved")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    need = args.connections + WARM + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit("open files limit %d < %d: ulimit -n" % (hard, need))
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[0] if len(cpus) > 1 else None
    load = cpus[1:] if len(cpus) > 1 else []
    if load:
        os.sched_setaffinity(0, set(load))
    versions = [("", os.path.dirname(HERE))]
    if args.base:
        versions.insert(0, ("base_", os.path.abspath(args.base)))
    print(
        "pushd connections benchmark: server on CPU %s, conngen on CPUs %s, "
        "%d connections, %d in flight"
        % (server_cpu, load, args.connections, args.in_flight),
        flush=True,
    )
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="pushd-conngen-") as tmp:
        exe = build_generator(tmp)
        for run in range(args.runs):
            for prefix, root in versions:
                os.environ["PYTHONPATH"] = root
                for mode in ("connect", "subscribe"):
                    r = one_run(exe, server_cpu, load, args, mode == "subscribe")
                    results.setdefault((prefix, mode), []).append(r)
                    print(
                        "run %d %-5s %-9s %7.0f/s  %7.0f per server CPU-s  "
                        "%5.2f s  %5.1f KB/connection"
                        % (
                            run + 1,
                            prefix.rstrip("_") or "this",
                            mode,
                            r["per_s"],
                            r["per_cpu_s"],
                            r["seconds"],
                            r["kb_per_connection"],
                        ),
                        flush=True,
                    )
    summary: dict = {}
    for prefix, _ in versions:

        def med(mode, key, prefix=prefix):
            return statistics.median(r[key] for r in results[(prefix, mode)])

        summary.update(
            {
                prefix + "handshakes_per_s": med("connect", "per_s"),
                prefix + "handshakes_per_cpu_s": med("connect", "per_cpu_s"),
                prefix + "subscribes_per_s": med("subscribe", "per_s"),
                prefix + "subscribes_per_cpu_s": med("subscribe", "per_cpu_s"),
                prefix + "kb_per_idle_connection": med(
                    "subscribe", "kb_per_connection"
                ),
                prefix + "storm_seconds": med("subscribe", "seconds"),
            }
        )
        print(
            "MEDIAN %-5s handshakes %.0f/s (%.0f per CPU-s); with subscribe "
            "%.0f/s (%.0f per CPU-s), %.2f s for all; %.1f KB per idle "
            "subscribed connection"
            % (
                prefix.rstrip("_") or "this",
                *(
                    summary[prefix + k]
                    for k in (
                        "handshakes_per_s",
                        "handshakes_per_cpu_s",
                        "subscribes_per_s",
                        "subscribes_per_cpu_s",
                        "storm_seconds",
                        "kb_per_idle_connection",
                    )
                ),
            ),
            flush=True,
        )
    if args.json:
        print(json.dumps({k: round(v, 2) for k, v in summary.items()}))


if __name__ == "__main__":
    main()
