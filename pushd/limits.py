"""Connection limits: how many clients a node takes, per app and per IP, and
how fast one IP may open connections (docs/operations.md).

A refused client is told so the way its transport can hear it: a WebSocket
is closed with 4100 (``over_capacity``; reconnecting later, with backoff, is
fine), an HTTP stream gets 503 with ``Retry-After``.  Every refusal is counted
by reason (``pushd_connections_refused_total``).

Behind a reverse proxy every connection comes from the proxy; ``client_ip``
takes the client's address from ``X-Forwarded-For`` / ``Forwarded`` only
when the connection comes from a ``trusted-proxies`` address, so nobody else
can pick the IP they are limited as.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Any

from pushd.errors import CloseCode
from pushd.identify import Refused

# Rate buckets of IPs that stopped connecting are forgotten; sweeping when
# the table passes this size keeps it bounded by the IPs that connected in
# the last burst/rate seconds.
SWEEP_AT = 4096
RETRY_AFTER = 5

_FORWARDED_FOR = re.compile(r'for="?\[?([^\]";,]+)', re.I)


def _parse_ip(text: str) -> Any:
    text = text.strip()
    if text.count(":") == 1 and "." in text:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def client_ip(
    peer: str, x_forwarded_for: str | None, forwarded: str | None, trusted: tuple
) -> str:
    """The client's IP: the peer's, or, when the peer is a trusted proxy, the
    nearest address in the forwarding headers that is not a trusted proxy."""
    if not trusted:
        return peer
    address = _parse_ip(peer)
    if address is None or not any(address in net for net in trusted):
        return peer
    hops: list[str] = []
    if forwarded:
        hops = _FORWARDED_FOR.findall(forwarded)
    elif x_forwarded_for:
        hops = [h for h in x_forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        hop_ip = _parse_ip(hop)
        if hop_ip is None:
            return peer  # garbled header: do not guess
        if not any(hop_ip in net for net in trusted):
            return str(hop_ip)
    return str(_parse_ip(hops[0])) if hops else peer


def _refuse(reason: str, message: str) -> Refused:
    return Refused(CloseCode.OVER_CAPACITY, "over_capacity", message, 503, reason)


class ConnectionLimits:
    """Counts of open client connections, and the per-IP connect rate."""

    def __init__(self, config: Any, clock: Any) -> None:
        self._config = config
        self._clock = clock
        self.total = 0
        self.by_app: Counter[str] = Counter()
        self.by_ip: Counter[str] = Counter()
        self._buckets: dict[str, tuple[float, float]] = {}
        self._sweep_at = SWEEP_AT

    def admit(self, app_id: str, ip: str) -> None:
        """Count a new connection in, or raise Refused (4100 / 503)."""
        config = self._config
        if config.max_connections and self.total >= config.max_connections:
            raise _refuse("max_connections", "server is at max-connections")
        if (
            config.max_connections_per_app
            and self.by_app[app_id] >= config.max_connections_per_app
        ):
            raise _refuse(
                "max_connections_per_app", "app is at max-connections-per-app"
            )
        if (
            config.max_connections_per_ip
            and self.by_ip[ip] >= config.max_connections_per_ip
        ):
            raise _refuse("max_connections_per_ip", "too many connections from %s" % ip)
        if config.connect_rate_per_ip and not self._take(ip):
            raise _refuse("connect_rate_per_ip", "%s connects too fast" % ip)
        self.total += 1
        self.by_app[app_id] += 1
        self.by_ip[ip] += 1

    def release(self, app_id: str, ip: str) -> None:
        self.total -= 1
        for tally, key in ((self.by_app, app_id), (self.by_ip, ip)):
            tally[key] -= 1
            if tally[key] <= 0:
                del tally[key]

    def _take(self, ip: str) -> bool:
        """Token bucket per IP: connect-rate-per-ip on average, bursts of
        connect-burst-per-ip."""
        rate = self._config.connect_rate_per_ip
        burst = float(self._config.connect_burst_per_ip)
        now = self._clock.seconds()
        tokens, then = self._buckets.get(ip, (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        if tokens < 1:
            self._buckets[ip] = (tokens, now)
            return False
        if len(self._buckets) >= self._sweep_at:
            self._sweep(now, rate, burst)
            # Many IPs inside one burst window: sweep less often, not on
            # every connection.
            self._sweep_at = max(SWEEP_AT, 2 * len(self._buckets))
        self._buckets[ip] = (tokens - 1, now)
        return True

    def _sweep(self, now: float, rate: float, burst: float) -> None:
        """Forget IPs whose bucket has refilled: same as never seen."""
        self._buckets = {
            ip: (tokens, then)
            for ip, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * rate < burst
        }
