"""The example third-party backend under examples/ (installed by README's
test command) is found, listed, selectable, and passes the contract suite."""

import subprocess

from processes import TWISTD
from pytest_twisted import ensureDeferred
from twisted.plugin import getPlugins

from pushd.backends import make_backend
from pushd.interfaces import IBackendFactory
from pushd.testing import BackendContract

INSTALL_HINT = (
    "pip install ./examples/pushd-backend-example (README's test command does)"
)


def test_example_plugin_is_installed_and_found():
    """A third-party backend installed as a package is found by pushd."""
    names = {f.name for f in getPlugins(IBackendFactory)}
    assert "example" in names, INSTALL_HINT


class TestExampleBackend(BackendContract):
    async def make_backend(self):
        return make_backend(None, "example:keep=5:label=contract")


def test_listed_by_help_backends():
    """--help-backends lists every installed backend, sorted."""
    out = subprocess.run(
        [TWISTD, "pushd", "--help-backends"], capture_output=True, text=True, check=True
    ).stdout
    names = [line.split()[0] for line in out.splitlines()]
    assert names == sorted(names) and {"example", "memory", "redis"} <= set(names)


def test_bad_plugin_arguments_fail_at_start():
    """Bad arguments to a third-party backend fail at start with its own one-line message."""
    result = subprocess.run(
        [TWISTD, "pushd", "--backend", "example:keep=lots"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr == "pushd: error: backend example: keep takes a whole number\n"


@ensureDeferred
async def test_selected_with_backend_option(pushd_process):
    """A third-party backend selected with --backend carries messages end to end."""
    import treq
    from clients import connect_ws

    proc = pushd_process(
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--api-secret",
        "s" * 32,
        "--backend",
        "example:keep=3:label=e2e",
    )
    port = await proc.port()
    await proc.wait_for(r"example backend e2e started")
    client = await connect_ws(port)
    await client.next_of("connected")
    await client.subscribe("c")
    response = await treq.post(
        "http://127.0.0.1:%d/api/channels/c/messages" % port,
        json={"event": "e", "data": 1},
        headers={"Authorization": "Bearer " + "s" * 32},
    )
    assert response.code == 202
    assert (await client.next_of("message"))["data"] == 1
    await client.close()
