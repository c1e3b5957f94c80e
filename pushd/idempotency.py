"""Idempotency keys: a retried publish is accepted once (issue 10).

A publisher that did not get an answer (a timeout, a 503, a dropped
connection) cannot know whether its message went out; retrying without a
key may deliver it twice.  With ``Idempotency-Key`` (or ``idempotency_key``
in the body) the first request claims the key, and every later request with
the same key within ``idempotency-window`` seconds gets the first answer
(the same message id) without publishing again, on any node that shares the
store (Redis: stored there; memory and sqlite: this process).

A claim is two-phase so no retry can slip in between: ``p:<id>`` while the
first request publishes, then ``<id>`` once it is accepted.  A retry that
finds the claim still pending is refused with 409 (retry later); one that
comes after a failed publish finds the key released and publishes.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from pushd.errors import Conflict, InvalidField
from pushd.interfaces import IIdempotencyStore

PENDING = "p:"
MAX_KEY_LENGTH = 200
_KEY_RE = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_KEY_LENGTH)


def validate_key(key: Any) -> str:
    """A key is 1-200 printable ASCII characters without spaces."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise InvalidField(
            "an idempotency key is 1-%d printable ASCII characters without spaces"
            % MAX_KEY_LENGTH
        )
    return key


def request_key(header: bytes | None, body: Any) -> str | None:
    """The key of a REST publish: the ``Idempotency-Key`` header and/or the
    body's ``idempotency_key`` (they must agree when both are given)."""
    from_body = body.get("idempotency_key") if isinstance(body, dict) else None
    from_header = header.decode("latin-1") if header is not None else None
    if from_header is not None and from_body is not None and from_header != from_body:
        raise InvalidField("Idempotency-Key header and idempotency_key differ")
    key = from_header if from_header is not None else from_body
    return None if key is None else validate_key(key)


async def claim(store: Any, key: str, message_id: str, window: float) -> str | None:
    """Claim ``key`` for a publish of ``message_id``: None to go ahead, or the
    id the first request with this key was answered with.  Raises Conflict
    while that first request is still publishing."""
    first = await store.claim(key, PENDING + message_id, window)
    if first is None:
        return None
    if first.startswith(PENDING):
        raise Conflict(
            "a publish with this idempotency key is still in progress; retry later"
        )
    return first


@implementer(IIdempotencyStore)
class MemoryIdempotencyStore:
    """Keys in this process: enough for a single node (memory, sqlite)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._values: dict[str, tuple[str, float]] = {}
        # (expiry, key) in claim order; windows are equal, so expiry order
        self._order: deque[tuple[float, str]] = deque()

    def _prune(self, now: float) -> None:
        while self._order and self._order[0][0] <= now:
            _, key = self._order.popleft()
            entry = self._values.get(key)
            if entry is not None and entry[1] <= now:
                del self._values[key]

    def claim(self, key: str, value: str, window: float) -> Deferred:
        now = self._now()
        self._prune(now)
        entry = self._values.get(key)
        if entry is not None and entry[1] > now:
            return succeed(entry[0])
        self._values[key] = (value, now + window)
        self._order.append((now + window, key))
        return succeed(None)

    def settle(self, key: str, value: str, window: float) -> Deferred:
        now = self._now()
        self._values[key] = (value, now + window)
        self._order.append((now + window, key))
        return succeed(None)

    def release(self, key: str) -> Deferred:
        self._values.pop(key, None)
        return succeed(None)
