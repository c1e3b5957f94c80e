"""Fan-out benchmark: one pushd, S WebSocket subscribers on one channel.

    python bench/fanout.py                     # S = 100 and 1000, 5 runs each
    python bench/fanout.py --subscribers 1000 --runs 3 --seconds 5
    python bench/fanout.py --idle 5000         # memory per idle connection
    python bench/fanout.py --cluster           # 1 node on memory, 1 and 2 nodes on Redis
    python bench/fanout.py --subscribers 1000 --runs 3 --idle 0 --json
    python bench/fanout.py --subscribers 1000 --runs 3 --idle 0 --saturation 180000

pushd runs in its own process pinned to CPU 0 (`twistd pushd`, memory
backend); this script runs the subscribers and HTTP keep-alive publishers
pinned to the other CPU.  Each run prints:

* deliveries/s while publishers go flat out, and the server's CPU use then
  (deliveries per server CPU-second is the figure that survives a noisy box);
* p50/p99 latency (publish request sent -> frame arrived at the probe's
  socket, by the kernel's timestamp) at 10%, 50% and 90% of that rate, and
  the p99 as read by this process ("read"): the difference is the load
  generator's own delay (``--saturation D``: at 10/50/90% of D deliveries/s
  instead, to compare two builds at the same publish rates);
* server RSS, and missing deliveries (must be 0).

The summary line is the median of the runs.  With ``--json`` the last line
is one JSON object of the medians: for each S, ``s<S>_`` followed by
deliveries_per_s, deliveries_per_cpu_s, deliveries_per_cpu_s_with_redis,
p50_ms_<L>, p99_ms_<L> (L = 10, 50, 90, and 100 for flat out),
p99_ms_read_<L>, rss_mb, missing, redis_cpu, server_cpu (%); and
idle_kb_per_connection.  With ``--cluster`` the prefixes are ``memory_``,
``redis_`` (one node) and ``redis2_`` (two nodes), plus
ratio_redis_memory_per_s, ratio_redis_memory_per_cpu_s (pushd and
redis-server CPU counted) and ratio_redis2_redis_per_s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wsload import BatchReader, ProbeReader, publishers, subscribe_many

SECRET = "bench-secret"
TICK = os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, cpu: int | None, extra: list[str]) -> None:
        self.logdir = tempfile.mkdtemp(prefix="pushd-bench-")
        self.log = os.path.join(self.logdir, "pushd.log")
        twistd = (
            shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
        )
        cmd = [
            twistd,
            "-n",
            "--pidfile=",
            "--logfile",
            self.log,
            "pushd",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--api-secret",
            SECRET,
            "--ping-interval",
            "0",
            *extra,
        ]
        preexec = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        self.proc = subprocess.Popen(cmd, preexec_fn=preexec)
        deadline = time.time() + 20
        while True:
            text = open(self.log).read() if os.path.exists(self.log) else ""
            match = re.search(r"pushd listening on 127\.0\.0\.1:(\d+)", text)
            if match:
                self.port = int(match.group(1))
                break
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("pushd did not start:\n" + text)
            time.sleep(0.05)

    def rss_kb(self) -> int:
        with open("/proc/%d/status" % self.proc.pid) as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        shutil.rmtree(self.logdir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return (
        values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")
    )


class Audience:
    """All subscribers: probes count and time frames (in a thread of their
    own, by kernel arrival time), the rest are batch-read."""

    def __init__(self, subs) -> None:
        self.size = len(subs)
        self.probes = ProbeReader([s for s in subs if s.probe])
        self.reader = BatchReader([s for s in subs if not s.probe])

    def delivered(self) -> int:
        frame = self.probes.frame_length or 1
        return self.probes.messages + self.reader.bytes // frame

    def close(self) -> None:
        self.reader.close()
        self.probes.close()


async def measure(audience, pubs, seconds, rate=None):
    """Publish for ``seconds`` (flat out, or at ``rate``/s); count deliveries.

    Returns (delivered, elapsed, latencies, read latencies, missing)."""
    audience.probes.clear()
    before = audience.delivered()
    start = time.perf_counter()
    stop_at = start + seconds

    async def flat_out(pub):
        while time.perf_counter() < stop_at:
            await pub.publish()

    async def paced(pub, interval, offset):
        next_at = start + offset
        while next_at < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await pub.publish()
            next_at += interval

    if rate is None:
        await asyncio.gather(*(flat_out(p) for p in pubs))
    else:
        interval = len(pubs) / rate
        await asyncio.gather(
            *(paced(p, interval, i * interval / len(pubs)) for i, p in enumerate(pubs))
        )
    published = sum(p.published for p in pubs)
    expected = before + published * audience.size
    deadline = time.perf_counter() + 30
    while audience.delivered() < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    delivered = audience.delivered() - before
    for p in pubs:
        p.published = 0
    return (
        delivered,
        elapsed,
        list(audience.probes.latencies),
        list(audience.probes.read_latencies),
        expected - before - delivered,
    )


# Loads at which latency is measured, as fractions of the saturated rate.
LOADS = (0.1, 0.5, 0.9)


async def one_run(
    servers: list,
    subscribers: int,
    seconds: float,
    publishers_n: int,
    redis_pid: int | None = None,
    saturation: float | None = None,
    counters=None,
):
    """One run; ``counters()`` (optional) gives the servers' (frames sent,
    writes) so far, for ``frames_per_write`` over the flat-out window."""
    subs = []
    for i, server in enumerate(servers):
        share = subscribers // len(servers) + (i < subscribers % len(servers))
        subs += await subscribe_many(
            server.port, share, "bench", probes=max(1, 20 // len(servers))
        )
    audience = Audience(subs)
    pubs = []
    for i in range(publishers_n):
        pubs += await publishers(servers[i % len(servers)].port, SECRET, "bench", 1)
    await measure(audience, pubs, 0.5)  # warm up
    cpu0 = sum(s.cpu_seconds() for s in servers)
    redis0 = cpu_seconds(redis_pid) if redis_pid else 0.0
    sent0 = counters() if counters else (0.0, 0.0)
    delivered, elapsed, lat_max, _, missing = await measure(audience, pubs, seconds)
    cpu = sum(s.cpu_seconds() for s in servers) - cpu0
    sent = counters() if counters else (0.0, 0.0)
    redis_cpu = (cpu_seconds(redis_pid) - redis0) if redis_pid else 0.0
    rate = delivered / elapsed
    result = {
        "deliveries_per_s": rate,
        "server_cpu": 100 * cpu / elapsed,
        "deliveries_per_cpu_s": delivered / cpu if cpu else float("nan"),
        # pushd and redis-server together: what a delivery costs the machine
        "deliveries_per_cpu_s_with_redis": (
            delivered / (cpu + redis_cpu) if cpu + redis_cpu else float("nan")
        ),
        "p50_ms_100": percentile(lat_max, 0.5) * 1000,
        "p99_ms_100": percentile(lat_max, 0.99) * 1000,
        "redis_cpu": 100 * redis_cpu / elapsed,
    }
    if counters:
        writes = sent[1] - sent0[1]
        result["frames_per_write"] = (sent[0] - sent0[0]) / writes if writes else 0.0
    for load in LOADS:
        paced = max(1.0, (saturation or rate) / subscribers * load)
        _, _, latencies, read, lost = await measure(audience, pubs, seconds, paced)
        pct = int(load * 100)
        result["p50_ms_%d" % pct] = percentile(latencies, 0.5) * 1000
        result["p99_ms_%d" % pct] = percentile(latencies, 0.99) * 1000
        result["p99_ms_read_%d" % pct] = percentile(read, 0.99) * 1000
        result["publishes_per_s_%d" % pct] = paced
        missing += lost
    # compare.py's names: latency at half the saturated rate
    result["p50_ms"], result["p99_ms"] = result["p50_ms_50"], result["p99_ms_50"]
    result["rss_mb"] = sum(s.rss_kb() for s in servers) / 1024
    result["missing"] = missing
    audience.close()
    for p in pubs:
        p.transport.close()
    await asyncio.sleep(0.5)
    return result


async def idle_memory(server: Server, connections: int) -> float:
    warm = await subscribe_many(server.port, 200, "idle")
    await asyncio.sleep(0.5)
    base = server.rss_kb()
    subs = await subscribe_many(server.port, connections, "idle")
    await asyncio.sleep(1.0)
    after = server.rss_kb()
    for s in warm + subs:
        s.transport.close()
    return (after - base) / connections


def fmt(result: dict) -> str:
    loads = "  ".join(
        "%d%%: %.1f/%.1f (read %.1f)"
        % (
            pct,
            result["p50_ms_%d" % pct],
            result["p99_ms_%d" % pct],
            result["p99_ms_read_%d" % pct],
        )
        for pct in (int(x * 100) for x in LOADS)
    )
    return (
        "%(deliveries_per_s)9.0f deliveries/s  server CPU %(server_cpu)3.0f%%  "
        "%(deliveries_per_cpu_s)9.0f deliveries/CPU-s  "
        % result
        + "p50/p99 ms at "
        + loads
        + "  (flat out %(p50_ms_100).1f/%(p99_ms_100).1f)  RSS %(rss_mb).0f MB  "
        "Redis CPU %(redis_cpu).0f%%  missing %(missing)d" % result
    )


def runs(make_servers, label: str, subscribers: int, args, redis=None) -> dict:
    """``args.runs`` runs on fresh servers; prints each and the median."""
    results = []
    for run in range(args.runs):
        servers = make_servers()
        try:
            result = asyncio.run(
                one_run(
                    servers,
                    subscribers,
                    args.seconds,
                    args.publishers,
                    redis.proc.pid if redis else None,
                    args.saturation,
                )
            )
        finally:
            for server in servers:
                server.stop()
        print("%s run %d: %s" % (label, run + 1, fmt(result)), flush=True)
        results.append(result)
    median = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("%s MEDIAN: %s" % (label, fmt(median)), flush=True)
    return median


def cluster(args, server_cpu) -> dict:
    """Going through Redis: what it costs one node, what a second node adds.

    Nodes and Redis share the server CPU, the load generator has the rest:
    on a 2-core machine this measures what Redis costs per delivery, not how
    two nodes scale on two machines.
    """
    from pushd.testing import RedisServer

    subscribers = (args.subscribers or [1000])[0]
    redis = RedisServer()
    if server_cpu is not None:
        os.sched_setaffinity(redis.proc.pid, {server_cpu})
    try:
        big = ["--send-queue-bytes", str(64 << 20), *args.server_arg]
        spec = ["--backend", redis.spec()]
        memory = runs(
            lambda: [Server(server_cpu, big)], "memory  1 node ", subscribers, args
        )
        one = runs(
            lambda: [Server(server_cpu, big + spec)],
            "redis   1 node ",
            subscribers,
            args,
            redis,
        )
        two = runs(
            lambda: [Server(server_cpu, big + spec) for _ in range(2)],
            "redis   2 nodes",
            subscribers,
            args,
            redis,
        )
    finally:
        redis.close()
    ratios = {
        "redis_memory_per_s": one["deliveries_per_s"] / memory["deliveries_per_s"],
        "redis_memory_per_cpu_s": one["deliveries_per_cpu_s_with_redis"]
        / memory["deliveries_per_cpu_s"],
        "redis2_redis_per_s": two["deliveries_per_s"] / one["deliveries_per_s"],
    }
    print(
        "ratios of medians: redis 1 node / memory = %(redis_memory_per_s).2f per s, "
        "%(redis_memory_per_cpu_s).2f per CPU-s (pushd + redis-server); "
        "redis 2 nodes / redis 1 node = %(redis2_redis_per_s).2f per s" % ratios
    )
    print(
        "p99 ms at 10/50/90%% load: memory %s, redis %s, redis 2 nodes %s"
        % tuple(
            "/".join("%.1f" % r["p99_ms_%d" % p] for p in (10, 50, 90))
            for r in (memory, one, two)
        )
    )
    figures = {"ratio_" + k: v for k, v in ratios.items()}
    for prefix, r in (("memory_", memory), ("redis_", one), ("redis2_", two)):
        figures.update(json_figures(r, prefix))
    return figures


JSON_KEYS = (
    ["deliveries_per_s", "deliveries_per_cpu_s", "deliveries_per_cpu_s_with_redis"]
    + ["p%d_ms_%d" % (q, p) for p in (10, 50, 90, 100) for q in (50, 99)]
    + ["p99_ms_read_%d" % p for p in (10, 50, 90)]
    + ["rss_mb", "missing", "redis_cpu", "server_cpu"]
)


def json_figures(median: dict, prefix: str) -> dict:
    return {prefix + k: round(median[k], 2) for k in JSON_KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, action="append")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument(
        "--idle",
        type=int,
        default=5000,
        help="idle connections for the memory figure (0 skips it)",
    )
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra pushd argument (--server-arg=--flush-window --server-arg=0.002)",
    )
    parser.add_argument(
        "--saturation",
        type=float,
        help="deliveries/s that the latency loads (10/50/90%%) are fractions "
        "of, instead of this run's flat-out rate: to compare two builds at "
        "the same publish rates",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the medians as one JSON object on the last line",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="compare 1 node (memory), 1 node (Redis) and 2 nodes (Redis)",
    )
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[0] if len(cpus) > 1 else None
    if server_cpu is not None:
        os.sched_setaffinity(0, set(cpus[1:]))
    print(
        "pushd fan-out benchmark: server on CPU %s, load on CPUs %s"
        % (server_cpu, sorted(os.sched_getaffinity(0)))
    )
    if args.cluster:
        figures = cluster(args, server_cpu)
        if args.json:
            print(json.dumps(figures))
        return
    figures = {}
    if not args.skip_fanout:
        for subscribers in args.subscribers or [100, 1000]:
            median = runs(
                lambda: [
                    Server(
                        server_cpu,
                        ["--send-queue-bytes", str(64 << 20), *args.server_arg],
                    )
                ],
                "S=%-5d" % subscribers,
                subscribers,
                args,
            )
            figures.update(json_figures(median, "s%d_" % subscribers))
    if args.idle:
        figures_idle = []
        for run in range(3):
            server = Server(server_cpu, [])
            try:
                figures_idle.append(asyncio.run(idle_memory(server, args.idle)))
            finally:
                server.stop()
            print(
                "idle run %d: %.1f KB per idle connection (%d connections)"
                % (run + 1, figures_idle[-1], args.idle),
                flush=True,
            )
        idle = statistics.median(figures_idle)
        print("IDLE MEDIAN: %.1f KB per idle connection" % idle)
        figures["idle_kb_per_connection"] = round(idle, 2)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
