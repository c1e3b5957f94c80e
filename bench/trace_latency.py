"""Where the latency of a fan-out goes, traced inside pushd.

    python bench/trace_latency.py --rates 28,140,250 --seconds 5
    python bench/trace_latency.py --rates 140 --json

Runs one pushd (memory backend, CPU 0) with bench/lattrace on its
PYTHONPATH, which records the WebSocket Flusher's slices, the hub's
fan-out of each publish, the reactor's epoll waits and the garbage
collector's runs.  Subscribers (default 1,000, 20 of them probes) and 4
paced HTTP publishers run here on CPU 1, at each publish rate in turn.
Each probe frame's latency (publish sent -> kernel arrival, as in
bench/fanout.py) is split, by the publish's "t", into: before the hub's
fan-out started (the request read and parsed, waiting for slices and
other fan-outs), the fan-out itself, and after it (waiting for the
Flusher's passes).  Per rate it prints those p50/p99s, slice times (us
per connection), what share of the time went to slices, fan-outs and
waiting, the collections of each generation (count, longest, total), how
close publishes came (the generator's bursts) and which share of the
slowest 1% overlapped a full collection.

``--json`` keys, per rate R: ``r<R>_p50_ms``, ``r<R>_p99_ms``,
``r<R>_pre_p99_ms``, ``r<R>_fanout_p50_ms``, ``r<R>_post_p99_ms``,
``r<R>_us_per_connection``, ``r<R>_slices_share``, ``r<R>_fanout_share``,
``r<R>_gc0``, ``r<R>_gc1``, ``r<R>_gc2``, ``r<R>_gc2_max_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import glob
import itertools
import json
import marshal
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fanout import SECRET, Server, measure, percentile  # noqa: E402
from wsload import BatchReader, ProbeReader, publishers, subscribe_many  # noqa: E402


class SentProbes(ProbeReader):
    """ProbeReader that also keeps each frame's publish time ("t")."""

    def __init__(self, subscribers) -> None:
        self.sent: list[float] = []
        super().__init__(subscribers)

    def clear(self) -> None:
        super().clear()
        self.sent = []

    def _frames(self, fd, buf, arrived, now) -> None:
        before = len(self.latencies)
        super()._frames(fd, buf, arrived, now)
        for lat in self.latencies[before:]:
            self.sent.append(arrived - lat)


class Audience:
    def __init__(self, subs) -> None:
        self.size = len(subs)
        self.probes = SentProbes([s for s in subs if s.probe])
        self.reader = BatchReader([s for s in subs if not s.probe])

    def delivered(self) -> int:
        return self.probes.messages + self.reader.bytes // (
            self.probes.frame_length or 1
        )

    def close(self) -> None:
        self.reader.close()
        self.probes.close()


async def drive(port: int, subscribers: int, rates: list[float], seconds: float):
    subs = await subscribe_many(port, subscribers, "bench", probes=20)
    audience = Audience(subs)
    pubs = await publishers(port, SECRET, "bench", 4)
    await measure(audience, pubs, 0.5)  # warm up
    runs = []
    for rate in rates:
        start = time.time()
        missing = (await measure(audience, pubs, seconds, rate))[4]
        probes = audience.probes
        runs.append(
            (
                rate,
                start,
                time.time(),
                list(zip(probes.sent, probes.latencies, strict=False)),
                missing,
            )
        )
    audience.close()
    for p in pubs:
        p.transport.close()
    return runs


def share(spans, a, b) -> float:
    return sum(min(e, b) - max(s, a) for s, e, *_ in spans if e > a and s < b) / (b - a)


