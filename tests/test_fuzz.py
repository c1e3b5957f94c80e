"""Property-based fuzzing of everything a client or publisher sends (issue 11).

Properties, for any input: pushd never raises or logs a traceback for it;
every refusal is a documented error (its code is in docs/protocol.md or
docs/api.md); whatever it accepts it can write out again as strict JSON and
as well-formed SSE; and other clients keep receiving everything.

The default run is small (well under 30 s).  The long profile runs 10^5
examples in all::

    PUSHD_FUZZ=long .venv/bin/python -m pytest -q tests/test_fuzz.py

(20,000 examples for each of the five properties below.)
"""

from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from pushd.auth import (
    channel_signature,
    make_user_token,
    parse_timestamp,
    verify_user_token,
)
from pushd.backends.memory import MemoryBackend
from pushd.channels import validate_channel, validate_event
from pushd.config import Config, ConfigError
from pushd.errors import PushdError
from pushd.hub import Hub
from pushd.inputs import check_value, loads
from pushd.interfaces import IConnection
from pushd.message import encode_json
from pushd.transports.sse import _sse_body

settings.register_profile(
    "pushd-default",
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
settings.register_profile(
    "long",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("PUSHD_FUZZ", "pushd-default"))
if os.environ.get("PUSHD_FUZZ") == "long":
    # 20,000 examples take minutes per property: no per-test timeout.
    pytestmark = pytest.mark.timeout(0)

SECRET = "fuzz-secret-that-is-long-enough-0123456789"
# Every error code the protocol documents (docs/protocol.md, docs/api.md).
DOCUMENTED = {
    "invalid_json",
    "invalid_frame",
    "unknown_type",
    "missing_field",
    "invalid_field",
    "invalid_channel",
    "too_many_subscriptions",
    "forbidden",
    "rate_limited",
    "backend_unavailable",
    "unauthorized",
    "invalid_token",
    "token_expired",
    "not_supported",
    "bad_request",
}


@pytest.fixture
def tracebacks():
    """Log events carrying a failure, collected during the test."""
    events: list = []

    def observe(event):
        if "log_failure" in event:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@implementer(IConnection)
class Recorder:
    """A connection that keeps what it was sent, checking it is strict JSON."""

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        self.frames: list[dict] = []
        self.closed: int | None = None

    def send_json(self, frame: dict) -> None:
        self.frames.append(_strict(encode_json(frame)))

    def send_message(self, outgoing) -> None:
        self.frames.append(_strict(outgoing.json))

    def close(self, code: int, reason: str) -> None:
        self.closed = code


def _strict(raw: bytes) -> dict:
    """Parse as a strict JSON reader (browsers) would: no NaN, valid UTF-8."""

    def refuse(name):
        raise AssertionError("non-JSON constant %s sent to a client" % name)

    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included
    | st.text(),  # lone surrogates included
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
names = st.text(max_size=40) | st.sampled_from(
    [
        "news",
        "private-room",
        "private-room:42",
        "presence-room",
        "personal-ann",
        "peer-room:ann&bob",
        "App\\Events\\OrderShipped",
        "client-x\n\nid: 1",
        "pushd:close",
    ]
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "client_event"])},
    optional={
        "channel": names | json_values,
        "event": names | json_values,
        "data": json_values,
        "ref": json_values,
        "auth": st.text(max_size=80) | json_values,
        "channel_data": st.text(max_size=80) | json_values,
        "since": json_values
        | st.fixed_dictionaries({"offset": st.integers(), "epoch": st.text()}),
    },
)
payloads = (
    frames.map(lambda f: json.dumps(f).encode("utf-8", "surrogatepass"))
    | st.binary(max_size=200)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
)


def _hub() -> tuple[Hub, Clock]:
    clock = Clock()
    config = Config(
        api_secret=SECRET,
        client_events=True,
        client_rate=1e9,
        client_burst=10**9,
        max_ref_bytes=64,
    )
    return Hub(MemoryBackend(clock), clock, config), clock


