"""The installed ``twistd pushd``, run as users run it, in a subprocess."""

import signal

import pytest
from clients import connect_ws
from pytest_twisted import ensureDeferred
from twisted.internet.threads import deferToThread

from pushd.client import PushClient, PushError


@ensureDeferred
async def test_twistd_pushd_serves_websocket_and_rest(pushd_process):
    """Start the real command, subscribe over WebSocket, publish with the
    Python client, then SIGTERM: the client is told 1001 and pushd exits cleanly."""
    proc = pushd_process("--listen", "tcp:0:interface=127.0.0.1", "--api-secret", "s3")
    port = int((await proc.wait_for(r"pushd listening on 127\.0\.0\.1:(\d+)")).group(1))
    client = await connect_ws(port)
    assert (await client.next_of("connected"))["connection_id"]
    await client.subscribe("live")
    push = PushClient("http://127.0.0.1:%d" % port, "s3")
    message_id = await deferToThread(push.publish, "live", "hello", {"n": 1})
    frame = await client.next_of("message")
    assert (frame["id"], frame["data"]) == (message_id, {"n": 1})
    assert await deferToThread(push.channels) == {"live": 1}
    with pytest.raises(PushError) as error:
        await deferToThread(PushClient(push.url, "wrong").publish, "live", "x", 1)
    assert (error.value.status, error.value.code) == (403, "forbidden")
    proc.proc.send_signal(signal.SIGTERM)
    code, _ = await client.wait_closed()
    assert code == 1001
    # twistd re-raises the signal once shut down; systemd counts that as clean.
    assert await proc.wait_exit() == -signal.SIGTERM
    assert "Traceback" not in proc.log()


@ensureDeferred
async def test_generated_secret_is_logged_and_works(pushd_process):
    """The generated api-secret is logged, and REST calls with it work."""
    proc = pushd_process("--port", "0")
    secret = (await proc.wait_for(r"generated one for this run: (\S+)")).group(1)
    port = int((await proc.wait_for(r"pushd listening on [0-9.]+:(\d+)")).group(1))
    push = PushClient("http://127.0.0.1:%d" % port, secret)
    assert await deferToThread(push.publish, "c", "e", None)


@ensureDeferred
async def test_config_file_is_used(pushd_process, tmp_path):
    """twistd pushd --config FILE runs with the file's settings."""
    config = tmp_path / "pushd.yaml"
    config.write_text(
        "listen: tcp:0:interface=127.0.0.1\nclient-key: ck\napi-secret: s\n"
    )
    proc = pushd_process("--config", str(config))
    port = int((await proc.wait_for(r"pushd listening on 127\.0\.0\.1:(\d+)")).group(1))
    refused = await connect_ws(port, "?key=nope")
    assert (await refused.wait_closed())[0] == 4001
    accepted = await connect_ws(port, "?key=ck")
    await accepted.next_of("connected")
    await accepted.close()


@ensureDeferred
async def test_bad_config_fails_at_start_with_one_line(pushd_process, tmp_path):
    """twistd pushd with a bad config exits 2 with one line, before listening."""
    config = tmp_path / "pushd.yaml"
    config.write_text("max-subscriptions: -3\n")
    proc = pushd_process("--config", str(config))
    assert await proc.wait_exit() == 2
    assert proc.log().strip().splitlines() == [
        "pushd: error: bad value for max-subscriptions in %s: -3 (must be at least 1)"
        % config
    ]


@ensureDeferred
async def test_port_in_use_exits_nonzero_with_clear_message(pushd_process):
    """A port already in use makes pushd exit non-zero saying so, instead of running deaf."""
    first = pushd_process("--listen", "tcp:0:interface=127.0.0.1")
    port = (await first.wait_for(r"pushd listening on 127\.0\.0\.1:(\d+)")).group(1)
    second = pushd_process("--listen", "tcp:%s:interface=127.0.0.1" % port)
    assert await second.wait_exit() == 1
    assert "cannot listen on tcp:%s:interface=127.0.0.1" % port in second.log()
    assert "Traceback" not in second.log()
