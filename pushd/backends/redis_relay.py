"""Relay channel state in Redis: ``IRelayState`` for every node at once.

One hash per channel, ``PREFIX:relay:<channel key>``, with field ``c``
(created) and, once a subscriber asks, ``r`` (when).  Its Redis expiry is
the channel's ttl, renewed by every create, so Redis itself forgets idle
channels.  Asking for a channel that does not exist writes nothing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

# KEYS: the channel's hash; ARGV: ttl in ms
_CREATE = """
redis.call('HSET', KEYS[1], 'c', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
# KEYS: the channel's hash; ARGV: now.  Only an existing channel records it.
_REQUESTED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'r', ARGV[1])
  return 1
end
return 0
"""


class RedisRelayState:
    """Mixed into RedisBackend, whose ``_run`` and ``_k`` it uses."""

    _run: Any
    _k: Any

    def _relay_key(self, channel: str) -> str:
        return self._k("relay", channel)

    def relay_create(self, channel: str, ttl: float) -> Deferred:
        d = Deferred.fromCoroutine(
            self._run(
                "eval", _CREATE, [self._relay_key(channel)], [max(1, int(ttl * 1000))]
            )
        )
        return d.addCallback(lambda _: None)

    def relay_exists(self, channel: str) -> Deferred:
        d = Deferred.fromCoroutine(self._run("exists", self._relay_key(channel)))
        return d.addCallback(lambda n: bool(int(n)))

    def relay_requested(self, channel: str, now: float) -> Deferred:
        d = Deferred.fromCoroutine(
            self._run("eval", _REQUESTED, [self._relay_key(channel)], [repr(now)])
        )
        return d.addCallback(lambda n: bool(int(n)))

    def relay_last_requested(self, channel: str) -> Deferred:
        d = Deferred.fromCoroutine(self._run("hget", self._relay_key(channel), "r"))
        return d.addCallback(lambda when: float(when) if when else None)

    def relay_delete(self, channel: str) -> Deferred:
        d = Deferred.fromCoroutine(self._run("delete", self._relay_key(channel)))
        return d.addCallback(lambda n: bool(int(n)))
