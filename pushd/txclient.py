"""The publishing client for Twisted programs: ``PushClient``'s methods,
each returning a Deferred (``pip install pushd[treq]``)::

    from pushd.txclient import TxPushClient
    push = TxPushClient("http://127.0.0.1:8000", api_secret="...")
    message_id = await push.publish("news", "headline", {"title": "hello"})

Failures errback with ``pushd.client.PushError``, as the synchronous client
raises it: pushd's status and error code, or status 0 and
``connection_error`` when pushd could not be reached or did not answer in
``timeout`` seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.web.client import ResponseFailed

from pushd.client import CONNECTION_ERROR, PushError, _Requests, error_from_body

_UNREACHABLE = (
    ConnectError,
    DNSLookupError,
    TimeoutError,
    ResponseFailed,
    CancelledError,
    ValueError,
)


class TxPushClient(_Requests):
    """``reactor``: the reactor to use (tests); ``http``: a treq-like client
    (e.g. ``treq.client.HTTPClient`` with your own pool)."""

    def __init__(
        self,
        url: str,
        api_secret: str,
        timeout: float = 10.0,
        key: str | None = None,
        signed: bool = False,
        http: Any = None,
    ) -> None:
        super().__init__(url, api_secret, timeout, key, signed)
        self._http = http or treq

    def _call(
        self, method: str, path: str, body: Any = None, read: Callable = lambda r: r
    ) -> Deferred:
        return Deferred.fromCoroutine(self._request(method, path, body, read))

    async def _request(self, method: str, path: str, body: Any, read: Callable) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {
            k.encode(): [v.encode()]
            for k, v in self._headers(method, path, data).items()
        }
        try:
            response = await self._http.request(
                method,
                self.url + path,
                data=data,
                headers=headers,
                timeout=self._timeout,
            )
            content = await response.content()
        except _UNREACHABLE as e:
            raise PushError(
                0, CONNECTION_ERROR, "cannot reach %s: %s" % (self.url, e)
            ) from None
        if response.code >= 400:
            raise error_from_body(response.code, content, response.phrase.decode())
        try:
            return read(json.loads(content or b"null"))
        except ValueError:
            raise PushError(
                response.code, CONNECTION_ERROR, "%s did not answer JSON" % self.url
            ) from None

    def publisher(self, batch_size: int = 100, tls: Any = None) -> Deferred:
        """Open a publisher WebSocket (``GET /api/publish``): fires with a
        ``pushd.txpublisher.Publisher`` whose ``publish``/``batch`` go over
        that one connection, authenticated at the handshake with this
        client's credentials (sent in headers, never in the URL)."""
        from twisted.internet import reactor

        from pushd.txpublisher import PATH, open_publisher

        url = "ws" + self.url[len("http") :] + PATH
        headers = self._headers("GET", PATH, None)
        headers.pop("Content-Type", None)
        return Deferred.fromCoroutine(
            open_publisher(reactor, url, headers, batch_size, tls)
        )
