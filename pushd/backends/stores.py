"""Small cluster-wide stores of the security rules (issue 11), one mixin per
backend kind: in process for memory and sqlite (one node), in Redis for
many nodes.  Each implements ``INonceStore`` and ``IConnectionRegistry``;
the contract tests are ``pushd.testing.NonceStoreContract`` and
``ConnectionRegistryContract``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from pushd.interfaces import IConnectionRegistry, INonceStore


class LocalStores:
    """In this process: enough when this process is the only node.

    Nonces leave once their ttl has passed (in expiry order); connection ids
    leave when unregistered.  ``_now`` is the backend's clock.
    """

    _now: Any
    _nonces: dict[str, float]
    _nonce_order: deque[tuple[float, str]]
    _live_ids: set[str]

    def _init_stores(self) -> None:
        self._nonces = {}
        self._nonce_order = deque()
        self._live_ids = set()

    def use_nonce(self, nonce: str, ttl: float) -> Deferred:
        now = self._now()
        order = self._nonce_order
        while order and order[0][0] <= now:
            _, old = order.popleft()
            if self._nonces.get(old, now + 1) <= now:
                del self._nonces[old]
        if self._nonces.get(nonce, now) > now:
            return succeed(False)
        self._nonces[nonce] = now + ttl
        # ttls differ: a longer one may sit behind a shorter one, which only
        # delays its removal until that one's turn
        order.append((now + ttl, nonce))
        return succeed(True)

    def register_connection(self, connection_id: str) -> Deferred:
        if connection_id in self._live_ids:
            return succeed(False)
        self._live_ids.add(connection_id)
        return succeed(True)

    def unregister_connection(self, connection_id: str) -> Deferred:
        self._live_ids.discard(connection_id)
        return succeed(None)

    def connection_live(self, connection_id: str) -> Deferred:
        return succeed(connection_id in self._live_ids)


@implementer(INonceStore, IConnectionRegistry)
class LocalStore(LocalStores):
    """The stores on their own, for backends that provide neither (each
    node then guards only itself; the hub says so at start)."""

    def __init__(self, clock: Any) -> None:
        self._now = clock.seconds
        self._init_stores()


# KEYS: the id's key, the node lease set.  ARGV: now.  1 if live.
_LIVE = """
local node = redis.call('GET', KEYS[1])
if not node then return 0 end
local lease = redis.call('ZSCORE', KEYS[2], node)
if lease and tonumber(lease) > tonumber(ARGV[1]) then return 1 end
return 0
"""

# A registered id's key lives at most this long; the owning node's lease
# decides whether it is live (a killed node's ids stop being live with it).
CONNECTION_KEY_TTL = 7 * 86400


class RedisStores:
    """In Redis, shared by every node on the same prefix.  Mixed into
    ``RedisBackend``, whose ``_run``, ``_k``, ``node_id`` and ``_reactor``
    it uses."""

    _run: Any
    _k: Any
    node_id: str
    _reactor: Any

    def use_nonce(self, nonce: str, ttl: float) -> Deferred:
        async def run() -> bool:
            stored = await self._run(
                "set",
                self._k("nonce", nonce),
                "1",
                pexpire=max(1, int(ttl * 1000)),
                only_if_not_exists=True,
            )
            return bool(stored)

        return Deferred.fromCoroutine(run())

    def register_connection(self, connection_id: str) -> Deferred:
        async def run() -> bool:
            stored = await self._run(
                "set",
                self._k("cid", connection_id),
                self.node_id,
                expire=CONNECTION_KEY_TTL,
                only_if_not_exists=True,
            )
            return bool(stored)

        return Deferred.fromCoroutine(run())

    def unregister_connection(self, connection_id: str) -> Deferred:
        d = Deferred.fromCoroutine(self._run("delete", [self._k("cid", connection_id)]))
        return d.addCallback(lambda _: None)

    def connection_live(self, connection_id: str) -> Deferred:
        d = Deferred.fromCoroutine(
            self._run(
                "eval",
                _LIVE,
                [self._k("cid", connection_id), self._k("nodes")],
                ["%f" % self._reactor.seconds()],
            )
        )
        return d.addCallback(lambda live: bool(int(live)))
