"""``twistd pushd``: command-line options and the service they build."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import replace
from typing import Any

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

import pushd
from pushd.backends import backend_factories, make_backend
from pushd.config import SETTINGS, Config, ConfigError, load_file
from pushd.hub import Hub, require_features
from pushd.interfaces import IMultiProcess
from pushd.service import ListenService, PushService
from pushd.worker_child import ParentWatch, inherited_endpoints, worker_info

_log = Logger()


def _show(default: Any) -> Any:
    if isinstance(default, tuple):
        return ",".join(default)
    return default


class Options(usage.Options):
    """Every setting is an option; ``--config FILE`` supplies the rest."""

    synopsis = "[options]"
    longdesc = (
        "Real-time push server. Settings come from the command line and "
        "from --config FILE (YAML, same names); the command line wins."
    )
    optFlags = [
        ["help-backends", None, "List the installed backends and exit."],
        ["version", None, "Print pushd's version and exit."],
    ] + [[s.name, s.short, s.doc] for s in SETTINGS if s.flag and s.name != "anonymous"]
    optParameters = [
        ["config", "c", None, "YAML config file (see etc/pushd.yaml)."],
        ["port", "p", None, "Port to listen on; shorthand for --listen tcp:PORT."],
    ] + [
        [s.name, s.short, _show(s.default), s.doc]
        for s in SETTINGS
        if not s.flag and not s.file_only and s.name != "listen"
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.explicit: set[str] = set()
        self._recording = True

    def __setitem__(self, key: str, value: Any) -> None:
        if getattr(self, "_recording", False):
            self.explicit.add(key)
        super().__setitem__(key, value)

    def parseOptions(self, options: Any = None) -> None:
        """Fail with one line on stderr, not twistd's full usage dump: a
        systemd journal or a CI log should show exactly what is wrong."""
        # What the supervisor of --workers passes on to each worker.
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write("pushd: error: %s\n" % e)
            raise SystemExit(2) from None

    def opt_listen(self, endpoint: str) -> None:
        """Twisted endpoint to listen on, e.g. tcp:8000:interface=127.0.0.1
        (repeatable) [default: tcp:8000]."""
        self["listen"].append(endpoint)
        self.explicit.add("listen")

    opt_l = opt_listen

    def opt_no_anonymous(self) -> None:
        """Refuse connections without a user token (default app)."""
        self["anonymous"] = False

    def opt_help_backends(self) -> None:
        for name, factory in sorted(backend_factories().items()):
            sys.stdout.write("%-12s %s\n" % (name, factory.description))
        raise SystemExit(0)

    def opt_version(self) -> None:
        sys.stdout.write("pushd %s\n" % pushd.__version__)
        raise SystemExit(0)

    def postOptions(self) -> None:
        self._recording = False
        try:
            self.config = self._build_config()
            # Validate only, no I/O: the arguments, and that the backend has
            # every feature the configuration needs.
            backend = make_backend(None, self.config.backend)
            require_features(backend, self.config)
            _check_relay(self.config)
            check_workers(self.config, backend)
        except (ConfigError, ValueError) as e:
            raise usage.UsageError(str(e)) from None
        if worker_info() is not None:
            return  # a worker adopts the sockets its supervisor opened
        for description in self.config.listen:
            _check_endpoint(description)

    def _build_config(self) -> Config:
        """File values, then command-line values on top, each validated where
        it came from so the error names the culprit."""
        file_values: dict[str, Any] = {}
        if self["config"]:
            file_values = {
                str(k).replace("_", "-"): v
                for k, v in load_file(self["config"]).items()
            }
            Config.from_mapping(file_values, self["config"])
        cli_values = {s.name: self[s.name] for s in SETTINGS if s.name in self.explicit}
        if self["port"] is not None:
            port = self["port"]
            if not str(port).isdigit() or not 0 <= int(port) <= 65535:
                raise ConfigError(
                    "--port takes a number from 0 to 65535, got %r" % port
                )
            cli_values["listen"] = [
                *list(cli_values.get("listen", [])),
                "tcp:%s" % port,
            ]
        Config.from_mapping(cli_values, "the command line")
        config = Config.from_mapping({**file_values, **cli_values})
        if config.admin_secret and any(
            app.secret == config.admin_secret for app in config.app_list()
        ):
            raise ConfigError("admin-secret must differ from every app's secret")
        return config


_SHAREABLE = ("tcp", "tcp6", "unix", "systemd")


def check_workers(config: Config, backend: object) -> None:
    """``workers`` > 1 needs a backend shared by processes and listeners
    whose sockets can be handed to them (ValueError otherwise)."""
    if config.workers == 1:
        return
    if not IMultiProcess.providedBy(backend):
        raise ValueError(
            "workers: %d needs a backend shared by processes (redis); "
            "backend %s keeps its state in one process"
            % (config.workers, config.backend.split(":", 1)[0])
        )
    for description in config.listen:
        kind = description.split(":", 1)[0].strip().lower()
        if kind not in _SHAREABLE:
            raise ValueError(
                "workers: %d cannot share a %s: listener (%s); use tcp, tcp6, "
                "unix or systemd (terminate TLS in front of pushd)"
                % (config.workers, kind, description)
            )


def _check_endpoint(description: str) -> None:
    """Parse a listen endpoint (no reactor, no socket) or raise UsageError.

    Twisted's ``systemd:`` parser indexes the inherited descriptors, so
    outside systemd it fails with ``list index out of range``; say what is
    really wrong instead.
    """
    try:
        serverFromString(None, description)
    except (IndexError, KeyError) as e:
        if description.split(":", 1)[0] == "systemd":
            raise usage.UsageError(
                "cannot listen on %r: %s" % (description, _systemd_problem())
            ) from None
        raise usage.UsageError(
            "bad listen endpoint %r: %s" % (description, e)
        ) from None
    except Exception as e:
        raise usage.UsageError(
            "bad listen endpoint %r: %s" % (description, e)
        ) from None


def _systemd_problem() -> str:
    if "LISTEN_FDS" in os.environ and "LISTEN_FDNAMES" not in os.environ:
        # Twisted ignores sockets without names; systemd (227+) always names
        # them, systemd-socket-activate only with --fdname.
        return "the sockets passed have no names (LISTEN_FDNAMES); Twisted needs them"
    return (
        "no socket was passed by systemd (start pushd through pushd.socket, "
        "or listen on tcp:PORT)"
    )


def _check_relay(config: Config) -> None:
    """Relay locations name configured apps (ValueError otherwise)."""
    from pushd.transports.relay_locations import check_locations, default_locations

    locations = config.relay_locations
    if locations is None:
        locations = default_locations()
    check_locations(locations, [app.id for app in config.app_list()])


def makeService(options: Any, reactor: Any = None) -> Service:
    """Build the service tree: backend, hub, site, one listener per endpoint;
    with ``workers`` > 1, the supervisor of that many such trees, each in a
    process of its own (pushd.workers)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config: Config = options.config
    worker = worker_info()
    if worker is not None and worker.api_secret:
        config = replace(config, api_secret=worker.api_secret)
    if not config.api_secret and not config.apps:
        # With `apps`, every app has its own secret and api-secret is unused.
        config = _with_generated_secret(config)
    if worker is None and config.workers > 1:
        from pushd.workers import WorkerSupervisor

        return WorkerSupervisor(
            reactor, config, options.argv, config.api_secret, config.backend
        )
    from pushd.web import make_site  # imports Autobahn: only when really starting

    backend = make_backend(reactor, config.backend)
    hub = Hub(backend, reactor, config)
    service = PushService(reactor, hub, worker.index if worker else None)
    site = make_site(hub, config)
    if worker is None:
        endpoints = [
            serverFromString(reactor, with_backlog(d, config.listen_backlog))
            for d in config.listen
        ]
    else:
        endpoints = inherited_endpoints(reactor, len(config.listen))
        ParentWatch(reactor, worker.parent).setServiceParent(service)
    for description, endpoint in zip(config.listen, endpoints, strict=True):
        ListenService(reactor, description, endpoint, site).setServiceParent(service)
    return service


_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


def with_backlog(description: str, backlog: int) -> str:
    """``description`` with ``backlog=`` added where its endpoint type takes
    one and it does not set its own.

    Twisted listens with a backlog of 50: 5,000 clients reconnecting at once
    overflowed it and took 34-44 s to get back, against 4.5 s with 4096
    (issue 11).
    """
    kind, _, rest = description.partition(":")
    if kind.strip().lower() not in _BACKLOG_TYPES:
        return description
    if any(part.strip().startswith("backlog=") for part in rest.split(":")):
        return description
    return "%s:backlog=%d" % (description, backlog)


def _with_generated_secret(config: Config) -> Config:
    secret = secrets.token_urlsafe(24)
    _log.warn(
        "no api-secret configured; generated one for this run: {secret} "
        "(set api-secret in the config file to keep it stable)",
        secret=secret,
    )
    return replace(config, api_secret=secret)
