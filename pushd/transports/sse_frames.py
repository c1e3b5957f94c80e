"""``POST /sse/frames``: what an SSE client sends, since its stream only reads.

Body (JSON)::

    {"key": APP_KEY, "connection_id": ID, "stream_secret": SECRET,
     "frame": {"type": "subscribe", "channel": "private-room", "auth": "..."}}

``connection_id`` and ``stream_secret`` come from the stream's
``pushd:connected`` event; ``frame`` is any frame a WebSocket client may
send (subscribe with ``auth``/``channel_data``/``since``, unsubscribe,
client_event, ping), handled by the stream's Session under the same rules
and rate limit, with replies on the stream.  Any node may take the POST:
the frame travels to the node holding the stream.  Answers: 202
``{"accepted": true}``; 401 wrong stream secret or app key; 404 no such
stream open; 400 malformed body.
"""

from __future__ import annotations

import hmac
from typing import Any

from pushd.api import error_response, json_response, read_json
from pushd.auth import stream_secret
from pushd.errors import InvalidField, NotFound, PushdError, Unauthorized


async def post_frame(hub: Any, request: Any) -> bytes:
    try:
        body = read_json(request, hub.config.max_json_depth)
        if not isinstance(body, dict):
            raise InvalidField("the body is a JSON object")
        connection_id, secret, frame = (
            body.get("connection_id"),
            body.get("stream_secret"),
            body.get("frame"),
        )
        if not isinstance(connection_id, str) or not isinstance(secret, str):
            raise InvalidField("'connection_id' and 'stream_secret' are strings")
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise InvalidField("'frame' is a JSON object with a string 'type'")
        key = body.get("key")
        app = hub.apps.by_key(key if isinstance(key, str) else "")
        if app is None or not hmac.compare_digest(
            stream_secret(app.secret, connection_id).encode(),
            secret.encode("utf-8", "replace"),
        ):
            raise Unauthorized("wrong stream_secret for this connection_id and key")
        if not await hub.send_to_stream(app, connection_id, frame):
            raise NotFound("no SSE stream %s is open" % connection_id[:40])
    except PushdError as e:
        return error_response(request, e)
    return json_response(request, 202, {"accepted": True})
