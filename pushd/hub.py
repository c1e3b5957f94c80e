"""The Hub: channels, local subscribers and fan-out.  No I/O.

The hub knows sessions (one per client, any transport) and a backend (how
messages travel between nodes).  It subscribes the backend to a channel once
per node, when the first local session joins, and fans each message the
backend delivers out to the local sessions, encoding it once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pushd.channels import validate_channel
from pushd.config import Config
from pushd.errors import BackendUnavailable, InvalidField, MissingField, PushdError
from pushd.interfaces import IBackend, IConnection
from pushd.message import Message, Outgoing, new_message_id
from pushd.session import Session

MAX_EVENT_LENGTH = 200


def validate_event(event: object) -> str:
    if event is None:
        raise MissingField("missing 'event'")
    if not isinstance(event, str) or not 0 < len(event) <= MAX_EVENT_LENGTH:
        raise InvalidField("'event' must be a string of 1-%d characters" % MAX_EVENT_LENGTH)
    return event


class _Channel:
    """Local state of one channel on this node."""

    __slots__ = ("sessions", "waiters")

    def __init__(self) -> None:
        self.sessions: set = set()
        # Deferreds of sessions waiting for the backend subscription; None
        # once the backend is subscribed.
        self.waiters: list[Deferred] | None = []


class Hub:
    _log = Logger()

    def __init__(self, backend: IBackend, clock: Any, config: Config) -> None:
        self.backend = backend
        self.clock = clock
        self.config = config
        self.sessions: dict[str, Any] = {}
        self._channels: dict[str, _Channel] = {}

    # -- sessions -------------------------------------------------------

    def open_session(self, conn: IConnection):
        """Attach a new client connection; returns its Session."""
        session = Session(self, conn, self.config, self.clock)
        self.sessions[session.connection_id] = session
        return session

    def drop_session(self, session) -> None:
        """Forget a closed session and everything it subscribed to."""
        self.sessions.pop(session.connection_id, None)
        for channel in tuple(session.subscriptions):
            self.unsubscribe(session, channel)

    def close_all(self, code: int, reason: str) -> None:
        for session in tuple(self.sessions.values()):
            try:
                session.conn.close(code, reason)
            except Exception:
                self._log.failure("closing {id} failed", id=session.connection_id)

    # -- subscriptions --------------------------------------------------

    async def subscribe(self, session, name: str) -> None:
        """Add ``session`` to channel ``name`` once the backend delivers it here.

        Raises BackendUnavailable if the backend cannot subscribe.
        """
        ch = self._channels.get(name)
        first = ch is None
        if ch is None:
            ch = self._channels[name] = _Channel()
        if ch.waiters is not None:
            waiter: Deferred = Deferred()
            ch.waiters.append(waiter)
            if first:
                # The waiter is registered first: a synchronous backend fires
                # it right here, and the channel must not look vacant then.
                d = self.backend.subscribe(name, self._on_message)
                d.addCallbacks(self._backend_subscribed, self._backend_failed,
                               callbackArgs=(name, ch), errbackArgs=(name, ch))
            await waiter
        if session.closed:
            self._maybe_vacate(name, ch)
            return
        ch.sessions.add(session)
        self.backend.report_occupancy(name, len(ch.sessions))

    def unsubscribe(self, session, name: str) -> None:
        session.subscriptions.discard(name)
        ch = self._channels.get(name)
        if ch is None or session not in ch.sessions:
            return
        ch.sessions.discard(session)
        self.backend.report_occupancy(name, len(ch.sessions))
        self._maybe_vacate(name, ch)

    def _maybe_vacate(self, name: str, ch: _Channel) -> None:
        if ch.sessions or ch.waiters or self._channels.get(name) is not ch:
            return
        del self._channels[name]
        if ch.waiters is None:
            d = self.backend.unsubscribe(name, self._on_message)
            d.addErrback(lambda f: self._log.failure("unsubscribe {channel}", f, channel=name))

    def _backend_subscribed(self, _: object, name: str, ch: _Channel) -> None:
        waiters, ch.waiters = ch.waiters or [], None
        # Each waiter adds its session (or vacates, if its client left) when
        # it resumes; vacating here would race a synchronous backend.
        for waiter in waiters:
            waiter.callback(None)

    def _backend_failed(self, failure, name: str, ch: _Channel) -> None:
        self._log.failure("backend could not subscribe {channel}", failure, channel=name)
        if self._channels.get(name) is ch:
            del self._channels[name]
        waiters, ch.waiters = ch.waiters or [], None
        for waiter in waiters:
            waiter.errback(BackendUnavailable("cannot subscribe to %s now; retry later" % name))

    def local_subscribers(self, name: str) -> int:
        ch = self._channels.get(name)
        return len(ch.sessions) if ch is not None else 0

    # -- publishing -----------------------------------------------------

    async def publish(self, channels: list, event: object, data: Any) -> str:
        """Publish one message to each channel in order; fires with its id."""
        event = validate_event(event)
        if not channels:
            raise MissingField("name at least one channel")
        limit = self.config.max_channels_per_publish
        if len(channels) > limit:
            raise InvalidField("at most %d channels per publish" % limit)
        names = [validate_channel(c) for c in channels]
        message_id = new_message_id()
        for name in names:
            try:
                await self.backend.publish(Message(name, event, data, message_id))
            except PushdError:
                raise
            except Exception as e:
                self._log.failure("publish to {channel} failed", channel=name)
                raise BackendUnavailable("backend failed to publish: %s" % e) from None
        return message_id

    def _on_message(self, message: Message) -> None:
        """Fan one message out to the local subscribers of its channel."""
        ch = self._channels.get(message.channel)
        if ch is None or not ch.sessions:
            return
        outgoing = Outgoing(message)
        for session in tuple(ch.sessions):
            try:
                session.conn.send_message(outgoing)
            except Exception:
                self._log.failure("delivery to {id} failed", id=session.connection_id)
