"""The common WebSocket opening handshake, read in one pass.

Autobahn's ``processHandshake`` reads a request through a general HTTP
header parser, ``urlparse`` and a Deferred around ``onConnect`` (about a
sixth of a handshake, profiled with bench/connections.py).  The requests
browsers and clients send are all alike: ``GET <path> HTTP/1.1``, each
header once, version 13, a well-formed key.  ``fast_handshake`` reads
exactly that shape and sets what Autobahn's reading sets, then calls
``onConnect`` and Autobahn's own ``succeedHandshake``; anything else
(another method or version, a repeated or missing header, subprotocols,
absolute URIs, fragments, options pushd does not use) returns False and
Autobahn reads the request itself, with its own answers and errors.
``tests/test_connections.py`` checks both readings agree, request by
request.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from autobahn.websocket.protocol import _is_same_origin, _url_to_origin
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred

_KEY_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
)
_REQUIRED = ("host", "upgrade", "connection", "sec-websocket-version")


def _read_head(head: bytes) -> tuple[str, dict[str, str]] | None:
    """(request target, headers by lowercased name) of a plain GET, or None."""
    lines = head.decode("iso-8859-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target, _, version = rest.partition(" ")
    if method != "GET" or version != "HTTP/1.1" or not target.startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or name in headers or "\n" in line or "\r" in line:
            return None
        headers[name] = value.strip()
    return target, headers


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


def fast_handshake(proto: Any) -> bool:
    """Handle ``proto``'s buffered opening handshake if it has the common
    shape; False: Autobahn's ``processHandshake`` should."""
    data = proto.data
    end = data.find(b"\r\n\r\n")
    if (
        end < 0
        or proto.trustXForwardedFor
        or proto.maxConnections
        or proto.factory.externalPort
        or 13 not in proto.versions
    ):
        return False
    read = _read_head(data[:end])
    if read is None:
        return False
    target, headers = read
    if any(name not in headers for name in _REQUIRED):
        return False
    if "sec-websocket-protocol" in headers or "sec-websocket-origin" in headers:
        return False
    if headers["sec-websocket-version"] != "13":
        return False
    if "websocket" not in _tokens(headers["upgrade"]):
        return False
    if "upgrade" not in _tokens(headers["connection"]):
        return False
    key = headers.get("sec-websocket-key", "")
    if len(key) != 24 or key[-2:] != "==" or not _KEY_CHARS.issuperset(key[:-2]):
        return False
    if target.startswith("//") or any(c in target for c in "#;%"):
        return False  # urlparse would see a host, a fragment, parameters
    host = headers["host"]
    if ":" in host and not host.endswith("]"):
        host, _, port = host.rpartition(":")
        port = port.strip()
        if not (port.isascii() and port.isdigit()):
            return False
    path, _, query = target.partition("?")
    origin = headers.get("origin", "")
    if "origin" in headers and not _origin_allowed(proto, origin):
        return False  # Autobahn refuses it, in its words
    extensions = []
    if "sec-websocket-extensions" in headers:
        extensions = proto._parseExtensionsHeader(headers["sec-websocket-extensions"])

    proto.http_request_data = data[: end + 4]
    proto.http_status_line = "GET %s HTTP/1.1" % target
    proto.http_headers = headers
    proto.http_request_uri = target
    proto.http_request_path = path
    proto.http_request_params = parse_qs(query)
    proto.http_request_host = host
    proto.websocket_version = 13
    proto.websocket_protocols = []
    proto.websocket_origin = origin
    proto.websocket_extensions = extensions
    proto.data = data[end + 4 :]
    proto._wskey = key
    _connect(proto, headers, host, path, origin, extensions)
    return True


def _origin_allowed(proto: Any, origin: str) -> bool:
    try:
        parsed = _url_to_origin(origin)
    except ValueError:
        return False
    if parsed == "null" and proto.factory.allowNullOrigin:
        return True
    factory = proto.factory
    return _is_same_origin(
        parsed,
        "https" if factory.isSecure else "http",
        factory.externalPort or factory.port,
        proto.allowedOriginsPatterns,
    )


def _connect(proto: Any, headers, host, path, origin, extensions) -> None:
    """``onConnect``, then Autobahn's ``succeedHandshake`` (at once when
    ``onConnect`` answers at once, as pushd's do)."""
    request = ConnectionRequest(
        proto.peer,
        headers,
        host,
        path,
        proto.http_request_params,
        13,
        origin,
        [],
        extensions,
    )
    try:
        result = proto.onConnect(request)
    except ConnectionDeny as e:
        proto.failHandshake(e.reason, e.code)
        return
    except Exception as e:
        proto.log.warn("Unexpected exception in onConnect ['{e}']", e=e)
        proto.failHandshake(
            "Internal server error: %s" % e, ConnectionDeny.INTERNAL_SERVER_ERROR
        )
        return
    if isinstance(result, Deferred):
        result.addCallbacks(proto.succeedHandshake, lambda f: _denied(proto, f))
    else:
        proto.succeedHandshake(result)


def _denied(proto: Any, failure: Any) -> None:
    if isinstance(failure.value, ConnectionDeny):
        proto.failHandshake(failure.value.reason, failure.value.code)
    else:
        proto.log.warn("Unexpected exception in onConnect ['{e}']", e=failure.value)
        proto.failHandshake(
            "Internal server error: %s" % failure.value,
            ConnectionDeny.INTERNAL_SERVER_ERROR,
        )
