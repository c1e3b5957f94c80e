"""Every performance figure of bench/README.md in one command, as one table.

    ulimit -n 30000
    python bench/all.py                         # this checkout, 3 runs per figure
    python bench/all.py --base /path/to/old     # and the old checkout, interleaved
    python bench/all.py --only fanout --only publish --runs 5

Each figure is one of the scripts beside this one, run with ``--json``: it
pins pushd to the first CPU and its load generator to the others, runs
several times and prints the medians as one JSON object on its last line.
This script only runs them in turn and lays the medians side by side, so
every figure can also be reproduced alone with the command it prints.

With ``--base`` each figure runs on the old checkout first (its pushd on
``PYTHONPATH``, this checkout's load generators), then on this one, so
both see the same background load; a figure the old code cannot produce
(a path it does not have) is shown as ``-``.  On a shared machine compare
the per-CPU-second figures and the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# How a figure gets its "before": the script interleaves an old checkout
# itself (``--base DIR``), or runs once per checkout through PYTHONPATH, or
# measures what the old code does not have (this checkout only).
INTERLEAVES, PER_CHECKOUT, NEW_ONLY = "interleaves", "per-checkout", "new-only"

# name, script and arguments ("{runs}" is replaced by --runs), and mode.
FIGURES: list[tuple[str, list[str], str]] = [
    # 1 channel x 1,000 subscribers, memory backend: saturated deliveries,
    # latency at 10/50/90% of saturation, RSS.
    (
        "fanout",
        ["fanout.py", "--subscribers", "1000", "--runs", "{runs}", "--idle", "0"],
        PER_CHECKOUT,
    ),
    # The same fan-out on one node on Redis, against the memory backend.
    (
        "redis",
        [
            "compare.py",
            "--only",
            "fanout-memory",
            "--only",
            "fanout-redis",
            "--rounds",
            "{runs}",
            "--seconds",
            "4",
        ],
        INTERLEAVES,
    ),
    # POST /api/channels/{ch}/messages, 16 keep-alive connections (wrk).
    (
        "publish",
        ["compare.py", "--only", "publish", "--rounds", "{runs}"],
        INTERLEAVES,
    ),
    # 1,000 channels x 1 subscriber: single publishes, batch, publisher WS.
    ("chat", ["chat.py", "--runs", "{runs}"], INTERLEAVES),
    # The kernel's share of a chat-like delivery: one send() to one of
    # 1,000 loopback connections, from plain Python, no server.
    ("floor", ["floor.py", "--runs", "{runs}"], NEW_ONLY),
    # Reconnect storm: handshakes/s, subscribes/s, KB per idle connection.
    ("connections", ["connections.py", "--runs", "{runs}"], INTERLEAVES),
    # --workers 1 and 2 on Redis, per server CPU-second.
    ("workers", ["workers.py", "--rounds", "{runs}"], NEW_ONLY),
]


def split_versions(flat: dict) -> tuple[dict, dict]:
    """A script's own before/after keys (``base_x``, or compare.py's
    ``fig_old_x``/``fig_new_x``) as two dicts; its ratios are recomputed."""
    new: dict = {}
    old: dict = {}
    for key, value in flat.items():
        if key.startswith("base_"):
            old[key[5:]] = value
        elif "_old_" in key:
            old[key.replace("_old_", "_", 1)] = value
        elif "_new_" in key:
            new[key.replace("_new_", "_", 1)] = value
        elif "_ratio_" not in key and "_vs_base" not in key:
            new[key] = value
    return new, old


def run_figure(
    name: str, argv: list[str], runs: int, root: str, base: str | None = None
) -> dict | None:
    """One figure's medians, or None when this checkout cannot produce it."""
    cmd = [sys.executable, os.path.join(HERE, argv[0])]
    cmd += [a.replace("{runs}", str(runs)) for a in argv[1:]] + ["--json"]
    if base:
        cmd += ["--base", base]
    env = dict(os.environ, PYTHONPATH=root)
    print("$ %s" % " ".join(cmd[1:]), file=sys.stderr, flush=True)
    start = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # the script's own lines, as they come
            sys.stderr.write("  " + line)
            sys.stderr.flush()
            lines.append(line)
    if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
        print("  (%s failed on %s)" % (name, root), file=sys.stderr)
        return None
    print(
        "  %s on %s: %.0f s" % (name, root, time.monotonic() - start),
        file=sys.stderr,
        flush=True,
    )
    return json.loads(lines[-1])


def fmt(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return "%.2f" % value


def table(results: dict, versions: list[str]) -> list[str]:
    head = ["figure", *versions] + (["new/old"] if len(versions) == 2 else [])
    rows = [head]
    for name, per_version in results.items():
        keys: list[str] = []
        for medians in per_version.values():
            for key in medians or {}:
                if key not in keys:
                    keys.append(key)
        for key in keys:
            values = [(per_version.get(v) or {}).get(key) for v in versions]
            row = ["%s %s" % (name, key), *map(fmt, values)]
            if len(versions) == 2:
                old, new = values
                ratio = (
                    new / old
                    if isinstance(old, (int, float))
                    and isinstance(new, (int, float))
                    and old
                    else None
                )
                row.append("%.2fx" % ratio if ratio is not None else "-")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="an old checkout's root, run first")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", action="append", choices=[n for n, _, _ in FIGURES])
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/all.py needs wrk (apt-get install wrk)")
    versions = [("new", ROOT)]
    if args.base:
        versions.insert(0, ("old", os.path.abspath(args.base)))
    results: dict = {}
    for name, argv, mode in FIGURES:
        if args.only and name not in args.only:
            continue
        if mode == NEW_ONLY:
            results[name] = {"new": run_figure(name, argv, args.runs, ROOT)}
            continue
        if mode == INTERLEAVES:
            new, old = split_versions(
                run_figure(name, argv, args.runs, ROOT, args.base) or {}
            )
            results[name] = {"new": new, "old": old}
            continue
        for version, root in versions:
            results.setdefault(name, {})[version] = run_figure(
                name, argv, args.runs, root
            )
    print("\nmedians of %d runs per figure" % args.runs)
    for line in table(results, [v for v, _ in versions]):
        print(line)


if __name__ == "__main__":
    main()
