"""Before/after on one noisy machine: interleaved runs of two pushd checkouts.

    python bench/compare.py --base /path/to/old/checkout --rounds 3
    python bench/compare.py --rounds 3                  # this checkout only

Each round runs every figure on the old code, then on this checkout, so both
see the same background load; the summary gives medians and the ratio
new/old.  pushd is pinned to the first CPU, the load generators (wrk for
HTTP, bench/wsload.py for WebSockets) to the others.  Figures:

* publish: ``POST /api/channels/{ch}/messages`` over 16 keep-alive
  connections (wrk + bench/publish.lua), requests/s and requests per
  server CPU-second;
* fan-out memory / redis: 1 channel x 1,000 WebSocket subscribers, 4 HTTP
  publishers flat out (bench/fanout.py), deliveries/s, deliveries per server
  CPU-second and p99 latency at half that rate; redis is one node on a
  private redis-server pinned with pushd.

On a shared machine the per-CPU-second figures are the ones to compare.
``--publishers N`` changes the fan-out's 4 publishers; ``--redis-cpu load``
puts redis-server on the load generators' CPU instead of pushd's.

``--json`` prints, as the last line, one JSON object of the medians, flat:
``{figure}_{version}_{measure}`` with figure ``publish``, ``fanout_memory``
or ``fanout_redis``, version ``new`` (this checkout) or ``old`` (``--base``),
measure ``per_s``, ``per_cpu_s`` (and ``p99_ms``, ``per_cpu_s_with_redis``,
``frames_per_write`` (flat out, from /metrics)
for fan-out); with
``--base`` also ``{figure}_ratio_per_cpu_s`` and ``{figure}_ratio_per_s``
(new/old).  E.g. ``publish_new_per_cpu_s``, ``publish_ratio_per_cpu_s``.
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
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import fanout  # noqa: E402

LUA = os.path.join(HERE, "publish.lua")


def publish_figure(server_cpu, load_cpus, seconds: float, more: list) -> dict:
    server = fanout.Server(server_cpu, more)
    try:
        url = "http://127.0.0.1:%d/" % server.port
        wrk = ["wrk", "-t1", "-c16", "-s", LUA, url]
        pin = ["taskset", "-c", ",".join(map(str, load_cpus))] if load_cpus else []
        env = dict(os.environ, WRK_SECRET=fanout.SECRET)
        subprocess.run(
            pin + wrk[:3] + ["-d1s"] + wrk[3:], env=env, check=True, capture_output=True
        )  # warm up
        cpu0 = server.cpu_seconds()
        out = subprocess.run(
            pin + wrk[:3] + ["-d%ds" % seconds] + wrk[3:],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        cpu = server.cpu_seconds() - cpu0
    finally:
        server.stop()
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError("publish bench: %s refused requests" % bad.group(1))
    return {"per_s": requests / seconds, "per_cpu_s": requests / cpu if cpu else 0}


ADMIN = "bench-admin"


def ws_counters(port: int) -> tuple[float, float]:
    """(frames sent, writes) to WebSocket clients so far, from /metrics."""
    request = urllib.request.Request(
        "http://127.0.0.1:%d/metrics" % port,
        headers={"Authorization": "Bearer " + ADMIN},
    )
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    found = [
        re.search(r"^%s\{[^}]*\} ([0-9.e+]+)" % name, text, re.M)
        for name in ("pushd_frames_sent_total", "pushd_writes_total")
    ]
    frames, writes = (float(f.group(1)) if f else 0.0 for f in found)
    return frames, writes


def fanout_figure(
    server_cpu, seconds: float, redis, more: list, publishers: int = 4
) -> dict:
    extra = ["--send-queue-bytes", str(64 << 20), "--admin-secret", ADMIN, *more]
    if redis is not None:
        extra += ["--backend", redis.spec()]
    server = fanout.Server(server_cpu, extra)
    try:
        result = asyncio.run(
            fanout.one_run(
                [server],
                1000,
                seconds,
                publishers,
                redis.proc.pid if redis else None,
                counters=lambda: ws_counters(server.port),
            )
        )
    finally:
        server.stop()
    return {
        "per_s": result["deliveries_per_s"],
        "per_cpu_s": result["deliveries_per_cpu_s"],
        "per_cpu_s_with_redis": result["deliveries_per_cpu_s_with_redis"],
        "p99_ms": result["p99_ms"],
        "frames_per_write": result["frames_per_write"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="checkout of the old code (its root)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument(
        "--only", action="append", choices=["publish", "fanout-memory", "fanout-redis"]
    )
    parser.add_argument(
        "--new-arg",
        action="append",
        default=[],
        help="extra pushd argument for the new checkout's servers "
        "(e.g. --new-arg=--flush-window --new-arg=0.002)",
    )
    parser.add_argument(
        "--publishers",
        type=int,
        default=4,
        help="fan-out: HTTP publishers flat out, one request in flight each",
    )
    parser.add_argument(
        "--redis-cpu",
        choices=["server", "load"],
        default="server",
        help="the CPU of redis-server: pushd's (default, the harder case: "
        "they share a core and its caches) or the load generators'",
    )
    parser.add_argument(
        "--json", action="store_true", help="last line: the medians as JSON"
    )
    args = parser.parse_args()
    from pushd.testing import RedisServer

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu = cpus[0] if len(cpus) > 1 else None
    load = cpus[1:] if len(cpus) > 1 else []
    if load:
        os.sched_setaffinity(0, set(load))
    versions = [("new", os.path.dirname(HERE))]
    if args.base:
        versions.insert(0, ("old", os.path.abspath(args.base)))
    figures = args.only or ["publish", "fanout-memory", "fanout-redis"]
    redis = RedisServer() if "fanout-redis" in figures else None
    if redis is not None and server_cpu is not None:
        where = {server_cpu} if args.redis_cpu == "server" else set(load)
        os.sched_setaffinity(redis.proc.pid, where)
    results: dict = {}
    try:
        for rnd in range(args.rounds):
            for name in figures:
                for version, root in versions:
                    os.environ["PYTHONPATH"] = root
                    more = args.new_arg if version == "new" else []
                    if name == "publish":
                        r = publish_figure(server_cpu, load, int(args.seconds), more)
                    else:
                        r = fanout_figure(
                            server_cpu,
                            args.seconds,
                            redis if name == "fanout-redis" else None,
                            more,
                            args.publishers,
                        )
                    results.setdefault((name, version), []).append(r)
                    print(
                        "round %d %-14s %-3s %s"
                        % (
                            rnd + 1,
                            name,
                            version,
                            "  ".join("%s %.1f" % kv for kv in r.items()),
                        ),
                        flush=True,
                    )
    finally:
        if redis is not None:
            redis.close()
    print("\nMEDIANS of %d rounds" % args.rounds)
    flat: dict = {}
    for name in figures:
        line = []
        medians = {}
        key = name.replace("-", "_")
        for version, _ in versions:
            rs = results[(name, version)]
            medians[version] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for measure, value in medians[version].items():
                flat["%s_%s_%s" % (key, version, measure)] = round(value, 2)
            line.append(
                "%s: %s"
                % (
                    version,
                    "  ".join("%s %.1f" % kv for kv in medians[version].items()),
                )
            )
        if "old" in medians:
            for measure in ("per_cpu_s", "per_s"):
                flat["%s_ratio_%s" % (key, measure)] = round(
                    medians["new"][measure] / medians["old"][measure], 3
                )
            line.append(
                "new/old per CPU-s %.2fx, per s %.2fx"
                % (
                    medians["new"]["per_cpu_s"] / medians["old"]["per_cpu_s"],
                    medians["new"]["per_s"] / medians["old"]["per_s"],
                )
            )
        print("%-14s %s" % (name, " | ".join(line)))
    if "fanout-memory" in figures and "fanout-redis" in figures:
        for version, _ in versions:
            m = statistics.median(
                r["per_cpu_s"] for r in results[("fanout-memory", version)]
            )
            rs = results[("fanout-redis", version)]
            r = statistics.median(x["per_cpu_s"] for x in rs)
            both = statistics.median(x["per_cpu_s_with_redis"] for x in rs)
            per_s = statistics.median(x["per_s"] for x in rs) / statistics.median(
                x["per_s"] for x in results[("fanout-memory", version)]
            )
            print(
                "redis/memory (%s): deliveries per CPU-s %.2f (pushd + redis-server "
                "CPU: %.2f), per s %.2f" % (version, r / m, both / m, per_s)
            )
            rounds = [
                x["per_cpu_s"] / y["per_cpu_s"]
                for x, y in zip(rs, results[("fanout-memory", version)], strict=True)
            ]
            print(
                "redis/memory (%s) per CPU-s by round: %s"
                % (version, " ".join("%.2f" % q for q in rounds))
            )
    if shutil.which("wrk") is None:
        print("(wrk not found: apt-get install wrk)")
    if args.json:
        print(json.dumps(flat, sort_keys=True))


if __name__ == "__main__":
    main()
