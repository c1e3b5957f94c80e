"""Webhooks: pushd POSTs events to the app's URLs (Pusher/Soketi style).

Events: ``channel_occupied``, ``channel_vacated`` (debounced: a quick
reconnect sends neither), ``member_added``, ``member_removed``,
``client_event`` and, when asked for, ``message_published`` (for external
persistence, Seth-Pusher's way).  Each request is one JSON event::

    {"id": "...", "time_ms": 1763865600123, "app": "default", "name": "member_added",
     "channel": "presence-room", "user_id": "ann"}

signed with the app secret (``X-Pushd-Signature``: hex HMAC-SHA256 of the
body) and carrying ``X-Pushd-Event-Id`` for idempotency.  Failures (timeouts,
5xx, 429) are retried with exponential backoff; other 4xx are final.

Sending never blocks delivery, and a slow or dead receiver cannot grow memory
without bound: at most ``webhook-queue`` events wait (queued, in flight or
between retries); past that new events are dropped, counted and logged.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers

from pushd.auth import sign
from pushd.message import new_message_id
from pushd.pusher import pusher_webhook_body, pusher_webhook_event

EVENTS = frozenset(
    {
        "channel_occupied",
        "channel_vacated",
        "member_added",
        "member_removed",
        "client_event",
        "message_published",
    }
)
DEFAULT_EVENTS = EVENTS - {"message_published"}
MAX_IN_FLIGHT = 8


# What Pusher's webhooks carry (format: pusher); message_published is ours.
PUSHER_EVENTS = EVENTS - {"message_published"}
PUSHER_BATCH = 100  # events per request, at most


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    events: frozenset
    app: str | None = None  # None: every app
    format: str = "pushd"  # or "pusher": Pusher's body, headers and batching


def target_from_mapping(raw: Any) -> WebhookTarget:
    if not isinstance(raw, dict) or set(raw) - {"url", "events", "app", "format"}:
        raise ValueError(
            "each webhook is {url: URL, events: [...], app: ID, format: pushd|pusher}"
        )
    form = raw.get("format", "pushd")
    if form not in ("pushd", "pusher"):
        raise ValueError("webhook format must be pushd or pusher")
    url = raw.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError("webhook url must start with http:// or https://")
    allowed = PUSHER_EVENTS if form == "pusher" else EVENTS
    events = raw.get("events", sorted(DEFAULT_EVENTS))
    if not isinstance(events, list) or not set(events) <= allowed or not events:
        raise ValueError(
            "webhook events must be a list of: %s" % ", ".join(sorted(allowed))
        )
    app = raw.get("app")
    if app is not None and not isinstance(app, str):
        raise ValueError("webhook app must be an app id")
    return WebhookTarget(url, frozenset(events), app, form)


class _Discard(Protocol):
    """Reads and drops a response body; fires when it is complete."""

    def __init__(self) -> None:
        self.done: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(None)


class _Job:
    __slots__ = ("attempt", "body", "event_id", "key", "secret", "target")

    def __init__(self, target, body, secret, event_id, key=None) -> None:
        self.target, self.body, self.secret, self.event_id = (
            target,
            body,
            secret,
            event_id,
        )
        self.key = key  # the app key, for Pusher's X-Pusher-Key
        self.attempt = 0


class Webhooks:
    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        targets: tuple,
        queue_size: int = 1000,
        timeout: float = 5.0,
        retries: int = 5,
        backoff: float = 0.5,
        vacate_delay: float = 2.0,
    ) -> None:
        self._reactor = reactor
        self.targets = targets
        self.queue_size, self.timeout, self.retries = queue_size, timeout, retries
        self.backoff, self.vacate_delay = backoff, vacate_delay
        self._queue: deque[_Job] = deque()
        self._in_flight = 0
        self._waiting_retry = 0
        # Exposed as Prometheus counters (pushd_webhooks_*_total).
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
        self.retried = 0
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = MAX_IN_FLIGHT
        self._agent = Agent(reactor, pool=pool, connectTimeout=timeout)
        self._pool = pool
        self._vacating: dict[tuple[str, str], Any] = {}
        self._sending: set[Deferred] = set()
        self._retries: set[Any] = set()
        self._stopped = False
        self._batches: dict[tuple, tuple[Any, list]] = {}
        self._batch_call: Any = None

    @property
    def pending(self) -> int:
        """Events queued, being sent, or waiting to be retried."""
        return len(self._queue) + self._in_flight + self._waiting_retry

    @property
    def vacate_checks(self) -> int:
        """Channels whose ``channel_vacated`` waits for webhook-vacate-delay."""
        return len(self._vacating)

    def emit(self, app, name: str, **fields: Any) -> None:
        """Queue ``name`` for every target that wants it; never waits."""
        for target in self.targets:
            if name not in target.events or (
                target.app is not None and target.app != app.id
            ):
                continue
            if self.pending >= self.queue_size:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    self._log.warn(
                        "webhook queue full ({size}): {dropped} events dropped so "
                        "far; is {url} slow or down?",
                        size=self.queue_size,
                        dropped=self.dropped,
                        url=target.url,
                    )
                continue
            if target.format == "pusher":
                self._batch(target, app, pusher_webhook_event(name, fields))
                continue
            event_id = new_message_id()
            body = json.dumps(
                dict(
                    fields,
                    id=event_id,
                    time_ms=int(time.time() * 1000),
                    app=app.id,
                    name=name,
                ),
                separators=(",", ":"),
            ).encode()
            self._queue.append(_Job(target, body, app.secret, event_id))
        self._pump()

    def _batch(self, target: WebhookTarget, app, event: dict) -> None:
        """Pusher batches: events of one reactor turn (at most
        PUSHER_BATCH) go out as one request; it is one job in the queue."""
        key = (target, app.id)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = (app, [])
            if self._batch_call is None:
                self._batch_call = self._reactor.callLater(0, self._flush_batches)
        batch[1].append(event)
        if len(batch[1]) >= PUSHER_BATCH:
            self._flush_batch(key)

    def _flush_batches(self) -> None:
        self._batch_call = None
        for key in list(self._batches):
            self._flush_batch(key)
        self._pump()

    def _flush_batch(self, key: tuple) -> None:
        app, events = self._batches.pop(key)
        body = pusher_webhook_body(events, int(time.time() * 1000))
        self._queue.append(_Job(key[0], body, app.secret, new_message_id(), app.key))

    # -- channel occupancy, debounced -------------------------------------------

    def occupied(self, app, channel: str) -> bool:
        """A channel got its first subscriber here.  Returns False when this
        only cancels a pending ``channel_vacated`` (a quick reconnect)."""
        call = self._vacating.pop((app.id, channel), None)
        if call is not None and call.active():
            call.cancel()
            return False
        return True

    def vacated(self, app, channel: str, still_empty) -> None:
        """The last subscriber left: send ``channel_vacated`` after the delay,
        if ``still_empty()`` (a Deferred of bool) still says so then."""
        key = (app.id, channel)

        def announce(empty: bool) -> None:
            if empty:
                self.emit(app, "channel_vacated", channel=channel)

        def fire() -> None:
            self._vacating.pop(key, None)
            d = Deferred.fromCoroutine(still_empty())
            d.addCallback(announce)
            d.addErrback(lambda f: self._log.failure("channel_vacated check", f))

        old = self._vacating.pop(key, None)
        if old is not None and old.active():
            old.cancel()
        self._vacating[key] = self._reactor.callLater(self.vacate_delay, fire)

    # -- sending ---------------------------------------------------------------

    def _pump(self) -> None:
        while self._queue and self._in_flight < MAX_IN_FLIGHT:
            job = self._queue.popleft()
            self._in_flight += 1
            d = Deferred.fromCoroutine(self._send(job))
            self._sending.add(d)
            d.addBoth(self._sent, job, d)

    async def _send(self, job: _Job) -> bool:
        """True: done (delivered, or refused for good); False: retry."""
        signature = [sign(job.secret, job.body).encode()]
        fields = {
            b"content-type": [b"application/json"],
            b"user-agent": [b"pushd-webhooks"],
            b"x-pushd-event-id": [job.event_id.encode()],
        }
        if job.target.format == "pusher":
            fields[b"x-pusher-key"] = [(job.key or "").encode()]
            fields[b"x-pusher-signature"] = signature
        else:
            fields[b"x-pushd-signature"] = signature
        headers = Headers(fields)
        d = self._agent.request(
            b"POST",
            job.target.url.encode(),
            headers,
            FileBodyProducer(BytesIO(job.body)),
        )
        d.addTimeout(self.timeout, self._reactor)
        response = await d
        body = _Discard()
        response.deliverBody(body)
        body.done.addTimeout(self.timeout, self._reactor)
        await body.done
        if 200 <= response.code < 300:
            self.delivered += 1
            return True
        if response.code >= 500 or response.code == 429:
            return False
        self.failed += 1
        self._log.warn(
            "webhook {url} refused event {id}: HTTP {code}; not retried",
            url=job.target.url,
            id=job.event_id,
            code=response.code,
        )
        return True

    def _sent(self, result: Any, job: _Job, d: Deferred) -> None:
        self._in_flight -= 1
        self._sending.discard(d)
        if self._stopped:
            return None
        if result is not True:
            job.attempt += 1
            if job.attempt > self.retries:
                self.failed += 1
                self._log.warn(
                    "webhook {url}: giving up on event {id} after {n} attempts",
                    url=job.target.url,
                    id=job.event_id,
                    n=job.attempt,
                )
            else:
                self.retried += 1
                delay = min(self.backoff * 2 ** (job.attempt - 1), 60.0)
                self._waiting_retry += 1
                self._retries.add(self._reactor.callLater(delay, self._retry, job))
        self._pump()
        return None

    def _retry(self, job: _Job) -> None:
        self._retries = {c for c in self._retries if c.active()}
        self._waiting_retry -= 1
        self._queue.appendleft(job)
        self._pump()

    def stop(self) -> Deferred:
        """Stop sending: what is still waiting is dropped (and logged)."""
        self._stopped = True
        if self.pending:
            self._log.info("webhooks: {n} events not sent at shutdown", n=self.pending)
        for call in list(self._vacating.values()) + list(self._retries):
            if call.active():
                call.cancel()
        self._vacating.clear()
        if self._batch_call is not None and self._batch_call.active():
            self._batch_call.cancel()
        self._batches.clear()
        self._queue.clear()
        for d in list(self._sending):
            d.cancel()
        return self._pool.closeCachedConnections()
