"""Finding and building backends through twisted.plugin.

This module is imported by ``twisted/plugins/pushd_plugin.py`` on every
``twistd`` run, so it must stay cheap: no reactor, no Autobahn, no Redis.
"""

from __future__ import annotations

from twisted.plugin import IPlugin, getPlugins
from twisted.python.reflect import namedAny
from zope.interface import implementer

from pushd.interfaces import IBackendFactory, IBackendLifecycle


@implementer(IPlugin, IBackendFactory)
class LazyBackendFactory:
    """A backend factory that imports its implementation only when used.

    The same trick as ``twisted.application.service.ServiceMaker``: listing
    backends for ``--help-backends`` must not import txredisapi or sqlite.
    """

    def __init__(self, name: str, maker: str, description: str) -> None:
        self.name = name
        self.description = description
        self._maker = maker

    def make_backend(self, reactor: object, argstring: str) -> IBackendLifecycle:
        return namedAny(self._maker)(reactor, argstring)


def parse_argstring(argstring: str) -> dict[str, str]:
    """Split ``key=value:key=value`` (the endpoint-string convention)."""
    args: dict[str, str] = {}
    if not argstring:
        return args
    for part in argstring.split(":"):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError("expected key=value, got %r" % (part,))
        args[key.strip()] = value
    return args


def backend_factories() -> dict[str, IBackendFactory]:
    """Every installed backend factory, by name."""
    return {f.name: f for f in getPlugins(IBackendFactory)}


def make_backend(reactor: object, spec: str) -> IBackendLifecycle:
    """Build the backend named by ``NAME[:ARGS]``; ValueError says what is wrong."""
    name, _, argstring = spec.partition(":")
    factories = backend_factories()
    if name not in factories:
        raise ValueError(
            "unknown backend %r (installed: %s)" % (name, ", ".join(sorted(factories)))
        )
    try:
        return factories[name].make_backend(reactor, argstring)
    except ValueError as e:
        raise ValueError("backend %s: %s" % (name, e)) from None
