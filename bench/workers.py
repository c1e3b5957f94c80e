"""Workers benchmark: pushd with --workers 1 and 2 on one Redis, per CPU-second.

    python bench/workers.py                       # 3 rounds, 4 s per figure
    python bench/workers.py --rounds 5 --seconds 4 --json
    python bench/workers.py --workers 1,2,3,4 --skip-balance   # more processes
    python bench/workers.py --placement spread    # a core per worker

Two figures, each with N = 1 and N = 2 workers (``--workers N``, backend
redis on a private redis-server), interleaved round after round so every N
sees the same background load, each measured two ways:

* **fan-out**: 1 channel x 1,000 WebSocket subscribers, keep-alive HTTP
  publishers, all through the one port (the kernel spreads them over the
  workers); **paced**: 16 publishers at the same publish rate for every N
  of a round (``--rate``; by default half the first N's flat-out rate in
  that round), and **flat out**: 4 publishers, one request in flight each,
  as fast as pushd answers (bench/fanout.py's measure);
* **publish**: ``POST /api/channels/{ch}/messages`` with no subscriber;
  **paced**: 16 keep-alive Python publishers at the same rate for every N
  (``--publish-rate``; by default half the first N's wrk rate), and **flat
  out**: wrk + bench/publish.lua, 16 keep-alive connections.

Why paced is the headline (``fanout_ratio``, ``publish_ratio``): what a
delivery costs is mostly one send() per subscriber connection, shared by
every frame queued for it since it was last written, so CPU per delivery
falls as more messages arrive per pass.  Flat out with a closed loop of 4
publishers, the load generator sets how many: a publisher's next message
exists only once its worker answered the last, and two workers
time-sharing one core answer less often, so they run at a lower publish
rate and coalesce fewer frames per send (about 5 against 8 on one worker):
a different load, not a dearer send.  Paced, every N does the same work at
the same rate and the CPU spent on it is compared.  Frames per send are
read from each worker's /metrics (``pushd_frames_sent`` /
``pushd_writes``) and printed with every figure (bench/README.md,
"Workers").

Server CPU is the CPU time of every worker plus the supervisor
(/proc/PID/stat); redis-server's is reported separately.  Placement
``shared`` (default): every pushd process and redis-server on the first
CPU, the load generators on the others, so per CPU-second figures compare
N = 1 with N = 2 doing the same work on the same core.  ``spread``: worker i
on CPU i (mod the CPU count), the load generators everywhere.

With ``--json`` the last stdout line is one JSON object of medians, for
each N: fanout_n<N>_per_s, fanout_n<N>_per_cpu_s, fanout_n<N>_frames_per_write,
fanout_n<N>_redis_cpu (redis-server CPU %), fanout_n<N>_published_per_s
(paced); fanout_n<N>_flat_per_s, _flat_per_cpu_s, _flat_frames_per_write,
_flat_redis_cpu; publish_n<N>_per_s, _per_cpu_s, _redis_cpu (paced) and
publish_n<N>_flat_... (wrk).  For each N after the first (suffix ``_n<N>``
except for N = 2): fanout_ratio, fanout_flat_ratio, publish_ratio,
publish_flat_ratio (N over the first N, per CPU-second, of the medians) and
the medians of the same-round ratios, fanout_round_ratio etc.  Then
balance_n2 (the busier worker's share of the 1,000 subscribers, 0.5 is
even), and the same share for 1,000 connections opened one at a time or 200
at a time, through a SO_REUSEPORT socket per worker (``tcp:``) or one socket
shared by both (``systemd:``, via systemd-socket-activate):
balance_reuseport_one_by_one, balance_reuseport_burst,
balance_shared_one_by_one, balance_shared_burst.
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
from wsload import publishers, subscribe_many  # noqa: E402

from pushd.testing import RedisServer, connection_owners, free_port  # noqa: E402

LUA = os.path.join(HERE, "publish.lua")
ADMIN_SECRET = "bench-admin"  # each worker's /metrics: frames per send()
# The paced fan-out runs at this share of the first N's flat-out rate.
PACED_SHARE = 0.5
PACED_KEYS = ("per_s", "per_cpu_s", "frames_per_write", "redis_cpu", "published_per_s")
# (name in the JSON, per-round result of N = %s)
ROUND_RATIOS = (
    ("fanout", "fanout_n%d_paced_per_cpu_s"),
    ("fanout_flat", "fanout_n%d_flat_per_cpu_s"),
    ("publish", "publish_n%d_per_cpu_s"),
    ("publish_flat", "publish_n%d_flat_per_cpu_s"),
)


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
            "--admin-secret",
            ADMIN_SECRET,
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


def worker_counters(server: Workers) -> dict[str, float]:
    """Frames written and send()s made, summed over the workers, from each
    worker's /metrics (a connection is retried until the worker asked is
    the one that accepted it: every worker counts only its own)."""
    totals = {"frames": 0.0, "writes": 0.0}
    for pid in server.workers:
        text = _metrics_of(server, pid)
        for key, name in (
            ("frames", "pushd_frames_sent_total"),
            ("writes", "pushd_writes_total"),
        ):
            found = re.search(r"^%s\{[^}]*\} ([0-9.e+]+)" % name, text, re.M)
            totals[key] += float(found.group(1)) if found else 0.0
    return totals


def _metrics_of(server: Workers, pid: int) -> str:
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.port))
        port = sock.getsockname()[1]
        owner = None
        for _ in range(100):  # until accepted (it has no owner before)
            owner = connection_owners(server.workers, server.port).get(port)
            if owner is not None:
                break
            time.sleep(0.002)
        if owner != pid:
            sock.close()
            continue
        sock.sendall(
            b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
            b"Authorization: Bearer %s\r\n\r\n" % ADMIN_SECRET.encode()
        )
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
        sock.close()
        return b"".join(chunks).decode("utf-8", "replace")
    raise RuntimeError("no connection reached worker %d" % pid)


async def _fanout_measures(server, redis, seconds, flat_n, paced_n, rate) -> dict:
    subs = await subscribe_many(server.port, 1000, "bench", probes=20)
    audience = fanout.Audience(subs)
    pubs = []
    for _ in range(max(flat_n, paced_n)):
        pubs += await publishers(server.port, fanout.SECRET, "bench", 1)
    await fanout.measure(audience, pubs[:flat_n], 0.5)  # warm up
    out: dict = {}
    for name, group, pace in (
        ("flat", pubs[:flat_n], None),
        ("paced", pubs[:paced_n], rate),
    ):
        if name == "paced" and pace is None:
            pace = out["flat_published_per_s"] * PACED_SHARE
        counters0 = worker_counters(server)
        cpu0, redis0 = server.cpu_seconds(), fanout.cpu_seconds(redis.proc.pid)
        delivered, elapsed, _, _, missing = await fanout.measure(
            audience, group, seconds, pace
        )
        cpu = server.cpu_seconds() - cpu0
        redis_cpu = fanout.cpu_seconds(redis.proc.pid) - redis0
        counters = worker_counters(server)
        writes = counters["writes"] - counters0["writes"]
        out.update(
            {
                name + "_per_s": delivered / elapsed,
                name + "_per_cpu_s": delivered / cpu if cpu else 0.0,
                name + "_published_per_s": delivered / elapsed / len(subs),
                name + "_frames_per_write": (counters["frames"] - counters0["frames"])
                / writes
                if writes
                else 0.0,
                name + "_redis_cpu": 100 * redis_cpu / elapsed,
                name + "_server_cpu": 100 * cpu / elapsed,
                name + "_missing": missing,
            }
        )
    audience.close()
    for pub in pubs:
        pub.transport.close()
    await asyncio.sleep(0.3)
    return out


def fanout_figure(count, redis, cpus, seconds, flat_n, paced_n, rate) -> dict:
    """Flat out with ``flat_n`` publishers, then paced at ``rate`` publishes/s
    (None: PACED_SHARE of this server's own flat-out rate) with ``paced_n``."""
    server = Workers(count, redis, cpus)
    try:
        result = asyncio.run(
            _fanout_measures(server, redis, seconds, flat_n, paced_n, rate)
        )
    finally:
        server.stop()
    result["balance"] = server.balance or 1.0
    return result


def publish_figure(count, redis, cpus, load_cpus, seconds, rate) -> dict:
    """wrk flat out (16 connections), then 16 Python keep-alive publishers
    paced at ``rate`` requests/s (None: PACED_SHARE of wrk's rate here)."""
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
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
            raise RuntimeError("publish bench: refused requests:\n" + out)
        result = {
            "flat_per_s": requests / seconds,
            "flat_per_cpu_s": requests / cpu if cpu else 0.0,
            "flat_redis_cpu": 100 * redis_cpu / seconds,
        }
        rate = rate or result["flat_per_s"] * PACED_SHARE
        result.update(asyncio.run(_paced_publish(server, redis, seconds, rate)))
    finally:
        server.stop()
    return result


async def _paced_publish(server, redis, seconds, rate) -> dict:
    pubs = await publishers(server.port, fanout.SECRET, "nobody", 16)
    nobody = fanout.Audience([])
    cpu0, redis0 = server.cpu_seconds(), fanout.cpu_seconds(redis.proc.pid)
    start = time.perf_counter()
    published = 0
    counted = type(pubs[0]).publish

    async def publish(self) -> None:  # count before measure() resets them
        nonlocal published
        await counted(self)
        published += 1

    for pub in pubs:
        pub.publish = publish.__get__(pub)
    await fanout.measure(nobody, pubs, seconds, rate)
    elapsed = time.perf_counter() - start
    cpu = server.cpu_seconds() - cpu0
    redis_cpu = fanout.cpu_seconds(redis.proc.pid) - redis0
    nobody.close()
    for pub in pubs:
        pub.transport.close()
    return {
        "per_s": published / elapsed,
        "per_cpu_s": published / cpu if cpu else 0.0,
        "redis_cpu": 100 * redis_cpu / elapsed,
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


def _round(args, redis, server_cpus, load_cpus, counts, results, round_) -> None:
    rate, publish_rate = args.rate, args.publish_rate
    for count in counts:
        fan = fanout_figure(
            count,
            redis,
            server_cpus,
            args.seconds,
            args.flat_publishers,
            args.paced_publishers,
            rate,
        )
        rate = rate or fan["paced_published_per_s"]  # the same for every N
        pub = publish_figure(
            count, redis, server_cpus, load_cpus, args.seconds, publish_rate
        )
        publish_rate = publish_rate or pub["per_s"]
        for name, figure in (("fanout", fan), ("publish", pub)):
            for key, value in figure.items():
                results.setdefault("%s_n%d_%s" % (name, count, key), []).append(value)
        print(
            "round %d N=%d: fan-out paced at %.0f publishes/s: %7.0f deliveries/s "
            "%7.0f /CPU-s, %.2f frames/send (server %3.0f%%, redis %3.0f%%); flat "
            "out, %d publishers: %7.0f deliveries/s %7.0f /CPU-s, %.2f frames/send "
            "(redis %3.0f%%); busiest worker %.0f%% of subscribers, missing %d; "
            "publish paced %5.0f req/s %5.0f /CPU-s (redis %3.0f%%), wrk flat "
            "out %5.0f req/s %5.0f /CPU-s"
            % (
                round_,
                count,
                fan["paced_published_per_s"],
                fan["paced_per_s"],
                fan["paced_per_cpu_s"],
                fan["paced_frames_per_write"],
                fan["paced_server_cpu"],
                fan["paced_redis_cpu"],
                args.flat_publishers,
                fan["flat_per_s"],
                fan["flat_per_cpu_s"],
                fan["flat_frames_per_write"],
                fan["flat_redis_cpu"],
                100 * fan["balance"],
                fan["flat_missing"] + fan["paced_missing"],
                pub["per_s"],
                pub["per_cpu_s"],
                pub["redis_cpu"],
                pub["flat_per_s"],
                pub["flat_per_cpu_s"],
            ),
            flush=True,
        )
    # Same-round ratios: every N of a round saw the same background load.
    base = counts[0]
    for count in counts[1:]:
        for name, key in ROUND_RATIOS:
            now, then = (results[key % n][-1] for n in (count, base))
            ratio = now / then if then else 0.0
            results.setdefault("%s_round_ratio_n%d" % (name, count), []).append(ratio)


def _balance_rounds(args, redis, cpus, results) -> None:
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
                    "round %d: 1,000 connections %s, %s: busiest of 2 workers took %.0f%%"
                    % (
                        round_,
                        "one at a time" if concurrency == 1 else "200 at a time",
                        "one shared socket (systemd:)"
                        if shared
                        else "a SO_REUSEPORT socket per worker (tcp:)",
                        100 * share,
                    ),
                    flush=True,
                )


def json_figures(median: dict, counts: list[int]) -> dict:
    """The flat keys of the docstring, from the medians of every round."""
    figures: dict = {}
    for count in counts:
        n = "n%d" % count
        for key in PACED_KEYS:
            figures["fanout_%s_%s" % (n, key)] = median["fanout_%s_paced_%s" % (n, key)]
        for key in ("per_s", "per_cpu_s", "frames_per_write", "redis_cpu"):
            key = "flat_" + key
            figures["fanout_%s_%s" % (n, key)] = median["fanout_%s_%s" % (n, key)]
        for kind in ("per_s", "per_cpu_s", "redis_cpu"):
            for key in (kind, "flat_" + kind):
                figures["publish_%s_%s" % (n, key)] = median["publish_%s_%s" % (n, key)]
    base = counts[0]
    for count in counts[1:]:
        suffix = "" if count == 2 else "_n%d" % count
        for name, key in ROUND_RATIOS:
            now, then = (median[key % n] for n in (count, base))
            figures["%s_ratio%s" % (name, suffix)] = now / then if then else 0.0
            figures["%s_round_ratio%s" % (name, suffix)] = median[
                "%s_round_ratio_n%d" % (name, count)
            ]
    if 2 in counts:
        figures["balance_n2"] = median["fanout_n2_balance"]
    figures.update({k: v for k, v in median.items() if k.startswith("balance_")})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--placement", choices=("shared", "spread"), default="shared")
    parser.add_argument(
        "--workers",
        default="1,2",
        help="worker counts to compare, the first one the base (default 1,2)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="publishes/s of the paced fan-out (default: %d%% of the first "
        "count's flat-out rate in each round)" % (100 * PACED_SHARE),
    )
    parser.add_argument(
        "--publish-rate",
        type=float,
        default=None,
        help="requests/s of the paced publish figure (default: %d%% of the "
        "first count's wrk rate in each round)" % (100 * PACED_SHARE),
    )
    parser.add_argument("--flat-publishers", type=int, default=4)
    parser.add_argument("--paced-publishers", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--skip-balance",
        action="store_true",
        help="skip the connection-spread figures (SO_REUSEPORT vs a shared socket)",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
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
            _round(args, redis, server_cpus, load_cpus, counts, results, round_)
        if not args.skip_balance:
            _balance_rounds(args, redis, cpus, results)
    finally:
        redis.close()
    median = {k: statistics.median(v) for k, v in results.items()}
    figures = json_figures(median, counts)
    for count in counts[1:]:
        suffix = "" if count == 2 else "_n%d" % count
        print(
            "MEDIAN N=%d/N=%d per CPU-s: fan-out at the same publish rate %.2f "
            "(%.0f / %.0f; same-round ratios' median %.2f), fan-out flat out %.2f "
            "(%.0f / %.0f), publish at the same rate %.2f (%.0f / %.0f), "
            "publish flat out (wrk) %.2f"
            % (
                count,
                counts[0],
                figures["fanout_ratio" + suffix],
                figures["fanout_n%d_per_cpu_s" % count],
                figures["fanout_n%d_per_cpu_s" % counts[0]],
                figures["fanout_round_ratio" + suffix],
                figures["fanout_flat_ratio" + suffix],
                figures["fanout_n%d_flat_per_cpu_s" % count],
                figures["fanout_n%d_flat_per_cpu_s" % counts[0]],
                figures["publish_ratio" + suffix],
                figures["publish_n%d_per_cpu_s" % count],
                figures["publish_n%d_per_cpu_s" % counts[0]],
                figures["publish_flat_ratio" + suffix],
            ),
            flush=True,
        )
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
