"""The start-up summary: one log block that tells an operator what this node
is and where to point a client, so the first minute needs no docs."""

from __future__ import annotations

import re
from typing import Any


def _base_urls(description: str, port: Any) -> tuple[str, str]:
    """(http base, ws base) for one listener."""
    address = port.getHost() if port is not None else None
    host = getattr(address, "host", None) or "localhost"
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    if ":" in host:
        host = "[%s]" % host
    secure = description.split(":", 1)[0] in ("ssl", "tls")
    where = "%s:%s" % (host, getattr(address, "port", "?"))
    if getattr(address, "port", None) is None:  # UNIX sockets and the like
        where = description
    return (
        "%s://%s" % ("https" if secure else "http", where),
        "%s://%s" % ("wss" if secure else "ws", where),
    )


def _limit(value: Any) -> str:
    return str(value) if value else "off"


def summary_lines(config: Any, backend: str, apps: list, listeners: list) -> list[str]:
    """``backend``: its NAME[:args] as configured; ``listeners``: (endpoint
    description, listening port or None)."""
    lines = ["pushd is ready"]
    for description, port in listeners:
        http, ws = _base_urls(description, port)
        lines.append("  listening on %s" % description)
        lines.append(
            "    try: %s/ws  %s/sse?channel=NAME  %s/pushd.js  %s/api/openapi.json"
            % (ws, http, http, http)
        )
        lines.append(
            "    operators: %s/health  %s/metrics  %s/api/stats" % (http, http, http)
        )
    lines.append("  backend: %s" % re.sub(r"password=[^:]*", "password=...", backend))
    for app in apps:
        lines.append(
            "  app %s: %s, %s"
            % (
                app.id,
                "clients need key %s" % app.key if app.key else "no client key needed",
                "anonymous clients allowed" if app.anonymous else "user token required",
            )
        )
    rules = config.history_rules()
    lines.append(
        "  history: %s"
        % (
            ", ".join(
                "%s (%d messages, %gs)" % (r.pattern, r.retention.size, r.retention.ttl)
                for r in rules
            )
            if rules
            else "none kept"
        )
    )
    relay = config.relay_locations
    lines.append(
        "  relay: %s"
        % (
            "default /publisher/ and /subscriber/"
            if relay is None
            else ", ".join("%s %s" % (loc.kind, loc.pattern.pattern) for loc in relay)
            or "off"
        )
    )
    lines.append(
        "  limits: connections %s, per app %s, per IP %s, connects/s per IP %s; "
        "%d subscriptions per connection, %d-byte messages, %d-byte send queue"
        % (
            _limit(config.max_connections),
            _limit(config.max_connections_per_app),
            _limit(config.max_connections_per_ip),
            _limit(config.connect_rate_per_ip),
            config.max_subscriptions,
            config.max_message_size,
            config.send_queue_bytes,
        )
    )
    lines.append(
        "  metrics: %s"
        % (
            "/metrics with the admin-secret"
            if config.admin_secret
            else "off (set admin-secret to enable /metrics)"
        )
    )
    return lines
