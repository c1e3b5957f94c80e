"""Prometheus metrics of one pushd node (docs/operations.md lists them).

Two kinds, so the fan-out path stays as fast as without metrics:

* counters moved where something happens that is not per delivery: a
  connection opened, refused or closed by pushd, a message published (once
  per channel, with its latency), a message fanned out (once per message on
  this node, with the number of local subscribers), a flush of the WebSocket
  write queues (once per reactor turn, with the frames and bytes written).
  The per-message ones are plain numbers (``_Sum``, ``_PerApp``,
  ``_Latencies``), moved by the reactor thread only and turned into
  Prometheus families when scraped: with one subscriber per channel a
  message is a delivery, and prometheus_client's locked values cost more
  than the rest of the metrics together;
* figures read only when Prometheus scrapes (``_HubCollector``): connections
  by transport and app, subscriptions, channels, the webhook queue and its
  counters, the backend's state.

Each hub has its own registry, so several pushd servers in one process (the
tests) never share figures.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter as Tally
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import INF, floatToGoString

# Publish latency: handing a message to the backend, from in-process
# microseconds (memory) to a Redis round trip under load.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class Metrics:
    """The counters pushd moves, and a collector for the rest."""

    def __init__(self, hub: Any) -> None:
        self.registry = registry = CollectorRegistry()
        self.connections_opened = Counter(
            "pushd_connections_opened",
            "Client connections opened, by transport and app.",
            ["transport", "app"],
            registry=registry,
        )
        self.connections_refused = Counter(
            "pushd_connections_refused",
            "Client connections refused, by reason (a limit, or the error code "
            "of a bad key, token or origin).",
            ["reason"],
            registry=registry,
        )
        self.disconnects = Counter(
            "pushd_disconnects",
            "Client connections pushd closed, by close code (4108 rate limit, "
            "4109 slow consumer, 4010 logout, 1001 shutdown...).",
            ["code"],
            registry=registry,
        )
        # Moved once per message (per delivery with one subscriber per
        # channel): plain numbers, not prometheus_client's locked values,
        # which cost a third of a chat-like publish's metrics (bench/chat.py).
        self.published = _PerApp()
        self.publish_seconds = _Latencies(LATENCY_BUCKETS)
        self.delivered = _Sum()
        self.frames_sent = Counter(
            "pushd_frames_sent",
            "Frames written to clients, by transport (counted per flush).",
            ["transport"],
            registry=registry,
        )
        self.bytes_sent = Counter(
            "pushd_bytes_sent",
            "Bytes written to clients, by transport (counted per flush).",
            ["transport"],
            registry=registry,
        )
        self.writes = Counter(
            "pushd_writes",
            "Writes to clients' sockets, by transport (one per connection per "
            "flush): frames sent / writes is how many frames share a send().",
            ["transport"],
            registry=registry,
        )
        registry.register(_HubCollector(hub, self))
        # Bound once: the hot paths call these without attribute lookups.
        self.observe_publish = self.publish_seconds.observe
        self.count_delivered = self.delivered.inc
        self.count_published = self.published.inc
        self._ws_frames = self.frames_sent.labels("ws").inc
        self._ws_bytes = self.bytes_sent.labels("ws").inc
        self._ws_writes = self.writes.labels("ws").inc

    def flushed(self, frames: int, nbytes: int, writes: int = 0) -> None:
        """One WebSocket flush wrote ``frames`` frames, ``nbytes`` bytes, in
        ``writes`` writes (one per connection)."""
        # Separately: a channel feed's frames are counted when published,
        # and written in later slices (pushd.transports.feed).
        if frames:
            self._ws_frames(frames)
        if writes:
            self._ws_bytes(nbytes)
            self._ws_writes(writes)

    def opened(self, transport: str, app_id: str) -> None:
        self.connections_opened.labels(transport, app_id).inc()

    def refused(self, reason: str) -> None:
        self.connections_refused.labels(reason).inc()

    def closed_by_server(self, code: int) -> None:
        self.disconnects.labels(str(code)).inc()


# A monotonic clock for latencies (the reactor's clock may be fake); the
# function itself, not a wrapper: it is read twice per published message.
now = time.perf_counter


class _Sum:
    """A counter moved by the reactor thread alone: no lock."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class _PerApp:
    """A counter per app id, moved by the reactor thread alone."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def inc(self, app_id: str, amount: int = 1) -> None:
        values = self.values
        values[app_id] = values.get(app_id, 0) + amount


class _Latencies:
    """A histogram moved by the reactor thread alone: a count per bucket
    (made cumulative when scraped) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, int]]:
        total, out = 0, []
        for bound, count in zip((*self.bounds, INF), self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), total))
        return out


