"""Settings: one table shared by the command line and the YAML config file.

Every setting has the same name in both places (``--max-subscriptions 50`` on
the command line is ``max-subscriptions: 50`` in the file), one default and
one validator, so the two can never drift apart.  Command-line values win
over the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
_locations = _list_of("locations", "pushd.transports.relay.location_from_mapping")


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    coerce: Callable[[Any], Any]
    doc: str
    short: str | None = None
    flag: bool = False
    file_only: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "listen",
        ("tcp:8000",),
        _str_list,
        "Twisted endpoint(s) to listen on, e.g. tcp:8000:interface=127.0.0.1 "
        "(repeat the option, or a list in the file).",
        "l",
    ),
    Setting(
        "backend",
        "memory",
        _str,
        "Backend as NAME[:key=value:...]; see --help-backends.",
        "b",
    ),
    Setting(
        "client-key",
        None,
        _optional_str,
        "Key browsers pass as ws://HOST/ws?key=...; unset: no key needed.",
    ),
    Setting(
        "api-secret",
        None,
        _optional_str,
        "Secret for the REST API (Authorization: Bearer ...); unset: a random "
        "one is generated at start and logged.",
    ),
    Setting(
        "ping-interval",
        30.0,
        _non_negative_float,
        "Seconds between WebSocket pings to each client; 0 disables them.",
    ),
    Setting(
        "sse-heartbeat",
        15.0,
        _positive_float,
        "Seconds between SSE comment lines that keep proxies from closing the stream.",
    ),
    Setting(
        "ping-timeout",
        10.0,
        _positive_float,
        "Seconds to wait for a pong before dropping the connection.",
    ),
    Setting(
        "max-message-size",
        65536,
        _positive_int,
        "Largest WebSocket frame from a client and largest REST body, in bytes.",
    ),
    Setting(
        "max-subscriptions",
        100,
        _positive_int,
        "Most channels one connection may subscribe to.",
    ),
    Setting(
        "max-channels-per-publish",
        100,
        _positive_int,
        "Most channels one REST publish may name.",
    ),
    Setting(
        "send-queue-bytes",
        1048576,
        _positive_int,
        "Bytes a slow client may fall behind before it is disconnected (4109).",
    ),
    Setting(
        "client-rate",
        20.0,
        _positive_float,
        "Frames per second a client may send, on average.",
    ),
    Setting(
        "client-burst",
        100,
        _positive_int,
        "Frames a client may send at once above client-rate.",
    ),
    Setting(
        "allowed-origins",
        ("*",),
        _str_list,
        "Origins allowed to open WebSockets (comma-separated patterns; * is any).",
    ),
    Setting(
        "anonymous",
        True,
        _bool,
        "Allow connections without a user token (default app).",
        flag=True,
    ),
    Setting(
        "client-events",
        False,
        _bool,
        "Let clients send client-* events on private and presence channels "
        "(default app).",
        flag=True,
    ),
    Setting(
        "signature-window",
        300.0,
        _positive_float,
        "Seconds a signed REST request stays valid (clock skew allowed).",
    ),
    Setting(
        "apps",
        (),
        _apps,
        "Several apps, each with id, key, secret[, client-events, anonymous]; "
        "replaces client-key/api-secret.",
        file_only=True,
    ),
    Setting(
        "history",
        (),
        _history,
        "Channels that keep history: rules {channel: PATTERN, size: N, ttl: SECONDS}.",
        file_only=True,
    ),
    Setting(
        "webhooks",
        (),
        _webhooks,
        "URLs that receive events: {url, events: [...], app: ID}.",
        file_only=True,
    ),
    Setting(
        "webhook-queue",
        1000,
        _positive_int,
        "Webhook events that may wait (queued, in flight, retrying); past it "
        "new events are dropped and counted.",
    ),
    Setting(
        "webhook-timeout",
        5.0,
        _positive_float,
        "Seconds a webhook receiver has to answer.",
    ),
    Setting(
        "webhook-retries",
        5,
        _positive_int,
        "Retries of a failed webhook, with exponential backoff from 0.5 s.",
    ),
    Setting(
        "webhook-vacate-delay",
        2.0,
        _non_negative_float,
        "Seconds a channel must stay empty before channel_vacated is sent.",
    ),
    Setting(
        "relay-locations",
        None,
        _locations,
        "HTTP push relay locations (hbpush/nchan): {type, prefix|url, polling, "
        "create_on_post, store}; default /subscriber/ and /publisher/.",
        file_only=True,
    ),
    Setting(
        "offline-queue",
        100,
        _positive_int,
        "Messages kept per offline user (messages to the user and on channels "
        "it keeps); the oldest go first.",
    ),
    Setting(
        "offline-ttl",
        86400.0,
        _positive_float,
        "Seconds a message waits for an offline user.",
    ),
    Setting("access-log", False, _bool, "Log every HTTP request.", flag=True),
    Setting(
        "demo",
        False,
        _bool,
        "Serve the chat demo at /demo/ with its own demo app and a token "
        "endpoint that mints user tokens for anyone (never in production).",
        flag=True,
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    listen: tuple[str, ...] = ("tcp:8000",)
    backend: str = "memory"
    client_key: str | None = None
    api_secret: str | None = None
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    sse_heartbeat: float = 15.0
    max_message_size: int = 65536
    max_subscriptions: int = 100
    max_channels_per_publish: int = 100
    send_queue_bytes: int = 1048576
    client_rate: float = 20.0
    client_burst: int = 100
    allowed_origins: tuple[str, ...] = ("*",)
    anonymous: bool = True
    client_events: bool = False
    signature_window: float = 300.0
    apps: tuple = ()
    history: tuple = ()
    webhooks: tuple = ()
    webhook_queue: int = 1000
    webhook_timeout: float = 5.0
    webhook_retries: int = 5
    webhook_vacate_delay: float = 2.0
    relay_locations: tuple | None = None
    offline_queue: int = 100
    offline_ttl: float = 86400.0
    access_log: bool = False
    demo: bool = False

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
