"""The hub's door to the cluster-wide security stores (issue 11).

Signed REST requests are single use on every node (``INonceStore``), and
connection ids are registered where every node sees them live
(``IConnectionRegistry``).  A backend that provides neither still works:
each node then keeps its own, and says so at start.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pushd.backends.stores import LocalStore
from pushd.errors import CloseCode
from pushd.interfaces import IConnectionRegistry, INonceStore


class HubGuards:
    """Mixed into the Hub."""

    _log = Logger()
    sessions: dict
    _nonces: INonceStore
    _registry: IConnectionRegistry

    def _init_guards(self, backend: object, clock: Any) -> None:
        nonces = INonceStore(backend, None)
        registry = IConnectionRegistry(backend, None)
        if nonces is None or registry is None:
            self._log.warn(
                "backend {backend} does not share signed-request nonces and "
                "connection ids between nodes; each node guards only itself",
                backend=type(backend).__name__,
            )
            local = LocalStore(clock)
        self._nonces = nonces if nonces is not None else local
        self._registry = registry if registry is not None else local

    async def use_nonce(self, nonce: str, ttl: float) -> bool:
        """True the first time ``nonce`` is used, on any node, within ``ttl``."""
        return await self._nonces.use_nonce(nonce, ttl)

    async def connection_live(self, connection_id: str) -> bool:
        """Whether a connection with this id is open on some live node."""
        return await self._registry.connection_live(connection_id)

    def _register_connection(self, session: Any) -> None:
        d = Deferred.fromCoroutine(self._register(session))
        d.addErrback(
            lambda f: self._log.failure(
                "registering connection {id} failed", f, id=session.connection_id
            )
        )

    async def _register(self, session: Any) -> None:
        if await self._registry.register_connection(session.connection_id):
            if session.closed:  # it left meanwhile
                await self._registry.unregister_connection(session.connection_id)
            return
        # Ids are 128 random bits: a clash means a bug or an attack.
        self._log.error(
            "connection id {id} is already in use on another node; closing",
            id=session.connection_id,
        )
        session.disconnect(CloseCode.INTERNAL_ERROR, "connection id clash")

    def _unregister_connection(self, session: Any) -> None:
        d = self._registry.unregister_connection(session.connection_id)
        d.addErrback(
            lambda f: self._log.failure(
                "unregistering connection {id} failed", f, id=session.connection_id
            )
        )
