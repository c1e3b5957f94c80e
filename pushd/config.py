"""Settings: one table shared by the command line and the YAML config file.

Every setting has the same name in both places (``--max-subscriptions 50`` on
the command line is ``max-subscriptions: 50`` in the file), one default and
one validator, so the two can never drift apart.  Each is written once, as a
typed field of ``Config`` (``setting(default, validator, doc)``); the
``SETTINGS`` table the command line, the file and --help use is made from
those fields.  Command-line values win over the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import yaml


class ConfigError(ValueError):
    """A setting is wrong; the message names the setting and what is wrong."""


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _networks(value: Any) -> tuple:
    """IP addresses or CIDR networks (``10.0.0.0/8``, ``::1``)."""
    import ipaddress

    networks = []
    for item in _str_list(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError("%r is not an IP address or network" % item) from None
    return tuple(networks)


def _non_negative_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _positive_float(value: Any) -> float:
    number = _non_negative_float(value)
    if number == 0:
        raise ValueError("must be greater than 0")
    return number


def _optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, (str, int)):
        raise ValueError("expected a string")
    return str(value)


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (str, int)) for v in value
    ):
        raise ValueError("expected a list of strings")
    return tuple(str(v) for v in value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "on",
        "false",
        "no",
        "off",
    ):
        return value.lower() in ("true", "yes", "on")
    raise ValueError("expected true or false")


def _list_of(what: str, make: str) -> Callable[[Any], tuple]:
    """A validator for a list of mappings, each made by the dotted ``make``
    (imported on use, so this module does not import the whole server)."""

    def coerce(value: Any) -> tuple:
        from twisted.python.reflect import namedAny

        if not isinstance(value, (list, tuple)):
            raise ValueError("expected a list of %s" % what)
        return tuple(namedAny(make)(v) for v in value)

    return coerce


_apps = _list_of("apps (id, key, secret, ...)", "pushd.apps.app_from_mapping")
_history = _list_of("{channel, size, ttl} rules", "pushd.history.rule_from_mapping")
_webhooks = _list_of(
    "{url, events, app} webhooks", "pushd.webhooks.target_from_mapping"
)
_locations = _list_of(
    "locations", "pushd.transports.relay_locations.location_from_mapping"
)


def setting(
    default: Any,
    coerce: Callable[[Any], Any],
    doc: str,
    short: str | None = None,
    *,
    flag: bool = False,
    file_only: bool = False,
) -> Any:
    """A ``Config`` field that is also a setting (``SETTINGS``)."""
    return field(
        default=default,
        metadata={
            "coerce": coerce,
            "doc": doc,
            "short": short,
            "flag": flag,
            "file_only": file_only,
        },
    )


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    coerce: Callable[[Any], Any]
    doc: str
    short: str | None = None
    flag: bool = False
    file_only: bool = False


@dataclass(frozen=True)
class Config:
    """Every setting, typed; ``SETTINGS`` (the command line, the file,
    --help) is made from these fields, so each name, default and doc is
    written once, here."""

    listen: tuple[str, ...] = setting(
        ("tcp:8000",),
        _str_list,
        "Twisted endpoint(s) to listen on, e.g. tcp:8000:interface=127.0.0.1 "
        "(repeat the option, or a list in the file).",
        "l",
    )
    backend: str = setting(
        "memory", _str, "Backend as NAME[:key=value:...]; see --help-backends.", "b"
    )
    client_key: str | None = setting(
        None,
        _optional_str,
        "Key browsers pass as ws://HOST/ws?key=...; unset: no key needed.",
    )
    api_secret: str | None = setting(
        None,
        _optional_str,
        "Secret for the REST API (Authorization: Bearer ...); unset: a random "
        "one is generated at start and logged.",
    )
    ping_interval: float = setting(
        30.0,
        _non_negative_float,
        "Seconds between WebSocket pings to each client; 0 disables them.",
    )
    sse_heartbeat: float = setting(
        15.0,
        _positive_float,
        "Seconds between SSE comment lines that keep proxies from closing the stream.",
    )
    ping_timeout: float = setting(
        10.0,
        _positive_float,
        "Seconds to wait for a pong before dropping the connection.",
    )
    max_message_size: int = setting(
        65536,
        _positive_int,
        "Largest WebSocket frame from a client, largest REST body and largest "
        "message on the publisher WebSocket, in bytes.",
    )
    max_json_depth: int = setting(
        64,
        _positive_int,
        "Deepest nesting of arrays and objects accepted in client and REST "
        "JSON; deeper input is refused (invalid_json / 400).",
    )
    max_ref_bytes: int = setting(
        256,
        _positive_int,
        "Largest 'ref' a client may attach to a frame (it is echoed back), "
        "as encoded JSON bytes.",
    )
    max_pending_bytes: int = setting(
        262144,
        _positive_int,
        "Bytes of a client's frames that may wait while earlier ones wait on "
        "the backend; past it a frame is dropped (rate_limited).",
    )
    http_header_timeout: float = setting(
        10.0,
        _positive_float,
        "Seconds a client has to send a request's headers, from the "
        "connection (or the request's first byte); then 408 and close.",
    )
    http_body_timeout: float = setting(
        30.0,
        _positive_float,
        "Seconds a client has to send a request's body once its headers are "
        "in; then 408 and close.",
    )
    listen_backlog: int = setting(
        4096,
        _positive_int,
        "Listen queue length of every listener pushd creates (the kernel caps "
        "it at net.core.somaxconn); an endpoint's own backlog= wins.",
    )
    workers: int = setting(
        1,
        _positive_int,
        "Processes serving the listeners: N > 1 starts N worker processes "
        "that share each listening socket, restarted if they die (needs a "
        "backend shared by processes: redis); 1: this process serves.",
    )
    max_subscriptions: int = setting(
        100, _positive_int, "Most channels one connection may subscribe to."
    )
    max_channels_per_publish: int = setting(
        100, _positive_int, "Most channels one REST publish may name."
    )
    send_queue_bytes: int = setting(
        1048576,
        _positive_int,
        "Bytes a slow client may fall behind before it is disconnected (4109).",
    )
    flush_window: float = setting(
        0.0,
        _non_negative_float,
        "Seconds between two flushes of queued WebSocket frames under load; a "
        "frame after a quiet spell goes out at once (0: flush every reactor "
        "iteration).",
    )
    flush_slice: int = setting(
        100,
        _non_negative_int,
        "WebSocket connections written per reactor iteration in a flush; "
        "between slices pushd reads new requests, whose messages join the "
        "writes not yet made (0: a flush in one go).",
    )
    flush_copy_wait: float = setting(
        0.002,
        _non_negative_float,
        "Seconds a WebSocket flush may wait at a time (before it starts or "
        "between two slices; five times that in all) for this node's own "
        "publishes on their way back from Redis, so they share its writes "
        "(0: never wait; the memory backend never waits).",
    )
    client_rate: float = setting(
        20.0, _positive_float, "Frames per second a client may send, on average."
    )
    client_burst: int = setting(
        100, _positive_int, "Frames a client may send at once above client-rate."
    )
    allowed_origins: tuple[str, ...] = setting(
        ("*",),
        _str_list,
        "Origins allowed to open WebSockets (comma-separated patterns; * is any).",
    )
    anonymous: bool = setting(
        True, _bool, "Allow connections without a user token (default app).", flag=True
    )
    client_events: bool = setting(
        False,
        _bool,
        "Let clients send client-* events on private and presence channels "
        "(default app).",
        flag=True,
    )
    signature_window: float = setting(
        300.0,
        _positive_float,
        "Seconds a signed REST request stays valid (clock skew allowed).",
    )
    apps: tuple = setting(
        (),
        _apps,
        "Several apps, each with id, key, secret[, client-events, anonymous]; "
        "replaces client-key/api-secret.",
        file_only=True,
    )
    history: tuple = setting(
        (),
        _history,
        "Channels that keep history: rules {channel: PATTERN, size: N, ttl: SECONDS}.",
        file_only=True,
    )
    webhooks: tuple = setting(
        (),
        _webhooks,
        "URLs that receive events: {url, events: [...], app: ID}.",
        file_only=True,
    )
    webhook_queue: int = setting(
        1000,
        _positive_int,
        "Webhook events that may wait (queued, in flight, retrying); past it "
        "new events are dropped and counted.",
    )
    webhook_timeout: float = setting(
        5.0, _positive_float, "Seconds a webhook receiver has to answer."
    )
    webhook_retries: int = setting(
        5,
        _positive_int,
        "Retries of a failed webhook, with exponential backoff from 0.5 s.",
    )
    webhook_vacate_delay: float = setting(
        2.0,
        _non_negative_float,
        "Seconds a channel must stay empty before channel_vacated is sent.",
    )
    relay_locations: tuple | None = setting(
        None,
        _locations,
        "HTTP push relay locations (hbpush/nchan): {type, prefix|url, polling, "
        "create_on_post, store, app, auth}; default /subscriber/ and /publisher/.",
        file_only=True,
    )
    relay_retry_after: int = setting(
        5,
        _positive_int,
        "Seconds a waiting relay subscriber is told to wait (Retry-After with "
        "503) when the server shuts down.",
    )
    offline_queue: int = setting(
        100,
        _positive_int,
        "Messages kept per offline user (messages to the user and on channels "
        "it keeps); the oldest go first.",
    )
    offline_ttl: float = setting(
        86400.0, _positive_float, "Seconds a message waits for an offline user."
    )
    pusher_app_id: str | None = setting(
        None,
        _optional_str,
        "The default app's numeric Pusher app id (/apps/ID/... in the Pusher "
        "HTTP API); unset: a single app answers at any /apps/ID/...",
    )
    pusher_max_event_size: int = setting(
        10240,
        _positive_int,
        "Largest event data, in bytes, over the Pusher HTTP API (413 past it) "
        "and in Pusher client events.",
    )
    pusher_max_batch: int = setting(
        10, _positive_int, "Most events in one Pusher POST /batch_events."
    )
    pusher_client_event_rate: float = setting(
        10.0,
        _positive_float,
        "Client events per second one Pusher connection may send (past it: "
        "pusher:error 4301, event dropped).",
    )
    pusher_activity_timeout: int = setting(
        120,
        _positive_int,
        "Seconds of silence after which Pusher clients send pusher:ping "
        "(activity_timeout in pusher:connection_established).",
    )
    pusher_signin_timeout: float = setting(
        30.0,
        _positive_float,
        "Seconds a Pusher connection to an app with anonymous: false has to "
        "pusher:signin before it is closed (4009).",
    )
    idempotency_window: float = setting(
        300.0,
        _positive_float,
        "Seconds a publish's Idempotency-Key is remembered: a retry with the "
        "same key within it gets the first answer and publishes nothing.",
    )
    access_log: bool = setting(False, _bool, "Log every HTTP request.", flag=True)
    http_fast_path: bool = setting(
        True,
        _bool,
        "Serve keep-alive publishes (POST /api/channels/{ch}/messages, "
        "/api/messages, /api/batch) on pushd's own HTTP/1.1 front door; "
        "false: every request through Twisted Web.",
    )
    demo: bool = setting(
        False,
        _bool,
        "Serve the chat demo at /demo/ with its own demo app and a token "
        "endpoint that mints user tokens for anyone (never in production).",
        flag=True,
    )

    # -- operations (docs/operations.md) ---------------------------------
    admin_secret: str | None = setting(
        None,
        _optional_str,
        "Operator credential for /metrics and every app's /api/stats "
        "(Authorization: Bearer ...); must differ from every app secret. "
        "Unset: /metrics is refused, /api/stats shows an app only itself.",
    )
    max_batch: int = setting(
        100, _positive_int, "Most messages one POST /api/batch may carry."
    )
    publisher_max_frame: int = setting(
        1048576,
        _positive_int,
        "Largest frame a publisher WebSocket (GET /api/publish) may send, in "
        "bytes; past it the connection is closed (1009).",
    )
    publisher_max_items: int = setting(
        1000,
        _positive_int,
        "Most messages one publisher WebSocket frame may carry (more: the "
        "frame is refused, nothing in it published).",
    )
    publisher_max_age: float = setting(
        3600.0,
        _positive_float,
        "Seconds a publisher WebSocket lives after its authenticated "
        "handshake; then pushd answers the frame in progress and closes "
        "(4111): reconnecting proves the credentials again.",
    )
    max_connections: int = setting(
        0,
        _non_negative_int,
        "Client connections (WebSocket + SSE) this node takes at most; past "
        "it: close 4100 / HTTP 503. 0: no limit.",
    )
    max_connections_per_app: int = setting(
        0,
        _non_negative_int,
        "Client connections one app may hold on this node; 0: no limit.",
    )
    max_connections_per_ip: int = setting(
        0,
        _non_negative_int,
        "Client connections one client IP may hold on this node; 0: no limit.",
    )
    connect_rate_per_ip: float = setting(
        0.0,
        _non_negative_float,
        "New connections per second one client IP may open, on average; 0: no limit.",
    )
    connect_burst_per_ip: int = setting(
        20,
        _positive_int,
        "New connections one client IP may open at once above connect-rate-per-ip.",
    )
    trusted_proxies: tuple = setting(
        (),
        _networks,
        "Reverse proxies (IPs or CIDRs) whose X-Forwarded-For / Forwarded "
        "header names the client, for limits, logs and metrics.",
    )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "") -> Config:
        """Validate ``values`` (setting name -> raw value) into a Config.

        ``source`` is said in error messages so a user knows whether the
        command line or which file is wrong.
        """
        where = " in %s" % source if source else ""
        kwargs: dict[str, Any] = {}
        for raw_name, raw_value in values.items():
            name = str(raw_name).replace("_", "-")
            setting = _BY_NAME.get(name)
            if setting is None:
                raise ConfigError("unknown setting %r%s" % (raw_name, where))
            try:
                kwargs[name.replace("-", "_")] = setting.coerce(raw_value)
            except (TypeError, ValueError) as e:
                raise ConfigError(
                    "bad value for %s%s: %r (%s)" % (name, where, raw_value, e)
                ) from None
        return cls(**kwargs)

    def app_list(self) -> list:
        """The configured apps, or the default app made from the top-level keys."""
        from pushd.apps import App

        if self.apps:
            apps = list(self.apps)
        else:
            apps = [
                App(
                    "default",
                    self.client_key,
                    self.api_secret or "",
                    self.client_events,
                    self.anonymous,
                    self.pusher_app_id,
                )
            ]
        if self.demo:
            from pushd.demo import demo_app

            apps.append(demo_app())
        return apps

    def history_rules(self) -> tuple:
        """The configured history rules, then the demo's own (with --demo)."""
        if not self.demo:
            return self.history
        from pushd.demo import DEMO_HISTORY

        return self.history + DEMO_HISTORY


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.name.replace("_", "-"), f.default, **f.metadata) for f in fields(Config)
)
_BY_NAME = {s.name: s for s in SETTINGS}


def load_file(path: str) -> dict[str, Any]:
    """Read a YAML config file into a raw mapping; ConfigError on any problem."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(
            "cannot read config file %s: %s" % (path, e.strerror)
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = " at line %d" % (mark.line + 1) if mark is not None else ""
        raise ConfigError("config file %s is not valid YAML%s" % (path, at)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config file %s must be a mapping of setting: value" % path)
    return data
