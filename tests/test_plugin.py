"""twistd and twisted.plugin find pushd and its backends."""

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from pushd.backends import backend_factories, make_backend
from pushd.backends.memory import MemoryBackend
from pushd.interfaces import IBackendFactory


def test_service_maker_is_found():
    """'twistd pushd' exists once pushd is installed."""
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert makers["pushd"].module == "pushd.tap"


def test_builtin_backends_are_found():
    """--backend memory, redis and sqlite are available without extra packages."""
    names = {f.name for f in getPlugins(IBackendFactory)}
    assert "memory" in names
    assert isinstance(make_backend(None, "memory"), MemoryBackend)
    assert backend_factories()["memory"].description


def test_plugin_module_stays_cheap():
    """Importing the plugin module must not pull in Autobahn or the reactor."""
    import subprocess
    import sys

    code = (
        "import sys, twisted.plugins.pushd_plugin; "
        "print(sorted(m for m in sys.modules if m.startswith(('autobahn', 'klein', "
        "'txredisapi')) or m == 'twisted.internet.reactor'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
