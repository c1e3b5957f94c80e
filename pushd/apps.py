"""Apps: the tenants of one pushd (Pusher's and Pushi's model).

Each app has an id, a public key (what browsers send), a secret (what its
backend signs with) and its own channel and user namespace: the hub keys
every channel by ``app id/channel``, so nothing crosses from one app to
another.  With no ``apps`` configured there is one app, ``default``, made
from ``client-key`` and ``api-secret``.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

from pushd.message import channel_key

_ID_RE = re.compile(r"[A-Za-z0-9_\-.]{1,64}")
_PUSHER_ID_RE = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class App:
    id: str
    key: str | None
    secret: str
    client_events: bool = False
    anonymous: bool = True
    # Pusher's numeric app id (/apps/{id}/... in its HTTP API); None: the
    # Pusher API names the app by ``id`` instead (docs/pusher.md).
    pusher_id: str | None = None

    def channel_key(self, channel: str) -> str:
        return channel_key(self.id, channel)


def app_from_mapping(raw: Any) -> App:
    """Validate one entry of the ``apps`` setting; ValueError says what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("each app is a mapping with id, key and secret")
    unknown = set(raw) - {
        "id",
        "key",
        "secret",
        "client-events",
        "anonymous",
        "pusher-id",
    }
    if unknown:
        raise ValueError(
            "unknown app field(s): %s" % ", ".join(sorted(map(str, unknown)))
        )
    app_id, key, secret = raw.get("id"), raw.get("key"), raw.get("secret")
    if not isinstance(app_id, str) or not _ID_RE.fullmatch(app_id):
        raise ValueError("app id must be 1-64 characters of A-Z a-z 0-9 _ - .")
    for name, value in (("key", key), ("secret", secret)):
        if not isinstance(value, str) or len(value) < 8:
            raise ValueError(
                "app %s: %s must be a string of at least 8 characters" % (app_id, name)
            )
    flags = {}
    for name in ("client-events", "anonymous"):
        if name in raw:
            if not isinstance(raw[name], bool):
                raise ValueError("app %s: %s must be true or false" % (app_id, name))
            flags[name.replace("-", "_")] = raw[name]
    pusher_id = raw.get("pusher-id")
    if pusher_id is not None:
        if isinstance(pusher_id, bool) or not _PUSHER_ID_RE.fullmatch(str(pusher_id)):
            raise ValueError("app %s: pusher-id must be a number" % app_id)
        pusher_id = str(pusher_id)
    return App(app_id, key, str(secret), pusher_id=pusher_id, **flags)


class AppRegistry:
    def __init__(self, apps: list[App]) -> None:
        if not apps:
            raise ValueError("no apps configured")
        self._by_id = {a.id: a for a in apps}
        self._by_key = {a.key: a for a in apps if a.key is not None}
        self._by_pusher_id = {a.pusher_id: a for a in apps if a.pusher_id is not None}
        if (
            len(self._by_id) != len(apps)
            or len(self._by_key) != sum(1 for a in apps if a.key is not None)
            or len(self._by_pusher_id) != sum(1 for a in apps if a.pusher_id)
        ):
            raise ValueError("app ids, pusher ids and keys must be unique")
        # The one app without a key (the default app of a single-app setup,
        # also when --demo adds its own app) takes any key no other app has.
        keyless = [a for a in apps if a.key is None]
        self._open = keyless[0] if len(keyless) == 1 else None

    def __iter__(self):
        return iter(self._by_id.values())

    def by_id(self, app_id: str) -> App | None:
        return self._by_id.get(app_id)

    def by_pusher_id(self, app_id: str) -> App | None:
        """The app Pusher's HTTP API names: by its numeric Pusher id, or,
        for apps without one, by its pushd id; a single app without one
        answers to any id (Pusher's libraries insist on a number)."""
        if len(self._by_id) == 1 and not self._by_pusher_id:
            return next(iter(self._by_id.values()))
        app = self._by_pusher_id.get(app_id)
        if app is None:
            app = self._by_id.get(app_id)
            if app is not None and app.pusher_id is not None:
                return None  # it has a Pusher id: only that names it there
        return app

    def by_key(self, key: str | None) -> App | None:
        """The app a client key names; a single keyless app takes any other key."""
        found = None
        if key:
            for app_key, app in self._by_key.items():
                if hmac.compare_digest(app_key.encode(), key.encode()):
                    found = app
        return found or self._open

    def by_secret(self, secret: bytes) -> App | None:
        """The app whose secret this is; every app is compared, in constant time."""
        found = None
        for app in self._by_id.values():
            if hmac.compare_digest(app.secret.encode(), secret) and found is None:
                found = app
        return found
