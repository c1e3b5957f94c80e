"""Prometheus metrics of one pushd node (docs/operations.md lists them).

Two kinds, so the fan-out path stays as fast as without metrics:

* counters moved where something happens that is not per delivery: a
  connection opened, refused or closed by pushd, a message published (once
  per channel, with its latency), a message fanned out (once per message on
  this node, with the number of local subscribers), a flush of the WebSocket
  write queues (once per reactor turn, with the frames and bytes written);
* figures read only when Prometheus scrapes (``_HubCollector``): connections
  by transport and app, subscriptions, channels, the webhook queue and its
  counters, the backend's state.

Each hub has its own registry, so several pushd servers in one process (the
tests) never share figures.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
        self.published = Counter(
            "pushd_messages_published",
            "Messages published through this node (one per channel), by app.",
            ["app"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "pushd_publish_seconds",
            "Time to hand one message to the backend (per channel).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.delivered = Counter(
            "pushd_messages_delivered",
            "Messages handed to local subscribers' connections (counted once "
            "per message fanned out, with its number of recipients).",
            registry=registry,
        )
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
        registry.register(_HubCollector(hub))
        # Bound once: the hot paths call these without attribute lookups.
        self.observe_publish = self.publish_seconds.observe
        self.count_delivered = self.delivered.inc
        self._ws_frames = self.frames_sent.labels("ws").inc
        self._ws_bytes = self.bytes_sent.labels("ws").inc
        self._ws_writes = self.writes.labels("ws").inc

    def flushed(self, frames: int, nbytes: int, writes: int = 0) -> None:
        """One WebSocket flush wrote ``frames`` frames, ``nbytes`` bytes, in
        ``writes`` writes (one per connection)."""
        if frames:
            self._ws_frames(frames)
            self._ws_bytes(nbytes)
            self._ws_writes(writes)

    def opened(self, transport: str, app_id: str) -> None:
        self.connections_opened.labels(transport, app_id).inc()

    def refused(self, reason: str) -> None:
        self.connections_refused.labels(reason).inc()

    def closed_by_server(self, code: int) -> None:
        self.disconnects.labels(str(code)).inc()


def now() -> float:
    """A monotonic clock for latencies (the reactor's clock may be fake)."""
    return time.perf_counter()


class _HubCollector:
    """Figures that already exist in the hub, read at scrape time only."""

    def __init__(self, hub: Any) -> None:
        self._hub = hub

    def describe(self) -> list:
        return []

    def collect(self):
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