@given(st.lists(payloads, min_size=1, max_size=8))
def test_any_frames_get_documented_answers_and_others_keep_receiving(tracebacks, batch):
    """Whatever frames a client sends, it gets replies or documented errors,
    the server logs no traceback, and a bystander still gets every message."""
    hub, _clock = _hub()
    app = hub.apps.by_id("default")
    bystander = Recorder("bystander")
    hub.open_session(bystander, app).receive(b'{"type":"subscribe","channel":"news"}')
    attacker = Recorder("attacker")
    session = hub.open_session(attacker, app)
    for payload in batch:
        session.receive(payload)
    # The memory backend is synchronous: this publish is delivered now.
    Deferred.fromCoroutine(hub.publish(app, ["news"], "after", {"n": 1}))
    for frame in attacker.frames:
        if frame["type"] == "error":
            assert frame["code"] in DOCUMENTED, frame
    assert bystander.frames[-1]["data"] == {"n": 1}
    assert tracebacks == []


@given(json_values)
def test_published_data_is_refused_or_delivered_as_strict_json(tracebacks, data):
    """Any data a publisher sends is refused with invalid_json or reaches
    subscribers as strict JSON, equal to what was sent."""
    hub, _clock = _hub()
    app = hub.apps.by_id("default")
    reader = Recorder("reader")
    hub.open_session(reader, app).receive(b'{"type":"subscribe","channel":"news"}')
    errors: list = []
    d = Deferred.fromCoroutine(hub.publish(app, ["news"], "e", data))
    d.addErrback(lambda f: errors.append(f.trap(PushdError) and f.value))
    if errors:
        assert errors[0].code == "invalid_json"
    else:
        got = reader.frames[-1]["data"]
        assert got == data or (isinstance(data, float) and math.isnan(data))
    assert tracebacks == []


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_raw_bodies_parse_strictly_or_are_refused(raw):
    """REST bodies: either strict, re-encodable JSON or InvalidJSON."""
    try:
        value = loads(raw, 16)
    except PushdError as e:
        assert e.code == "invalid_json"
        return
    check_value(value, 16)
    _strict(encode_json(value))


@given(names, names)
def test_names_accepted_are_safe_everywhere(channel, event):
    """Accepted channel and event names never carry line breaks or control
    characters (SSE), and signed names never a ':' that could re-split."""
    try:
        validate_channel(channel)
    except PushdError as e:
        assert e.code in DOCUMENTED
    else:
        assert ":" not in channel or not channel.startswith(("private-", "presence-"))
        assert not any(ord(c) < 32 for c in channel)
    try:
        validate_event(event)
    except PushdError as e:
        assert e.code in DOCUMENTED
    else:
        body = _sse_body(b"{}", event)
        assert body.count(b"\n") == 3  # event, data, blank line


@given(
    st.text(max_size=120),
    st.text(max_size=40),
    st.one_of(st.none(), st.text(max_size=60)),
    st.dictionaries(st.sampled_from(["sub", "exp", "info"]), json_values),
    st.dictionaries(st.text(max_size=20), json_values | st.text(), max_size=6),
)
def test_tokens_signatures_timestamps_and_config_refuse_cleanly(
    token, timestamp, channel_data, claims, raw_config
):
    """Forged tokens, odd timestamps, signatures over unsigned channel_data
    and arbitrary config values are refused with their documented errors,
    never with anything else."""
    try:
        verify_user_token(SECRET, token, now=1000)
    except PushdError as e:
        assert e.code in DOCUMENTED
    if isinstance(claims.get("sub"), str):
        forged = make_user_token("other-secret", claims["sub"])
        with pytest.raises(PushdError):
            verify_user_token(SECRET, forged)
    try:
        assert math.isfinite(parse_timestamp(timestamp, "t", fraction=True))
    except PushdError as e:
        assert e.code == "unauthorized"
    hub, _clock = _hub()
    app = hub.apps.by_id("default")
    conn = Recorder("c1")
    session = hub.open_session(conn, app)
    frame = {
        "type": "subscribe",
        "channel": "private-room",
        "auth": channel_signature(SECRET, "c1", "private-room:" + (channel_data or "")),
    }
    if channel_data is not None:
        frame["channel_data"] = channel_data
    session.receive(json.dumps(frame).encode("utf-8", "surrogatepass"))
    assert "private-room" not in session.subscriptions or channel_data is None
    try:
        Config.from_mapping(raw_config)
    except ConfigError:
        pass
