"""``twistd pushd --workers N``: N real processes on one port, one real
redis-server, behaving as one server (pushd.workers)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys

import pytest
import treq
from clients import connect_ws
from pytest_twisted import ensureDeferred
from twisted.internet.defer import Deferred, gatherResults

from pushd.testing import connection_owners, eventually, free_port

SECRET = "workers-secret-that-is-at-least-32-bytes"


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def start_workers(pushd_process, redis_server, *extra, count=2, secret=True):
    """``twistd pushd --workers COUNT`` on Redis; waits for the summary."""
    spec = redis_server.spec(heartbeat=0.3, **{"node-ttl": 1.5, "timeout": 1})
    args = ["--listen", "tcp:0:interface=127.0.0.1", "--backend", spec]
    if secret:
        args += ["--api-secret", SECRET]
    proc = pushd_process(*args, "--workers", str(count), *extra)
    await proc.wait_for(r"pushd is ready")
    proc.http_port = await proc.port()
    proc.url = "http://127.0.0.1:%d" % proc.http_port
    return proc


def worker_pids(proc) -> dict[int, int]:
    """Worker index -> pid of its latest start, from the supervisor's log."""
    started = re.findall(r"started worker (\d+) \(pid (\d+)\)", proc.log())
    return {int(index): int(pid) for index, pid in started}


async def clients_on_every_worker(proc, per_worker=2, limit=60):
    """Connect WebSocket clients until every worker holds ``per_worker``;
    returns {pid: [clients]} (the kernel picks the worker of each)."""
    pids = list(worker_pids(proc).values())
    by_pid: dict[int, list] = {pid: [] for pid in pids}
    extra = []
    for _ in range(limit):
        client = await connect_ws(proc.http_port)
        await client.next_of("connected")
        local = client.proto.transport.getHost().port
        owner = connection_owners(pids, proc.http_port)[local]
        if len(by_pid[owner]) < per_worker:
            by_pid[owner].append(client)
        else:
            extra.append(client)
        if all(len(group) == per_worker for group in by_pid.values()):
            break
    for client in extra:
        await client.close()
    assert all(len(g) == per_worker for g in by_pid.values()), by_pid
    return by_pid


async def publish(proc, channel, data, secret=SECRET):
    response = await treq.post(
        proc.url + "/api/channels/%s/messages" % channel,
        json.dumps({"event": "e", "data": data}).encode(),
        headers={"Authorization": "Bearer " + secret},
        persistent=False,  # a new connection: any worker may answer
    )
    assert response.code == 202, await response.text()
    return json.loads(await response.text())


@ensureDeferred
async def test_a_publish_through_the_port_reaches_subscribers_on_every_worker(
    pushd_process, redis_server
):
    """Subscribers held by either worker get every message published through
    the shared port, in order, whichever worker took the publish; each
    worker's log lines say which worker and pid logged them."""
    proc = await start_workers(pushd_process, redis_server)
    groups = await clients_on_every_worker(proc)
    clients = [c for group in groups.values() for c in group]
    for client in clients:
        await client.subscribe("news")
    for n in range(6):
        await publish(proc, "news", n)
    for client in clients:
        assert [(await client.next_of("message"))["data"] for _ in range(6)] == list(
            range(6)
        )
    for index, pid in worker_pids(proc).items():
        assert (
            "[worker %d pid %d pushd.service.ListenService#info] pushd "
            % (
                index,
                pid,
            )
            in proc.log()
        )
    for client in clients:
        await client.close()


@ensureDeferred
async def test_workers_share_the_generated_secret_and_answer_for_themselves(
    pushd_process, redis_server
):
    """Without an api-secret, the one secret the supervisor logs works on
    every worker; /api/stats answers for the worker that took the request
    (its node) and counts every worker as a node of the cluster."""
    proc = await start_workers(pushd_process, redis_server, secret=False)
    secret = re.search(r"generated one for this run: (\S+)", proc.log()).group(1)
    assert proc.log().count("generated one for this run") == 1
    seen: dict[str, list] = {}
    for _ in range(60):
        response = await treq.get(
            proc.url + "/api/stats",
            headers={"Authorization": "Bearer " + secret},
            persistent=False,
        )
        assert response.code == 200
        body = json.loads(await response.text())
        seen[body["node"]["id"]] = body["cluster"]["nodes"]
        if len(seen) == 2:
            break
    assert len(seen) == 2, seen
    assert list(seen.values()) == [2, 2], seen


