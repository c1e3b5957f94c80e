"""Workers benchmark: pushd with --workers 1 and 2 on one Redis, per CPU-second.

    python bench/workers.py                       # 3 rounds, 4 s per figure
    python bench/workers.py --rounds 5 --seconds 6 --json
    python bench/workers.py --placement spread    # a core per worker

Two figures, each with N = 1 and N = 2 workers (``--workers N``, backend
redis on a private redis-server), interleaved round after round so both see
the same background load:

* **fan-out**: 1 channel x 1,000 WebSocket subscribers and 4 keep-alive HTTP
  publishers, all through the one port (the kernel spreads them over the
  workers), flat out (bench/fanout.py's measure);
* **publish**: wrk + bench/publish.lua, 16 keep-alive connections,
  ``POST /api/channels/{ch}/messages`` with no subscriber.

Server CPU is the CPU time of every worker plus the supervisor
(/proc/PID/stat); redis-server's is reported separately.  Placement
``shared`` (default): every pushd process and redis-server on the first
CPU, the load generators on the others, so per CPU-second figures compare
N = 1 with N = 2 doing the same work on the same core.  ``spread``: worker i
on CPU i (mod the CPU count), the load generators everywhere.

With ``--json`` the last stdout line is one JSON object of medians:
fanout_n1_per_s, fanout_n1_per_cpu_s, fanout_n2_per_s, fanout_n2_per_cpu_s,
fanout_ratio (n2/n1 per CPU-second), fanout_redis_cpu_n1, fanout_redis_cpu_n2
(redis-server CPU %), publish_n1_per_s, publish_n1_per_cpu_s,
publish_n2_per_s, publish_n2_per_cpu_s, publish_ratio, publish_redis_cpu_n1,
publish_redis_cpu_n2, balance_n2 (the busier worker's share of the 1,000
subscribers, 0.5 is even), and the same share for 1,000 connections opened
one at a time or 200 at a time, through a SO_REUSEPORT socket per worker
(``tcp:``) or one socket shared by both (``systemd:``, via
systemd-socket-activate): balance_reuseport_one_by_one,
balance_reuseport_burst, balance_shared_one_by_one, balance_shared_burst.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import fanout  # noqa: E402
from wsload import subscribe_many  # noqa: E402

from pushd.testing import RedisServer, connection_owners, free_port  # noqa: E402

LUA = os.path.join(HERE, "publish.lua")


class Workers:
    """``twistd pushd --workers N`` on Redis; CPU summed over its processes."""

    def __init__(
        self, count: int, redis: RedisServer, cpus: list[int], shared=False
    ) -> None:
        self.logdir = tempfile.mkdtemp(prefix="pushd-bench-")
        self.log = os.path.join(self.logdir, "pushd.log")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        listen = "tcp:0:interface=127.0.0.1"
        prefix: list[str] = []
        if shared:  # one socket, handed over as systemd does
            self.port = free_port()
            listen = "systemd:domain=INET:index=0"
            prefix = ["systemd-socket-activate", "--fdname=pushd.socket"]
            prefix += ["-l", "127.0.0.1:%d" % self.port]
        cmd = [
            *prefix,
            twistd,
            "-n",
            "--pidfile=",
            "--logfile=-",
            "pushd",
            "--listen",
            listen,
            "--api-secret",
            fanout.SECRET,
            "--ping-interval",
            "0",
            "--send-queue-bytes",
            str(64 << 20),
            "--backend",
            redis.spec(),
            "--workers",
            str(count),
        ]
        self._out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpus[0]}),
        )
        if shared:
            self._wait("Listening on")
            socket.create_connection(("127.0.0.1", self.port)).close()  # start it
        ready = "pushd is ready" if count > 1 else "pushd listening on"
        text = self._wait(ready)
        self.port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))
        self.workers = [
            int(pid) for _, pid in re.findall(r"started worker (\d+) \(pid (\d+)", text)
        ] or [self.proc.pid]
        for i, pid in enumerate(self.workers):
            os.sched_setaffinity(pid, {cpus[i % len(cpus)]})
        self.balance: float | None = None

    def _wait(self, pattern: str) -> str:
        deadline = time.time() + 30
        while True:
            text = open(self.log).read() if os.path.exists(self.log) else ""
            if re.search(pattern, text):
                return text
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("pushd did not start:\n" + text)
            time.sleep(0.05)

    def pids(self) -> list[int]:
        return sorted({self.proc.pid, *self.workers})

    def cpu_seconds(self) -> float:
        if self.balance is None and len(self.workers) > 1:
            owners = list(connection_owners(self.workers, self.port).values())
            if owners:
                busiest = max(owners.count(pid) for pid in self.workers)
                self.balance = busiest / len(owners)
        return sum(fanout.cpu_seconds(pid) for pid in self.pids())

    def rss_kb(self) -> int:
        total = 0
        for pid in self.pids():
            with open("/proc/%d/status" % pid) as f:
                total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._out.close()
        shutil.rmtree(self.logdir, ignore_errors=True)


def fanout_figure(count, redis, cpus, seconds) -> dict:
    server = Workers(count, redis, cpus)
    try:
        result = asyncio.run(fanout.one_run([server], 1000, seconds, 4, redis.proc.pid))
    finally:
        server.stop()
    return {
        "per_s": result["deliveries_per_s"],
        "per_cpu_s": result["deliveries_per_cpu_s"],
        "redis_cpu": result["redis_cpu"],
        "missing": result["missing"],
        "balance": server.balance or 1.0,
    }


def publish_figure(count, redis, cpus, load_cpus, seconds) -> dict:
    server = Workers(count, redis, cpus)
    try:
        url = "http://127.0.0.1:%d/" % server.port
        pin = ["taskset", "-c", ",".join(map(str, load_cpus))]
        env = dict(os.environ, WRK_SECRET=fanout.SECRET)
        wrk = ["wrk", "-t1", "-c16", "-s", LUA]
        subprocess.run(
            pin + wrk + ["-d1s", url], env=env, check=True, capture_output=True
        )
        cpu0, redis0 = server.cpu_seconds(), fanout.cpu_seconds(redis.proc.pid)
        out = subprocess.run(
            pin + wrk + ["-d%ds" % seconds, url],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        cpu = server.cpu_seconds() - cpu0
        redis_cpu = fanout.cpu_seconds(redis.proc.pid) - redis0
    finally:
        server.stop()
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError("publish bench: refused requests:\n" + out)
    return {
        "per_s": requests / seconds,
        "per_cpu_s": requests / cpu if cpu else 0.0,
        "redis_cpu": 100 * redis_cpu / seconds,
    }


def balance_figure(redis, cpus, shared: bool, concurrency: int) -> float:
    """The busier of 2 workers' share of 1,000 WebSocket connections opened
    ``concurrency`` at a time (0.5 is even); worker i on CPU i, as deployed."""
    server = Workers(2, redis, cpus, shared=shared)
    try:

        async def connect() -> float:
            subs = await subscribe_many(server.port, 1000, "b", concurrency=concurrency)
            owners = list(connection_owners(server.workers, server.port).values())
            for sub in subs:
                sub.transport.close()
            return max(owners.count(pid) for pid in server.workers) / len(owners)

        return asyncio.run(connect())
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--placement", choices=("shared", "spread"), default="shared")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--skip-balance",
        action="store_true",
        help="skip the connection-spread figures (SO_REUSEPORT vs a shared socket)",
    )
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if args.placement == "shared" and len(cpus) > 1:
        server_cpus, load_cpus = [cpus[0]], cpus[1:]
    else:
        server_cpus, load_cpus = cpus, cpus
    os.sched_setaffinity(0, set(load_cpus))
    redis = RedisServer()
    os.sched_setaffinity(redis.proc.pid, {server_cpus[0]})
    print(
        "workers benchmark (%s): pushd on CPUs %s, load on CPUs %s"
        % (args.placement, server_cpus, load_cpus),
        flush=True,
    )
    results: dict[str, list] = {}
    try:
        for round_ in range(1, args.rounds + 1):
            for count in (1, 2):
                fan = fanout_figure(count, redis, server_cpus, args.seconds)
                pub = publish_figure(count, redis, server_cpus, load_cpus, args.seconds)
                for name, figure in (("fanout", fan), ("publish", pub)):
                    for key, value in figure.items():
                        results.setdefault("%s_n%d_%s" % (name, count, key), []).append(
                            value
                        )
                print(
                    "round %d N=%d: fan-out %7.0f deliveries/s %7.0f /CPU-s "
                    "(redis %3.0f%%, busiest worker %.0f%% of subscribers, "
                    "missing %d); publish %5.0f req/s %5.0f /CPU-s (redis %3.0f%%)"
                    % (
                        round_,
                        count,
                        fan["per_s"],
                        fan["per_cpu_s"],
                        fan["redis_cpu"],
                        100 * fan["balance"],
                        fan["missing"],
                        pub["per_s"],
                        pub["per_cpu_s"],
                        pub["redis_cpu"],
                    ),
                    flush=True,
                )
        if not args.skip_balance:
            for round_ in range(1, args.rounds + 1):
                for shared in (False, True):
                    for concurrency in (1, 200):
                        share = balance_figure(redis, cpus, shared, concurrency)
                        key = "balance_%s_%s" % (
                            "shared" if shared else "reuseport",
                            "one_by_one" if concurrency == 1 else "burst",
                        )
                        results.setdefault(key, []).append(share)
                        print(
                            "round %d: 1,000 connections %s, %s: busiest of 2 "
                            "workers took %.0f%%"
                            % (
                                round_,
                                "one at a time"
                                if concurrency == 1
                                else "200 at a time",
                                "one shared socket (systemd:)"
                                if shared
                                else "a SO_REUSEPORT socket per worker (tcp:)",
                                100 * share,
                            ),
                            flush=True,
                        )
    finally:
        redis.close()
    median = {k: statistics.median(v) for k, v in results.items()}
    figures = {
        "fanout_n1_per_s": median["fanout_n1_per_s"],
        "fanout_n1_per_cpu_s": median["fanout_n1_per_cpu_s"],
        "fanout_n2_per_s": median["fanout_n2_per_s"],
        "fanout_n2_per_cpu_s": median["fanout_n2_per_cpu_s"],
        "fanout_ratio": median["fanout_n2_per_cpu_s"] / median["fanout_n1_per_cpu_s"],
        "fanout_redis_cpu_n1": median["fanout_n1_redis_cpu"],
        "fanout_redis_cpu_n2": median["fanout_n2_redis_cpu"],
        "publish_n1_per_s": median["publish_n1_per_s"],
        "publish_n1_per_cpu_s": median["publish_n1_per_cpu_s"],
        "publish_n2_per_s": median["publish_n2_per_s"],
        "publish_n2_per_cpu_s": median["publish_n2_per_cpu_s"],
        "publish_ratio": median["publish_n2_per_cpu_s"]
        / median["publish_n1_per_cpu_s"],
        "publish_redis_cpu_n1": median["publish_n1_redis_cpu"],
        "publish_redis_cpu_n2": median["publish_n2_redis_cpu"],
        "balance_n2": median["fanout_n2_balance"],
        **{k: v for k, v in median.items() if k.startswith("balance_")},
    }
    print(
        "MEDIAN: fan-out per CPU-s N=2/N=1 = %.2f (%.0f / %.0f), publish per "
        "CPU-s N=2/N=1 = %.2f (%.0f / %.0f)"
        % (
            figures["fanout_ratio"],
            figures["fanout_n2_per_cpu_s"],
            figures["fanout_n1_per_cpu_s"],
            figures["publish_ratio"],
            figures["publish_n2_per_cpu_s"],
            figures["publish_n1_per_cpu_s"],
        ),
        flush=True,
    )
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
