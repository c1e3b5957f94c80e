"""Autobahn's WebSocket server protocol, without what each connection doesn't need.

A reconnect storm is handshakes back to back, and an idle connection is
its protocol object; profiled (bench/connections.py, py-spy, tracemalloc),
Autobahn spent most of a handshake and of an idle connection's memory on
things no pushd connection uses:

* every protocol copies the factory's ~45 options into its own
  ``__dict__``, then ``pprint.pformat``-s them for a debug line nobody
  reads: a quarter of a handshake's CPU, and the bulk of the instance's
  dictionary.  ``freeze_options`` makes them class attributes of a
  per-factory subclass, which Autobahn then leaves alone, and
  ``_connectionMade`` below skips the copy and the formatting;
* ~30 flags and counters set per connection to the same starting values
  are class attributes here; an instance holds only what changed;
* ``dataReceived``, ``sendData``, ``connectionMade`` and ``connectionLost``
  format their debug lines' arguments (click styling) eagerly, whether or
  not debug logging is on; these overrides call the same code without them;
* the handshake's HTTP request (raw bytes, parsed headers, query) is
  dropped once the connection is open, and the send queue Autobahn only
  uses for "sync"/chopped writes (pushd uses neither) is made on first use;
* the common opening handshake is read in one pass
  (pushd.transports.handshake), anything unusual by Autobahn.

Behaviour is Autobahn's: ``tests/test_lean.py`` checks that a connection
set up here reads every attribute as one set up by Autobahn itself, so an
Autobahn upgrade that adds state fails a test instead of a connection.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from autobahn.twisted.util import create_transport_details
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.util import _is_tls_error, _maybe_tls_reason
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import Timings, TrafficStats, WebSocketProtocol
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from pushd.transports.handshake import fast_handshake

_CONNECTING = WebSocketProtocol.STATE_CONNECTING

# Read by nobody in pushd; Autobahn only adds to it.  One shared counter
# instead of a 19-field object per connection.
_TRAFFIC = TrafficStats()

# What only the opening handshake reads; dropped once the connection is open.
HANDSHAKE_ONLY = (
    "http_request_data",
    "http_status_line",
    "http_headers",
    "http_response_data",
    "http_request_host",
    "http_request_params",
    "http_request_path",
    "http_request_uri",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
    "_wskey",
)


class LeanServerProtocol(WebSocketServerProtocol):  # type: ignore[misc]
    # Options, class attributes of the factory's subclass (freeze_options).
    tcpNoDelay: bool
    openHandshakeTimeout: float
    logOctets: bool
    # The starting values Autobahn's _connectionMade gives every
    # connection (autobahn.websocket.protocol, WebSocketProtocol).
    _perMessageCompress = None
    trackedTimings: Any = None
    send_state = WebSocketProtocol.SEND_STATE_GROUND
    data = b""
    send_queue: Any = ()  # a deque on first queued write (sendData)
    triggered = False
    wasMaxFramePayloadSizeExceeded = False
    wasMaxMessagePayloadSizeExceeded = False
    closedByMe = False
    failedByMe = False
    droppedByMe = False
    wasClean = False
    wasNotCleanReason: Any = None
    wasServerConnectionDropTimeout = False
    wasOpenHandshakeTimeout = False
    wasCloseHandshakeTimeout = False
    wasServingFlashSocketPolicyFile = False
    localCloseCode = None
    localCloseReason = None
    remoteCloseCode = None
    remoteCloseReason = None
    openHandshakeTimeoutCall = None
    closeHandshakeTimeoutCall = None
    autoPingTimeoutCall = None
    autoPingPending = None
    autoPingPendingCall = None
    autoPingPendingSeq = 0
    autoPingPendingSent = None
    trafficStats = _TRAFFIC

    def connectionMade(self) -> None:
        transport: Any = self.transport
        details = create_transport_details(transport, self.is_server)
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        self._transport_details = details
        self.peer = details.peer
        if self.tcpNoDelay:
            try:
                transport.setTcpNoDelay(True)
            except Exception:  # as Autobahn: UNIX sockets refuse it
                pass
        self._connectionMade()

    def _connectionMade(self) -> None:
        self.state = _CONNECTING
        self.utf8validator = Utf8Validator()
        if self.trackTimings:
            self.setTrackTimings(True)
        if self.openHandshakeTimeout > 0:
            self.openHandshakeTimeoutCall = self.factory._batched_timer.call_later(
                self.openHandshakeTimeout, self.onOpenHandshakeTimeout
            )
        self.factory.countConnections += 1

    def setTrackTimings(self, enable: bool) -> None:
        if enable and self.trackedTimings is None:
            self.trackedTimings = Timings()
        elif not enable:
            self.trackedTimings = None

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def processHandshake(self) -> None:
        if not fast_handshake(self):
            super().processHandshake()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if _is_tls_error(reason.value):
            self.log.error(_maybe_tls_reason(reason.value))
        self._connectionLost(reason)

    def _connectionLost(self, reason: Any) -> None:
        WebSocketProtocol._connectionLost(self, reason)
        self.factory.countConnections -= 1

    def sendData(
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        if sync or chopsize or self.send_queue:
            if not isinstance(self.send_queue, deque):
                self.send_queue = deque()
            WebSocketProtocol.sendData(self, data, sync, chopsize)
            return
        transport: Any = self.transport
        transport.write(data)
        if self.logOctets:
            self.logTxOctets(data, False)

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self.message_data = [bytearray()]  # type: ignore[list-item]

    def onMessageFrame(self, payload: Any) -> None:  # Autobahn passes a list
        # Autobahn keeps every fragment of a message as its own object
        # (~60 bytes each): 64 KB sent as 1-byte fragments held ~4 MB per
        # connection, from clients that need no credentials.  One buffer.
        if not self.failedByMe:
            self.message_data[0] += b"".join(payload)

    def _onOpen(self) -> None:
        # The handshake is over: what only it needed goes, and the instance's
        # dictionary is rebuilt at its new size (dicts never shrink).
        state = self.__dict__
        for name in HANDSHAKE_ONLY:
            state.pop(name, None)
        if state.get("openHandshakeTimeoutCall", 0) is None:
            del state["openHandshakeTimeoutCall"]  # the class's default
        self.__dict__ = dict(state)
        super()._onOpen()


def freeze_options(factory: Any) -> None:
    """Make ``factory``'s protocol options class attributes of a subclass
    of its protocol, made for it: Autobahn then copies none into each
    connection.  Call after the last ``setProtocolOptions``."""
    base = factory.protocol
    options = {}
    for name in base.CONFIG_ATTRS:
        value = getattr(factory, name)
        # A function option (perMessageCompressionAccept) is called as
        # self.option(...): as a class attribute it must not become a method.
        options[name] = staticmethod(value) if callable(value) else value
    factory.protocol = type(base.__name__, (base,), options)