@ensureDeferred
async def test_connections_are_spread_over_workers(pushd_process, redis_server):
    """Forty connections opened at once land on both workers, neither taking
    fewer than a tenth (the kernel's one accept queue feeds both)."""
    proc = await start_workers(pushd_process, redis_server)
    pids = list(worker_pids(proc).values())
    clients = await gatherResults(
        [Deferred.fromCoroutine(connect_ws(proc.http_port)) for _ in range(40)],
        consumeErrors=True,
    )
    owners = connection_owners(pids, proc.http_port)
    counts = {pid: list(owners.values()).count(pid) for pid in pids}
    assert sum(counts.values()) == 40, counts
    assert min(counts.values()) >= 4, counts
    for client in clients:
        await client.close()


def _write_config(tmp_path) -> str:
    path = tmp_path / "workers.yaml"
    path.write_text("history:\n  - {channel: 'kept-*', size: 100, ttl: 600}\n")
    return str(path)


@ensureDeferred
async def test_kill_9_of_a_worker_restarts_it_and_the_others_keep_serving(
    pushd_process, redis_server, tmp_path
):
    """kill -9 of one worker: the supervisor restarts it; clients of the
    other worker keep receiving throughout; the killed worker's clients
    reconnect through the same port and get what they missed on a channel
    with history, or ``recovered: false`` (time to reload) on one without."""
    proc = await start_workers(
        pushd_process, redis_server, "--config", _write_config(tmp_path)
    )
    before = worker_pids(proc)
    groups = await clients_on_every_worker(proc, per_worker=1)
    victim_pid, survivor_pid = list(groups)
    victim, survivor = groups[victim_pid][0], groups[survivor_pid][0]
    for client in (victim, survivor):
        await client.subscribe("kept-room")
        await client.subscribe("plain")
    first = await publish(proc, "kept-room", "first")
    for client in (victim, survivor):
        seen = await client.next_of("message")
    assert seen["data"] == "first"
    position = {"offset": seen["offset"], "epoch": seen["epoch"]}

    os.kill(victim_pid, signal.SIGKILL)
    assert (await victim.wait_closed())[0] != 1001  # dropped, not told
    index = next(i for i, pid in before.items() if pid == victim_pid)
    await proc.wait_for(r"worker %d \(pid %d\) ended" % (index, victim_pid))
    # Until it is back, new connections go to the live worker, none waits.
    meanwhile = [await connect_ws(proc.http_port) for _ in range(8)]
    owners = connection_owners([survivor_pid], proc.http_port)
    assert [owners.get(c.proto.transport.getHost().port) for c in meanwhile] == [
        survivor_pid
    ] * 8
    for client in meanwhile:
        await client.close()
    for n in range(3):
        await publish(proc, "kept-room", n)
        await publish(proc, "plain", n)
    for n in range(3):
        assert (await survivor.next_of("message"))["data"] == n
        assert (await survivor.next_of("message"))["data"] == n

    await eventually(lambda: worker_pids(proc)[index] != victim_pid, timeout=10)
    new_pid = worker_pids(proc)[index]
    await proc.wait_for(
        r"\[worker %d pid %d [^]]*\] worker %d ready" % (index, new_pid, index)
    )
    assert _alive(survivor_pid) and not _alive(victim_pid)

    back = await connect_ws(proc.http_port)
    await back.next_of("connected")
    back.send({"type": "subscribe", "channel": "kept-room", "since": position})
    answer = await back.next_of("subscribed")
    assert answer["recovered"] is True
    assert [(await back.next_of("message"))["data"] for _ in range(3)] == [0, 1, 2]
    back.send({"type": "subscribe", "channel": "plain", "since": {"offset": 0}})
    assert (await back.next_of("subscribed"))["recovered"] is False
    assert first["id"]

    # The restarted worker serves clients like the others.
    groups = await clients_on_every_worker(proc, per_worker=1)
    assert set(groups) == {survivor_pid, new_pid}
    newcomer = groups[new_pid][0]
    await newcomer.subscribe("plain")
    await publish(proc, "plain", "after")
    assert (await newcomer.next_of("message"))["data"] == "after"
    assert (await survivor.next_of("message"))["data"] == "after"
    for client in (back, survivor, *[c for g in groups.values() for c in g]):
        await client.close()


@ensureDeferred
async def test_sigterm_to_the_supervisor_stops_every_worker_gracefully(
    pushd_process, redis_server
):
    """SIGTERM to the supervisor: clients of every worker are told 1001, every
    worker exits, then the supervisor, with no traceback."""
    proc = await start_workers(pushd_process, redis_server)
    groups = await clients_on_every_worker(proc, per_worker=1)
    proc.proc.send_signal(signal.SIGTERM)
    for group in groups.values():
        assert (await group[0].wait_closed())[0] == 1001
    assert await proc.wait_exit() == -signal.SIGTERM
    assert not any(_alive(pid) for pid in worker_pids(proc).values())
    assert "Traceback" not in proc.log()