def analyse(rate, a, b, samples, trace) -> dict:
    msgs = {round(m[2], 6): m for m in trace["msgs"]}
    parts = []
    for sent, latency in samples:
        m = msgs.get(round(sent, 6))
        if m:
            parts.append(
                (latency, m[0] - sent, m[1] - m[0], sent + latency - m[1], sent)
            )
    slices = [s for s in trace["slices"] if a <= s[0] < b]
    gcs = [g for g in trace["gcs"] if a <= g[0] < b]
    sent = sorted(m[2] for m in trace["msgs"] if a <= m[2] < b)
    gaps = [y - x for x, y in itertools.pairwise(sent)]
    full = sorted((g[0], g[1]) for g in trace["gcs"] if g[2] == 2)
    starts = [g[0] for g in full]
    parts.sort()
    worst = parts[-max(1, len(parts) // 100) :]

    def overlaps_full(p) -> bool:
        i = bisect.bisect(starts, p[4] + p[0])
        return i > 0 and full[i - 1][1] > p[4]

    col = {k: [p[k] * 1000 for p in parts] for k in range(4)}
    r = {
        "p50_ms": percentile(col[0], 0.5),
        "p99_ms": percentile(col[0], 0.99),
        "pre_p50_ms": percentile(col[1], 0.5),
        "pre_p99_ms": percentile(col[1], 0.99),
        "fanout_p50_ms": percentile(col[2], 0.5),
        "post_p50_ms": percentile(col[3], 0.5),
        "post_p99_ms": percentile(col[3], 0.99),
        "us_per_connection": 1e6
        * sum(s[1] - s[0] for s in slices)
        / max(1, sum(len(s[2]) for s in slices)),
        "slow_slices": sum(1 for s in slices if s[1] - s[0] > 0.005),
        "slices_share": share(slices, a, b),
        "fanout_share": share(trace["msgs"], a, b),
        "poll_share": share(trace["polls"], a, b),
        "close_publishes": sum(1 for g in gaps if g < 0.001) / max(1, len(gaps)),
        "worst_in_full_gc": sum(map(overlaps_full, worst)) / max(1, len(worst)),
    }
    for gen in (0, 1, 2):
        mine = [g[1] - g[0] for g in gcs if g[2] == gen]
        r["gc%d" % gen] = len(mine)
        r["gc%d_max_ms" % gen] = max(mine, default=0) * 1000
        r["gc%d_total_ms" % gen] = sum(mine) * 1000
    return r


def report(rate, r) -> str:
    return (
        "%4d publishes/s: p50/p99 %.1f/%.1f ms = before fan-out %.1f/%.1f + fan-out "
        "%.1f + after %.1f/%.1f | slices %.1f us per connection (%d over 5 ms), "
        "busy: slices %.0f%% fan-out %.0f%%, epoll %.0f%% | GC gen0/1/2 %d/%d/%d "
        "(longest %.1f/%.1f/%.1f ms) | publishes < 1 ms apart %.0f%% | slowest 1%% "
        "during a full GC %.0f%%"
        % (
            rate, r["p50_ms"], r["p99_ms"], r["pre_p50_ms"], r["pre_p99_ms"],
            r["fanout_p50_ms"], r["post_p50_ms"], r["post_p99_ms"],
            r["us_per_connection"], r["slow_slices"], 100 * r["slices_share"],
            100 * r["fanout_share"], 100 * r["poll_share"], r["gc0"], r["gc1"],
            r["gc2"], r["gc0_max_ms"], r["gc1_max_ms"], r["gc2_max_ms"],
            100 * r["close_publishes"], 100 * r["worst_in_full_gc"],
        )
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates", default="28,140,250", help="publishes/s, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--server-arg", action="append", default=[])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[0] if len(cpus) > 1 else None
    if server_cpu is not None:
        os.sched_setaffinity(0, set(cpus[1:]))
    tmp = tempfile.mkdtemp(prefix="pushd-trace-")
    os.environ["LATTRACE_OUT"] = os.path.join(tmp, "trace")
    path = os.environ.get("PYTHONPATH")
    lattrace = os.path.join(HERE, "lattrace")
    os.environ["PYTHONPATH"] = lattrace + (os.pathsep + path if path else "")
    server = Server(server_cpu, args.server_arg)
    try:
        rates = [float(x) for x in args.rates.split(",")]
        runs = asyncio.run(drive(server.port, args.subscribers, rates, args.seconds))
    finally:
        server.stop()
    (path,) = glob.glob(os.environ["LATTRACE_OUT"] + ".*")
    with open(path, "rb") as f:
        trace = marshal.load(f)
    shutil.rmtree(tmp, ignore_errors=True)
    figures = {}
    for rate, a, b, samples, missing in runs:
        r = analyse(rate, a, b, samples, trace)
        print(
            report(rate, r) + ("  MISSING %d" % missing if missing else ""), flush=True
        )
        figures.update({"r%d_%s" % (rate, k): round(v, 3) for k, v in r.items()})
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
