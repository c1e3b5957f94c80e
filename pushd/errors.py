"""Domain errors.

Each error knows how it looks on the wire: a short machine-readable ``code``
(used in WebSocket error frames and REST error bodies) and the HTTP status the
REST API answers with.  Raising one of these anywhere below an adapter is the
whole contract: the adapter turns it into the right frame or response, so the
hub and session never think about HTTP or WebSocket.
"""


class PushdError(Exception):
    """A refusal the client caused and can fix; never a server fault."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_json(self) -> dict:
        return {"error": self.code, "message": self.message}


class InvalidFrame(PushdError):
    code = "invalid_frame"


class InvalidJSON(PushdError):
    code = "invalid_json"


class UnknownType(PushdError):
    code = "unknown_type"


class MissingField(PushdError):
    code = "missing_field"


class InvalidField(PushdError):
    code = "invalid_field"


class InvalidChannel(PushdError):
    code = "invalid_channel"


class TooManySubscriptions(PushdError):
    code = "too_many_subscriptions"


class RateLimited(PushdError):
    code = "rate_limited"
    status = 429


class Unauthorized(PushdError):
    code = "unauthorized"
    status = 401


class Forbidden(PushdError):
    code = "forbidden"
    status = 403


class NotFound(PushdError):
    code = "not_found"
    status = 404


class MethodNotAllowed(PushdError):
    code = "method_not_allowed"
    status = 405


class Conflict(PushdError):
    """The request clashes with one still in progress; retry later."""

    code = "conflict"
    status = 409


class MessagesLost(PushdError):
    """Messages may not have reached this subscriber (relay answer)."""

    code = "messages_lost"
    status = 409


class BodyTooLarge(PushdError):
    code = "body_too_large"
    status = 413


class FeatureUnavailable(PushdError):
    """The configured backend does not provide what the request needs."""

    code = "not_supported"
    status = 501


class BackendUnavailable(PushdError):
    """The shared backend cannot be reached; retrying later may work."""

    code = "backend_unavailable"
    status = 503


class CodecError(ValueError):
    """Stored or relayed message bytes pushd cannot read (malformed, or
    written by a newer pushd); never a client's fault."""


class OutcomeUnknown(BackendUnavailable):
    """The backend took the request but did not answer: it may have been
    carried out.  Retrying with the same idempotency key is safe."""


class CloseCode:
    """WebSocket close codes pushd uses; documented in docs/protocol.md.

    4000-4099 mean "do not reconnect with the same credentials"; 4100-4199
    mean "reconnecting is fine".  This split follows Pusher's, so existing
    client logic about reconnects keeps working.
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    INVALID_CLIENT_KEY = 4001
    INVALID_TOKEN = 4002
    ORIGIN_NOT_ALLOWED = 4003
    TOKEN_EXPIRED = 4005
    TOKEN_REQUIRED = 4006
    LOGGED_OUT = 4010
    OVER_CAPACITY = 4100
    RATE_LIMITED = 4108
    SLOW_CONSUMER = 4109
    CONNECTION_EXPIRED = 4111
