"""The hub's door to the cluster-wide security stores (issue 11).

Signed REST requests are single use on every node (``INonceStore``), and
connection ids are registered where every node sees them live
(``IConnectionRegistry``).  A backend that provides neither still works:
each node then keeps its own, and says so at start.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from pushd.backends.stores import LocalStore
from pushd.errors import CloseCode
from pushd.interfaces import IConnectionRegistry, INonceStore, IPubSub
from pushd.message import Message, channel_key, encode_json, new_message_id

# SSE streams take frames sent to them from any node on a channel no client
# can name ('#' is outside the channel alphabet).
STREAM_PREFIX = "#stream-"
STREAM_FRAME = "pushd:frame"


class HubGuards:
    """Mixed into the Hub."""

    _log = Logger()
    sessions: dict
    _nonces: INonceStore
    _registry: IConnectionRegistry
    _pubsub: IPubSub
    _streams: dict

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
        self._streams = {}
        self._nonces = nonces if nonces is not None else local
        self._registry = registry if registry is not None else local

    async def use_nonce(self, nonce: str, ttl: float) -> bool:
        """True the first time ``nonce`` is used, on any node, within ``ttl``."""
        return await self._nonces.use_nonce(nonce, ttl)

    async def connection_live(self, connection_id: str) -> bool:
        """Whether a connection with this id is open on some live node."""
        return await self._registry.connection_live(connection_id)

    def _register_connection(self, session: Any) -> None:
        # Callbacks, not a coroutine: this runs once per handshake, and
        # Deferred.fromCoroutine cost more than the registration itself.
        d = self._registry.register_connection(session.connection_id)
        d.addCallback(self._registered, session)
        d.addErrback(
            lambda f: self._log.failure(
                "registering connection {id} failed", f, id=session.connection_id
            )
        )

    def _registered(self, fresh: bool, session: Any) -> Any:
        if fresh:
            if session.closed:  # it left meanwhile
                return self._registry.unregister_connection(session.connection_id)
            return None
        # Ids are 128 random bits: a clash means a bug or an attack.
        self._log.error(
            "connection id {id} is already in use on another node; closing",
            id=session.connection_id,
        )
        session.disconnect(CloseCode.INTERNAL_ERROR, "connection id clash")
        return None

    def _unregister_connection(self, session: Any) -> None:
        self._detach_stream(session)
        d = self._registry.unregister_connection(session.connection_id)
        d.addErrback(
            lambda f: self._log.failure(
                "unregistering connection {id} failed", f, id=session.connection_id
            )
        )

    # -- frames for SSE streams, from any node ------------------------------

    def attach_stream(self, session: Any) -> None:
        """Let ``send_to_stream`` reach ``session`` from every node."""
        key = channel_key(session.app.id, STREAM_PREFIX + session.connection_id)
        self._streams[key] = session
        d = self._pubsub.subscribe(key, self._on_stream_frame)
        d.addErrback(
            lambda f: self._log.failure(
                "stream {id} takes frames from this node only",
                f,
                id=session.connection_id,
            )
        )

    def _detach_stream(self, session: Any) -> None:
        key = channel_key(session.app.id, STREAM_PREFIX + session.connection_id)
        if self._streams.pop(key, None) is not None:
            d = self._pubsub.unsubscribe(key, self._on_stream_frame)
            d.addErrback(lambda f: None)  # a lost connection forgets it anyway

    def _on_stream_frame(self, message: Message) -> None:
        session = self._streams.get(message.key)
        if session is not None and message.event == STREAM_FRAME:
            session.receive(encode_json(message.data))

    async def send_to_stream(self, app: Any, connection_id: str, frame: dict) -> bool:
        """Hand ``frame`` to the SSE stream ``connection_id`` of ``app``,
        wherever it is open, as if its client had sent it; False when no
        such stream is open."""
        session = self.sessions.get(connection_id)
        if session is not None and session.app.id == app.id:
            if channel_key(app.id, STREAM_PREFIX + connection_id) not in self._streams:
                return False  # not an SSE stream
            session.receive(encode_json(frame))
            return True
        if not await self.connection_live(connection_id):
            return False
        await self._pubsub.publish(
            Message(
                STREAM_PREFIX + connection_id,
                STREAM_FRAME,
                frame,
                new_message_id(),
                app.id,
            )
        )
        return True