def _counted_figures(metrics: Metrics):
    published = CounterMetricFamily(
        "pushd_messages_published",
        "Messages published through this node (one per channel), by app.",
        labels=["app"],
    )
    for app_id, value in sorted(metrics.published.values.items()):
        published.add_metric([app_id], value)
    yield published
    latencies = metrics.publish_seconds
    yield HistogramMetricFamily(
        "pushd_publish_seconds",
        "Time to hand one message to the backend (per channel).",
        buckets=latencies.buckets(),
        sum_value=latencies.sum,
    )
    yield CounterMetricFamily(
        "pushd_messages_delivered",
        "Messages handed to local subscribers' connections (counted once "
        "per message fanned out, with its number of recipients).",
        value=metrics.delivered.value,
    )


class _HubCollector:
    """Figures that already exist in the hub or in plain numbers the hot
    paths move, read at scrape time only."""

    def __init__(self, hub: Any, metrics: Metrics) -> None:
        self._hub = hub
        self._metrics = metrics

    def describe(self) -> list:
        return []

    def collect(self):
        yield from _counted_figures(self._metrics)
        hub = self._hub
        connections = Tally((s.transport_name, s.app.id) for s in hub.sessions.values())
        family = GaugeMetricFamily(
            "pushd_connections",
            "Client connections open now, by transport and app.",
            labels=["transport", "app"],
        )
        for (transport, app), count in sorted(connections.items()):
            family.add_metric([transport, app], count)
        yield family
        yield GaugeMetricFamily(
            "pushd_subscriptions",
            "Channel subscriptions of the connections open now.",
            value=sum(len(s.subscriptions) for s in hub.sessions.values()),
        )
        yield GaugeMetricFamily(
            "pushd_channels",
            "Channels with a subscriber on this node.",
            value=hub.local_channel_count(),
        )
        yield GaugeMetricFamily(
            "pushd_ready",
            "1 while /ready answers 200 (the node can serve every request).",
            value=1 if hub.unready_reason() is None else 0,
        )
        yield from _backend_figures(hub.backend_state())
        if hub.webhooks is not None:
            yield from _webhook_figures(hub.webhooks)


def _backend_figures(state: dict):
    yield GaugeMetricFamily(
        "pushd_backend_up",
        "1 while the backend answers (always 1 for in-process backends).",
        value=1 if state.get("up", True) else 0,
    )
    yield CounterMetricFamily(
        "pushd_backend_reconnects",
        "Times the backend connection came back after an outage.",
        value=state.get("reconnects", 0),
    )
    yield CounterMetricFamily(
        "pushd_backend_commands",
        "Backend commands sent (remote backends).",
        value=state.get("commands", 0),
    )
    yield CounterMetricFamily(
        "pushd_backend_command_seconds",
        "Total time backend commands took; divide its rate by "
        "pushd_backend_commands_total's for the mean latency.",
        value=state.get("command_seconds", 0.0),
    )


def _webhook_figures(webhooks: Any):
    yield GaugeMetricFamily(
        "pushd_webhook_queue",
        "Webhook events waiting: queued, in flight or between retries.",
        value=webhooks.pending,
    )
    for name, value, doc in (
        ("sent", webhooks.delivered, "Webhook events a receiver accepted (2xx)."),
        ("retried", webhooks.retried, "Webhook attempts that will be retried."),
        ("failed", webhooks.failed, "Webhook events given up on, or refused (4xx)."),
        ("dropped", webhooks.dropped, "Webhook events dropped: the queue was full."),
    ):
        yield CounterMetricFamily("pushd_webhooks_%s" % name, doc, value=value)