@ensureDeferred
async def test_workers_stop_when_the_supervisor_is_killed(pushd_process, redis_server):
    """kill -9 of the supervisor leaves no worker serving on its own."""
    proc = await start_workers(pushd_process, redis_server)
    pids = list(worker_pids(proc).values())
    proc.proc.kill()
    await eventually(lambda: not any(_alive(pid) for pid in pids), timeout=15)


@ensureDeferred
async def test_memory_and_sqlite_backends_are_refused_with_one_line(
    pushd_process, tmp_path
):
    """--workers with a backend that lives in one process stops at start
    with one line and exit status 2 (systemd does not retry it)."""
    for backend in ("memory", "sqlite:path=%s" % (tmp_path / "h.db")):
        proc = pushd_process(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--backend",
            backend,
            "--workers",
            "2",
        )
        assert await proc.wait_exit() == 2
        name = backend.split(":")[0]
        assert proc.log().strip().splitlines() == [
            "pushd: error: workers: 2 needs a backend shared by processes "
            "(redis); backend %s keeps its state in one process" % name
        ]


@pytest.mark.skipif(
    not shutil.which("systemd-socket-activate"),
    reason="needs systemd-socket-activate (Debian: systemd)",
)
@ensureDeferred
async def test_workers_serve_a_socket_handed_over_by_systemd(
    pushd_process, redis_server
):
    """Socket activation composes with workers: the supervisor takes the one
    socket systemd passes and every worker serves it (a publish through it
    reaches a subscriber through it)."""
    port = free_port()
    spec = redis_server.spec(heartbeat=0.3, **{"node-ttl": 1.5, "timeout": 1})
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = pushd_process(
        command=[
            "systemd-socket-activate",
            "--fdname=pushd.socket",
            "-l",
            "127.0.0.1:%d" % port,
            *[twistd, "-n", "--pidfile=", "--logfile=-", "pushd"],
            *["--listen", "systemd:domain=INET:index=0", "--backend", spec],
            *["--api-secret", SECRET, "--workers", "2"],
        ]
    )
    await proc.wait_for(r"Listening on 127\.0\.0\.1:%d" % port)
    response = await treq.get("http://127.0.0.1:%d/health" % port)  # starts it
    assert response.code == 200
    await proc.wait_for(r"pushd is ready")
    assert len(worker_pids(proc)) == 2
    proc.http_port, proc.url = port, "http://127.0.0.1:%d" % port
    client = await connect_ws(port)
    await client.next_of("connected")
    await client.subscribe("activated")
    await publish(proc, "activated", 1)
    assert (await client.next_of("message"))["data"] == 1
    await client.close()


def test_tls_listeners_are_refused_with_workers(capsys):
    """A listener whose socket cannot be handed to workers (ssl:) is refused
    at start with one line naming it, before anything listens."""
    from pushd.tap import Options

    options = Options()
    with pytest.raises(SystemExit) as exit_:
        options.parseOptions(
            [
                "--backend",
                "redis:port=1",
                "--workers",
                "3",
                "--listen",
                "ssl:8443:privateKey=k.pem:certKey=c.pem",
            ]
        )
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "pushd: error: workers: 3 cannot share a ssl: listener "
        "(ssl:8443:privateKey=k.pem:certKey=c.pem); use tcp, tcp6, unix or "
        "systemd (terminate TLS in front of pushd)\n"
    )
    options = Options()
    options.parseOptions(["--backend", "redis:port=1", "--workers", "3"])
    assert options.config.workers == 3


def test_a_worker_that_keeps_dying_is_restarted_less_and_less_often():
    """Restarts back off (0.5 s, doubled per death in a row, at most 30 s),
    so a worker that cannot start does not spin; one that lived 10 s starts
    from 0.5 s again."""
    from twisted.internet.task import Clock
    from twisted.python.failure import Failure

    from pushd.config import Config
    from pushd.workers import WorkerSupervisor

    clock = Clock()
    supervisor = WorkerSupervisor(
        clock, Config(workers=2, backend="redis"), [], "s", "redis"
    )
    slot = supervisor.slots[0]
    delays = []
    for _ in range(8):
        supervisor.worker_ended(slot, Failure(RuntimeError("died")))
        delays.append(slot.restart.getTime() - clock.seconds())
        slot.restart.cancel()
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30]
    slot.started_at = clock.seconds()
    clock.advance(10)
    supervisor.worker_ended(slot, Failure(RuntimeError("died")))
    assert slot.restart.getTime() - clock.seconds() == 0.5
