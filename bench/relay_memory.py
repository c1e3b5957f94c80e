"""Does anonymous relay traffic grow pushd's memory?  (issue 12)

Starts a real ``twistd pushd`` (memory backend) with an interval-polling
subscriber location ``/poll/`` beside the default long-polling
``/subscriber/``, then, without credentials, asks for channel names that do
not exist, and prints the server's RSS (VmRSS) after each phase:

* interval polls: ``--names`` GETs of new names, pipelined on a few
  connections (each answered 304 at once);
* long polls that give up: ``--names`` GETs of new names on
  ``/subscriber/``, each connection closed while it waits.

Each phase runs ``--rounds`` times; the first warms allocator pools, the
growth after it is what stays per name.  With the fix the growth per name is ~0 bytes; before it, each name
kept 400-540 bytes for good.  ``--pythonpath DIR`` runs another checkout's
pushd (e.g. a worktree of the commit before the fix) for comparison::

    python bench/relay_memory.py
    python bench/relay_memory.py --names 20000 --runs 3
    git worktree add /tmp/before 2d74c73
    python bench/relay_memory.py --pythonpath /tmp/before
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CONFIG = """\
api-secret: bench-secret-that-is-long-enough
relay-locations:
  - {type: subscriber, prefix: /poll/, polling: interval}
  - {type: subscriber, prefix: /subscriber/}
  - {type: publisher, prefix: /publisher/}
"""


def rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def start(pythonpath: str | None) -> tuple[subprocess.Popen, int, str]:
    workdir = tempfile.mkdtemp(prefix="pushd-relay-bench-")
    config = os.path.join(workdir, "pushd.yaml")
    with open(config, "w") as f:
        f.write(CONFIG)
    log = os.path.join(workdir, "pushd.log")
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen(
        [
            twistd,
            "-n",
            "--pidfile=",
            "--logfile",
            log,
            "pushd",
            "--config",
            config,
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        cwd=workdir,
        env=env,
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        text = open(log).read() if os.path.exists(log) else ""
        m = re.search(r"pushd listening on [0-9.]+:(\d+)", text)
        if m:
            return proc, int(m.group(1)), log
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("pushd did not start; see %s" % log)


def interval_polls(port: int, names: list[str], per_connection: int = 2000) -> None:
    for i in range(0, len(names), per_connection):
        batch = names[i : i + per_connection]
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                b"".join(
                    b"GET /poll/%s HTTP/1.1\r\nHost: b\r\n\r\n" % n.encode()
                    for n in batch
                )
            )
            got = b""
            while got.count(b"HTTP/1.1 ") < len(batch):
                chunk = s.recv(65536)
                if not chunk:
                    raise SystemExit("connection closed early")
                got += chunk


def abandoned_long_polls(port: int, names: list[str], at_once: int = 200) -> None:
    for i in range(0, len(names), at_once):
        socks = []
        for name in names[i : i + at_once]:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /subscriber/%s HTTP/1.1\r\nHost: b\r\n\r\n" % name.encode())
            socks.append(s)
        time.sleep(0.05)  # let pushd take them in and start waiting
        for s in socks:
            s.close()
    # Let pushd see the closes: on a busy machine the last few hundred take
    # a second or two, and RSS measured earlier counts them as kept.
    time.sleep(3)


def run_once(args, label: str) -> dict:
    proc, port, _log = start(args.pythonpath)
    try:
        figures = {"start": rss_kb(proc.pid)}
        for phase, fn in (("interval", interval_polls), ("long", abandoned_long_polls)):
            for round_ in range(1, args.rounds + 1):
                names = [
                    "%s-%s-%d-%d" % (label, phase, round_, n) for n in range(args.names)
                ]
                fn(port, names)
                figures["%s%d" % (phase, round_)] = rss_kb(proc.pid)
        return figures
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pythonpath",
        default=None,
        help="checkout whose pushd to run (default: this one)",
    )
    args = parser.parse_args()
    runs = []
    for n in range(args.runs):
        runs.append(run_once(args, "r%d" % n))
        print("run %d: %s" % (n + 1, runs[-1]), flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(
        "pushd RSS in KB, median of %d runs, %d new names per phase"
        % (args.runs, args.names)
    )
    print("  at start                       %8.0f" % med("start"))
    last = args.rounds
    for phase, what in (
        ("interval", "interval polls"),
        ("long", "abandoned long polls"),
    ):
        rounds = ", ".join(
            "%.0f" % med("%s%d" % (phase, r)) for r in range(1, last + 1)
        )
        growth = statistics.median(
            r["%s%d" % (phase, last)] - r[phase + "1"] for r in runs
        )
        per_name = growth * 1024 / (args.names * (last - 1)) if last > 1 else 0
        print(
            "  after each round of %-21s %s: +%.0f KB after the first, %.1f bytes/name"
            % (what, rounds, growth, per_name)
        )


if __name__ == "__main__":
    main()
