"""Deployment as docs/operations.md describes it: the systemd units, socket
activation, the ``pushd`` console script, TLS listeners, start-up failures."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import treq
from clients import connect_ws
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from pushd.client import PushClient
from pushd.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")


def _exec_start(tmp_path: Path, config: Path) -> list[str]:
    """The shipped unit's ExecStart, pointed at this venv and ``config``."""
    unit = (UNITS / "pushd.service").read_text()
    line = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
    argv = shlex.split(line)
    assert argv[0] == "/opt/pushd/bin/twistd", "docs/operations.md installs there"
    argv[0] = TWISTD
    return [str(config) if a == "/etc/pushd/pushd.yaml" else a for a in argv]


@pytest.mark.skipif(
    not shutil.which("systemd-analyze"),
    reason="needs systemd-analyze (Debian: systemd)",
)
def test_systemd_units_verify(tmp_path):
    """systemd accepts both shipped units as they are (only the install prefix
    differs here: this venv instead of /opt/pushd)."""
    for name in ("pushd.service", "pushd.socket"):
        text = (UNITS / name).read_text().replace("/opt/pushd/bin/twistd", TWISTD)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "pushd.socket", "pushd.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"),
    )
    assert result.returncode == 0, result.stderr
    unit = (UNITS / "pushd.service").read_text()
    # Under ProtectSystem=strict only the state directory is writable: the
    # place the sqlite backend's file goes.
    assert "ProtectSystem=strict" in unit and "StateDirectory=pushd" in unit
    assert "Service=pushd.service" in (UNITS / "pushd.socket").read_text()


@pytest.mark.skipif(
    not shutil.which("systemd-socket-activate"),
    reason="needs systemd-socket-activate (Debian: systemd)",
)
@ensureDeferred
async def test_socket_activation_serves_clients(pushd_process, tmp_path):
    """systemd holds the port and hands it over on the first connection: the
    unit's own command line, with ``listen: systemd:...``, serves REST and
    WebSocket clients through that socket."""
    config = tmp_path / "pushd.yaml"
    config.write_text(
        "listen: ['systemd:domain=INET:index=0']\napi-secret: socket-secret\n"
    )
    port = free_port()
    proc = pushd_process(
        command=[
            "systemd-socket-activate",
            "--fdname=pushd.socket",  # what systemd itself passes
            "-l",
            "127.0.0.1:%d" % port,
            *_exec_start(tmp_path, config),
        ]
    )
    await proc.wait_for(r"Listening on 127\.0\.0\.1:%d" % port)
    # The first connection starts pushd; it waits in the backlog meanwhile.
    response = await treq.get("http://127.0.0.1:%d/health" % port)
    assert response.code == 200
    await proc.wait_for(r"pushd listening on 127\.0\.0\.1:%d \(systemd:" % port)
    client = await connect_ws(port)
    await client.next_of("connected")
    await client.subscribe("activated")
    push = PushClient("http://127.0.0.1:%d" % port, "socket-secret")
    await deferToThread(push.publish, "activated", "hello", 1)
    assert (await client.next_of("message"))["data"] == 1
    await client.close()


