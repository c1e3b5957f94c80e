"""Relay locations: where the HTTP push relay listens and whom it serves.

One entry of the ``relay-locations`` setting becomes a ``Location``.  Each is
checked once, at start: a bad pattern, an unknown app or an open location
that cannot tell which app it serves stops the server with one line, rather
than misrouting requests later (issue 12).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pushd.history import Retention

DEFAULT_RETENTION = Retention(100, 3600.0)

# Publishers prove an app's secret like the REST API; subscribers identify
# like every other transport (key, token, origin).  "none" opens a location.
AUTH_MODES = ("app", "none")


@dataclass(frozen=True)
class Location:
    kind: str  # "publisher" or "subscriber"
    pattern: re.Pattern
    polling: str = "long"
    create_on_post: bool = True
    retention: Retention = DEFAULT_RETENTION
    auth: str = "app"
    app: str | None = None  # the one app this location serves; None: the caller's

    @property
    def open(self) -> bool:
        return self.auth == "none"


DEFAULT_LOCATIONS = (
    {"type": "subscriber", "prefix": "/subscriber/"},
    {"type": "publisher", "prefix": "/publisher/"},
)

_KNOWN = {"type", "prefix", "url", "polling", "create_on_post", "store", "auth", "app"}


def location_from_mapping(raw: Any) -> Location:
    """One entry of ``relay-locations``; ValueError says what is wrong."""
    if not isinstance(raw, dict) or set(raw) - _KNOWN:
        raise ValueError(
            "each location is a mapping of: %s" % ", ".join(sorted(_KNOWN))
        )
    kind = raw.get("type")
    if kind not in ("publisher", "subscriber"):
        raise ValueError("location type must be publisher or subscriber")
    polling = raw.get("polling", "long")
    if polling not in ("long", "interval"):
        raise ValueError("polling must be long or interval")
    create = raw.get("create_on_post", True)
    if not isinstance(create, bool):
        raise ValueError("create_on_post must be true or false")
    auth = raw.get("auth", "app")
    if auth not in AUTH_MODES:
        raise ValueError("auth must be app (credentials required) or none")
    app = raw.get("app")
    if app is not None and (not isinstance(app, str) or not app):
        raise ValueError("app must be the id of a configured app")
    return Location(kind, _pattern(raw), polling, create, _retention(raw), auth, app)


def _pattern(raw: dict) -> re.Pattern:
    if "url" in raw:
        try:
            pattern = re.compile(raw["url"])
        except (re.error, TypeError) as e:
            raise ValueError(
                "location url %r is not a valid pattern: %s" % (raw.get("url"), e)
            ) from None
        if pattern.groups != 1:
            raise ValueError(
                "location url %r must have exactly one group, the channel id"
                % raw["url"]
            )
        return pattern
    if isinstance(raw.get("prefix"), str) and raw["prefix"].startswith("/"):
        return re.compile(re.escape(raw["prefix"]) + "(.+)")
    raise ValueError("a location needs url (a pattern) or prefix (starting with /)")


def _retention(raw: dict) -> Retention:
    store = raw.get("store", {})
    if not isinstance(store, dict) or set(store) - {"size", "ttl"}:
        raise ValueError("store is {size: N, ttl: SECONDS}")
    size, ttl = store.get("size", 100), store.get("ttl", 3600)
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or size < 1
        or isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or ttl <= 0
    ):
        raise ValueError(
            "store size must be a whole number >= 1 and ttl positive seconds"
        )
    return Retention(size, float(ttl))


def default_locations() -> tuple[Location, ...]:
    return tuple(location_from_mapping(raw) for raw in DEFAULT_LOCATIONS)


def check_locations(locations: tuple[Location, ...], app_ids: list[str]) -> None:
    """Locations must name configured apps, and an open location must know
    its app: without credentials nothing else says which app it acts for."""
    for location in locations:
        where = "relay location %s" % location.pattern.pattern
        if location.app is not None and location.app not in app_ids:
            raise ValueError("%s: no app %r is configured" % (where, location.app))
        if location.open and location.app is None and len(app_ids) != 1:
            raise ValueError(
                "%s has auth: none; with several apps it must name its app" % where
            )
