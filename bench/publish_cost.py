"""pushd's CPU per publish through ``Hub.publish``: memory against Redis.

    python bench/publish_cost.py                  # 3 rounds of 4,000 publishes each
    python bench/publish_cost.py --rounds 5 --publishes 8000 --json

No HTTP and no sockets to subscribers: two WebSocket protocols with
transports that drop what they are given subscribe to one channel (so it
has a feed, as a busy channel does), and four publishers publish one
message after another each, as the HTTP publishers of fanout.py do.  This
process is pinned to the first CPU and a private redis-server to the
second, so the figure is pushd's own work per publish: on Redis, the
round trip (the EVALSHA, its reply, the pub/sub copy, its decoding, the
echo and timeouts) that the memory backend does not have.  At 1,000
subscribers a publish costs the memory backend ~450 us in all
(bench/README.md), so the Redis round trip is what decides the
Redis/memory ratio of compare.py.

``--json``: the last line is one JSON object of the medians,
``memory_cpu_us``, ``redis_cpu_us`` and ``redis_extra_us`` (per publish).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogBeginner

from pushd.backends.memory import MemoryBackend
from pushd.backends.redis import RedisBackend
from pushd.config import Config
from pushd.hub import Hub
from pushd.testing import RedisServer
from pushd.transports.websocket import PushServerFactory, PushServerProtocol

PAYLOAD = {"t": "%017.6f" % 0, "p": "x" * 70}


class _Dropped:
    """A transport that takes every write (no socket: no send() cost)."""

    disconnecting = False

    def write(self, data: bytes) -> None:
        pass

    def getHandle(self) -> None:
        return None


async def cost(backend, publishes: int) -> float:
    """pushd CPU-microseconds per publish on ``backend``."""
    await backend.start()
    hub = Hub(backend, reactor, Config())
    factory = PushServerFactory(hub, hub.config)
    app = hub.apps.by_id("default")
    for i in range(2):
        proto = PushServerProtocol()
        proto.factory, proto.transport = factory, _Dropped()
        proto.state, proto.connection_id = proto.STATE_OPEN, "c%d" % i
        session = hub.open_session(proto, app, None, None)
        await hub.subscribe(session, "bench")
        hub.release(session, "bench")

    async def publisher(count: int) -> None:
        for _ in range(count):
            await hub.publish(app, ["bench"], "tick", PAYLOAD)

    async def four(count: int) -> None:
        await defer.gatherResults(
            [defer.Deferred.fromCoroutine(publisher(count // 4)) for _ in range(4)]
        )

    await four(200)  # warm up
    start = time.process_time()
    await four(publishes)
    used = time.process_time() - start
    await backend.stop()
    return used / publishes * 1e6


async def main(args) -> None:
    os.sched_setaffinity(0, {0})
    redis = RedisServer()
    os.sched_setaffinity(redis.proc.pid, {1 % os.cpu_count()})
    rows: dict[str, list[float]] = {"memory": [], "redis": []}
    try:
        for n in range(args.rounds):
            for name in ("memory", "redis"):
                backend = (
                    MemoryBackend()
                    if name == "memory"
                    else RedisBackend(reactor, port=redis.port)
                )
                rows[name].append(await cost(backend, args.publishes))
            print(
                "round %d: memory %.1f us, Redis %.1f us of pushd CPU per publish"
                % (n + 1, rows["memory"][-1], rows["redis"][-1]),
                flush=True,
            )
    finally:
        redis.stop()
    memory, redis_us = (statistics.median(rows[k]) for k in ("memory", "redis"))
    print(
        "median: memory %.1f us, Redis %.1f us, Redis's extra %.1f us per publish"
        % (memory, redis_us, redis_us - memory)
    )
    if args.json:
        print(
            json.dumps(
                {
                    "memory_cpu_us": round(memory, 1),
                    "redis_cpu_us": round(redis_us, 1),
                    "redis_extra_us": round(redis_us - memory, 1),
                }
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--publishes", type=int, default=4000)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    task.react(lambda _: defer.ensureDeferred(main(arguments)))
