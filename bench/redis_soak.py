"""Soak: kill -9 and restart redis-server N times under a steady publish rate.

Two ``twistd pushd`` nodes on a private redis-server, a publisher posting
numbered messages (with idempotency keys) to a channel that keeps history
and one that does not, a WebSocket subscriber on each node, a presence
member on each node (pushd.soak.Scenario).  Each round kills redis-server
(-9), waits ``--outage`` seconds, starts it again (empty, or with its
append-only file with ``--persist``), and measures the time until users,
members, subscriber counts and /ready are right on both nodes again.  At the
end it prints, over all rounds:

* acknowledged: messages answered 202;
* lost / duplicated / reordered: over every subscriber of the history
  channel (goal: 0, 0, 0);
* channel without history: subscribers that got everything, that got a
  messages_lost notice, and that lost messages silently (goal: 0);
* spurious presence events (goal: 0);
* time to heal per restart: median and max (goal: under 10 s).

    python bench/redis_soak.py --restarts 10
    python bench/redis_soak.py --restarts 10 --persist
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from pushd.soak import Publisher, Scenario, sleep
from pushd.testing import RedisServer


async def soak(options: argparse.Namespace) -> dict:
    redis = RedisServer(persist=options.persist)
    directory = tempfile.mkdtemp(prefix="pushd-soak-")
    scenario = Scenario(
        redis, directory, options.heartbeat, options.node_ttl, options.publishers
    )
    heal_times = []
    try:
        await scenario.start()
        started = time.monotonic()
        publishers = [
            Publisher(scenario.nodes, interval=options.interval, stream=n)
            for n in range(options.publishers)
        ]
        for publisher in publishers:
            publisher.start()
        for n in range(options.restarts):
            await sleep(options.between)
            heal_times.append(await scenario.restart_redis(options.outage))
            print(
                "restart %d: healed in %.2f s, %d acknowledged so far"
                % (n + 1, heal_times[-1], sum(len(p.acked) for p in publishers)),
                flush=True,
            )
        await sleep(options.between)
        for publisher in publishers:
            await publisher.stop()
        figures = await scenario.check(*(p.acked for p in publishers))
        figures["refused"] = sum(p.refused for p in publishers)
        figures["rate"] = figures["acked"] / (time.monotonic() - started)
    finally:
        scenario.stop()
        redis.close()
    figures["heal_median"] = statistics.median(heal_times) if heal_times else 0
    figures["heal_max"] = max(heal_times, default=0)
    return figures


def report(options: argparse.Namespace, figures: dict) -> None:
    print(
        "\n%d restarts (%s, outage %.1f s, heartbeat %s s, node-ttl %s s)"
        % (
            options.restarts,
            "persistent" if options.persist else "empty restarts",
            options.outage,
            options.heartbeat,
            options.node_ttl,
        )
    )
    print(
        "acknowledged:          %d (%.0f/s; refused: %d)"
        % (figures["acked"], figures["rate"], figures["refused"])
    )
    print(
        "history channel:       lost %(lost)d, duplicated %(duplicated)d, "
        "reordered %(reordered)d (over every subscriber and channel)" % figures
    )
    print(
        "channel w/o history:   complete %(live_complete)d, notified "
        "%(live_notified)d, silent loss %(live_silent_loss)d" % figures
    )
    print("spurious presence:     %d" % figures["spurious_presence"])
    print(
        "time to heal:          median %.2f s, max %.2f s"
        % (figures["heal_median"], figures["heal_max"])
    )


def main(reactor, argv) -> object:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--persist", action="store_true")
    parser.add_argument("--outage", type=float, default=1.0)
    parser.add_argument(
        "--between",
        type=float,
        default=3.0,
        help="seconds of steady publishing between restarts",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.005,
        help="pause between publishes (each waits for its answer)",
    )
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--node-ttl", type=float, default=5.0)
    parser.add_argument(
        "--publishers",
        type=int,
        default=4,
        help="publishers, each on its own pair of channels, alternating nodes",
    )
    options = parser.parse_args(argv)

    async def run() -> None:
        figures = await soak(options)
        report(options, figures)
        bad = figures["lost"] or figures["duplicated"] or figures["live_silent_loss"]
        if bad or figures["heal_max"] > 10:
            raise SystemExit(1)

    return ensureDeferred(run())


if __name__ == "__main__":
    react(main, (sys.argv[1:],))