def test_systemd_listen_outside_systemd_says_so():
    """Without a socket from systemd, one line says that, not 'list index out
    of range'; exit status 2 (a configuration error: systemd does not retry)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    result = subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "pushd",
            "--listen",
            "systemd:domain=INET:index=0",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pushd: error: cannot listen on 'systemd:domain=INET:index=0': no socket "
        "was passed by systemd (start pushd through pushd.socket, or listen on "
        "tcp:PORT)"
    ]


@ensureDeferred
async def test_console_script_runs_pushd_in_the_foreground(pushd_process):
    """``pushd ARGS`` is ``twistd -n --pidfile= pushd ARGS``: it stays in the
    foreground (so the generated secret shows in the terminal), writes no
    pidfile, and serves."""
    proc = pushd_process(
        command=[os.path.join(BIN, "pushd"), "--listen", "tcp:0:interface=127.0.0.1"]
    )
    secret = (await proc.wait_for(r"generated one for this run: (\S+)")).group(1)
    port = await proc.port()
    push = PushClient("http://127.0.0.1:%d" % port, secret)
    assert await deferToThread(push.publish, "c", "e", None)
    assert not (proc.log_path.parent / "twistd.pid").exists()


def _self_signed(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A throwaway certificate for localhost / 127.0.0.1: (key, cert, PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    return key_path, cert_path, pem


@ensureDeferred
async def test_tls_listener_serves_websocket_and_rest(pushd_process, tmp_path):
    """``--listen ssl:...`` with a certificate: a wss:// client gets what an
    https:// publish sends, and both verify the server's certificate."""
    key, cert, pem = _self_signed(tmp_path)
    proc = pushd_process(
        "--listen",
        "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (key, cert),
        "--api-secret",
        "tls-secret",
    )
    port = await proc.port()
    trust = Certificate.loadPEM(pem)
    client = await connect_ws(port, tls=optionsForClientTLS("localhost", trust))
    await client.next_of("connected")
    await client.subscribe("secure")
    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust))
    response = await treq.post(
        "https://localhost:%d/api/channels/secure/messages" % port,
        json={"event": "e", "data": {"over": "tls"}},
        headers={"Authorization": "Bearer tls-secret"},
        agent=agent,
    )
    assert response.code == 202, await response.text()
    assert (await client.next_of("message"))["data"] == {"over": "tls"}
    # Plain HTTP to the TLS port is not served.
    with pytest.raises(Exception):  # noqa: B017 - any failure will do
        await treq.get("http://127.0.0.1:%d/health" % port, timeout=2)
    await client.close()


@ensureDeferred
async def test_redis_unreachable_at_start_says_so_once(pushd_process):
    """A Redis that cannot be reached stops pushd (exit 1) with one critical
    line naming the address, and no traceback."""
    port = free_port()
    proc = pushd_process(
        "--port", "0", "--api-secret", "x", "--backend", "redis:port=%d" % port
    )
    assert await proc.wait_exit() == 1
    log = proc.log()
    critical = [line for line in log.splitlines() if "#critical]" in line]
    assert len(critical) == 1, log
    assert "cannot reach Redis at 127.0.0.1:%d" % port in critical[0]
    assert "Traceback" not in log


@ensureDeferred
async def test_start_up_summary_says_where_to_point_clients(pushd_process, tmp_path):
    """Once listening, one log block names the listeners with the URLs to
    try, the backend, each app and its key mode, history, relay and limits."""
    config = tmp_path / "pushd.yaml"
    config.write_text(
        "listen: tcp:0:interface=127.0.0.1\n"
        "admin-secret: the-operator-secret\n"
        "max-connections-per-ip: 50\n"
        "history: [{channel: 'chat-*', size: 10, ttl: 60}]\n"
        "apps:\n"
        "  - {id: chat, key: chat-public-key, secret: chat-secret-value,"
        " anonymous: false}\n"
    )
    proc = pushd_process("--config", str(config))
    port = await proc.port()
    block = (await proc.wait_for(r"pushd is ready(?:\n[ \t].*)+")).group(0)
    base = "127.0.0.1:%d" % port
    for expected in (
        "listening on tcp:0:interface=127.0.0.1",
        "ws://%s/ws" % base,
        "http://%s/sse?channel=NAME" % base,
        "http://%s/pushd.js" % base,
        "http://%s/metrics" % base,
        "backend: memory",
        "app chat: clients need key chat-public-key, user token required",
        "history: chat-* (10 messages, 60s)",
        "relay: default /publisher/ and /subscriber/",
        "per IP 50",
        "metrics: /metrics with the admin-secret",
    ):
        assert expected in block, (expected, block)
    assert "chat-secret-value" not in proc.log()


def test_admin_secret_must_not_be_an_app_secret(tmp_path):
    """The operator's credential proves something no app can: pushd refuses
    to start when it equals an app's secret."""
    result = subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "pushd",
            "--api-secret",
            "same-secret-1",
            "--admin-secret",
            "same-secret-1",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "admin-secret must differ from every app's secret" in result.stderr
