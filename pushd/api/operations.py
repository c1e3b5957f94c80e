"""What an operator asks a node: ``/metrics`` (Prometheus) and
``/api/stats`` (JSON), docs/operations.md.

The operator credential is ``admin-secret``, distinct from every app's
secret.  ``/metrics`` carries every app's figures, so it is for the operator
only; ``/api/stats`` shows the operator everything and an app (its own
secret, or a signed request) only itself.
"""

from __future__ import annotations

import hmac
from typing import Any

from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource

from pushd.api import authenticate, error_response
from pushd.errors import Forbidden, Unauthorized


def _bearer(request: Any) -> bytes | None:
    header = request.getHeader(b"authorization") or b""
    scheme, _, token = header.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token.strip() else None


def is_operator(request: Any, admin_secret: str | None) -> bool:
    token = _bearer(request)
    return bool(
        admin_secret
        and token is not None
        and hmac.compare_digest(token, admin_secret.encode())
    )


class MetricsResource(Resource):
    """``GET /metrics`` in Prometheus' text format, for the operator only.

    Rendered in the reactor thread with prometheus_client's encoder, not
    through its Twisted resource: that one is a WSGI app run in a thread
    pool, which would read the hub's live state from another thread while
    the reactor changes it.
    """

    isLeaf = True

    def __init__(self, hub: Any) -> None:
        super().__init__()
        self._hub = hub

    def render_GET(self, request):
        secret = self._hub.config.admin_secret
        if not is_operator(request, secret):
            if not secret:
                error = Forbidden("metrics are off: set admin-secret to enable them")
            elif _bearer(request) is None:
                error = Unauthorized("'Authorization: Bearer <admin-secret>' needed")
            else:
                error = Forbidden("wrong admin secret")
            return error_response(request, error)
        encoder, content_type = choose_encoder(
            (request.getHeader(b"accept") or b"").decode("ascii", "replace")
        )
        body = encoder(self._hub.metrics.registry)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body


def _node_figures(hub: Any, app_id: str | None) -> dict:
    sessions = [
        s for s in hub.sessions.values() if app_id is None or s.app.id == app_id
    ]
    by_transport: dict[str, int] = {}
    for session in sessions:
        name = session.transport_name
        by_transport[name] = by_transport.get(name, 0) + 1
    return {
        "id": hub.node_id,
        "connections": len(sessions),
        "connections_by_transport": by_transport,
        "subscriptions": sum(len(s.subscriptions) for s in sessions),
    }


async def _app_figures(hub: Any, app: Any) -> dict:
    occupied = await hub.occupied_channels(app)
    return {"channels": len(occupied), "users_online": await hub.users_online(app)}


async def stats(hub: Any, request: Any) -> dict:
    """The figures the caller may see (docs/operations.md)."""
    if is_operator(request, hub.config.admin_secret):
        node = _node_figures(hub, None)
        node["uptime_seconds"] = round(hub.clock.seconds() - hub.started_at, 3)
        node["channels"] = hub.local_channel_count()
        node["backend"] = hub.backend_state()
        node["ready"] = hub.unready_reason() is None
        apps = {}
        for app in hub.apps:
            apps[app.id] = {
                "node": {"connections": node_connections(hub, app.id)},
                "cluster": await _app_figures(hub, app),
            }
        return {
            "node": node,
            "cluster": {"nodes": await hub.cluster_nodes()},
            "apps": apps,
        }
    app = await authenticate(request, hub)
    node = _node_figures(hub, app.id)
    cluster = await _app_figures(hub, app)
    cluster["nodes"] = len(await hub.cluster_nodes())
    return {"app": app.id, "node": node, "cluster": cluster}


def node_connections(hub: Any, app_id: str) -> int:
    return sum(1 for s in hub.sessions.values() if s.app.id == app_id)
