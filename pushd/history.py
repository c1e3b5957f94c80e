"""History policy: which channels keep messages, how many, for how long.

Configured as a list of ``{channel: PATTERN, size: N, ttl: SECONDS}``; the
first pattern that matches a channel name (fnmatch, ``*`` any run) decides.
Channels that match nothing keep no history: their messages get no
position, and a client asking to recover on them is told it cannot.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any


@dataclass(frozen=True)
class Retention:
    size: int
    ttl: float


@dataclass(frozen=True)
class HistoryRule:
    pattern: str
    retention: Retention


@dataclass(frozen=True)
class HistoryResult:
    """What a backend answers for a recovery or a history query.

    ``recovered`` is true when every message after the asked position is in
    ``messages``; ``epoch`` and ``offset`` are the channel's current position
    (offset 0: nothing published yet in this epoch).
    """

    messages: list
    epoch: str
    offset: int
    recovered: bool


def rule_from_mapping(raw: Any) -> HistoryRule:
    if not isinstance(raw, dict) or set(raw) - {"channel", "size", "ttl"}:
        raise ValueError(
            "each history rule is {channel: PATTERN, size: N, ttl: SECONDS}"
        )
    pattern, size, ttl = raw.get("channel"), raw.get("size", 100), raw.get("ttl", 3600)
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("history rule needs a channel pattern")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 100_000:
        raise ValueError("history size must be a whole number from 1 to 100000")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
        raise ValueError("history ttl must be a positive number of seconds")
    return HistoryRule(pattern, Retention(size, float(ttl)))


class HistoryPolicy:
    """Which channels keep history: the configured rules, plus channels
    kept explicitly (HTTP relay channels keep a queue by protocol).

    Explicit entries are keyed by channel key (``app/channel``), so one
    app's relay channel never switches history on for another app's channel
    of the same name, and each lasts ``retention.ttl`` seconds from its last
    ``keep``: nothing stays for good (issue 12).
    """

    def __init__(self, rules: tuple[HistoryRule, ...], clock: Any = None) -> None:
        self._rules = rules
        self._now = clock.seconds if clock is not None else time.time
        self._kept: OrderedDict[str, tuple[Retention, float]] = OrderedDict()

    def keep(self, key: str, retention: Retention | None) -> None:
        """Keep channel ``key`` for ``retention.ttl`` seconds from now,
        whatever the rules say; None stops it."""
        self._kept.pop(key, None)
        if retention is None:
            return
        now = self._now()
        while self._kept:
            oldest, (_, until) = next(iter(self._kept.items()))
            if until > now:
                break
            del self._kept[oldest]
        self._kept[key] = (retention, now + retention.ttl)

    def kept_count(self) -> int:
        """Explicitly kept channels held (expired ones until pruned)."""
        return len(self._kept)

    def retention(self, channel: str, key: str | None = None) -> Retention | None:
        if key is not None and self._kept:
            explicit = self._kept.get(key)
            if explicit is not None:
                if explicit[1] > self._now():
                    return explicit[0]
                del self._kept[key]
        for rule in self._rules:
            if fnmatchcase(channel, rule.pattern):
                return rule.retention
        return None


def answer_since(
    stored: list,
    epoch: str,
    offset: int,
    since: int | None,
    since_epoch: str | None,
    limit: int,
) -> HistoryResult:
    """Shared by backends: pick what follows ``since`` from ``stored``
    (messages with offsets, oldest first) and say whether that is everything."""
    if since == 0:
        # "Nothing seen yet": any epoch will do, if the history is complete.
        after = list(stored)
        recovered = not stored or stored[0].offset == 1
    elif since is not None and since_epoch == epoch:
        after = [m for m in stored if m.offset > since]
        oldest = stored[0].offset if stored else offset + 1
        recovered = since >= offset or since + 1 >= oldest
    else:
        after = list(stored)
        recovered = since is None or (since_epoch == epoch and since >= offset)
    if len(after) > limit:
        after, recovered = after[-limit:], False
    return HistoryResult(after, epoch, offset, recovered)
