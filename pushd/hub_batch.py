"""Publishing many messages in one call: ``POST /api/batch`` and the
publisher WebSocket (issue 16).

The rules are ``Hub.publish``'s, message by message and in order; what a
batch saves is the machinery around them.  A message to one channel
without an idempotency key (the chat-like case) is validated and handed
to the backend inline: no coroutine layers per message, message ids drawn
from one ``os.urandom`` call, the publish counter incremented once per
batch.  Anything else (several channels, an idempotency key) goes through
``Hub.publish`` itself.  Profiled with bench/chat.py, the per-message
layers of ``Hub.publish`` cost about as much as the publish.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pushd.apps import App
from pushd.channels import validate_channel
from pushd.errors import InvalidField, PushdError
from pushd.inputs import check_value, validate_event
from pushd.message import Message
from pushd.metrics import now as metrics_now

if TYPE_CHECKING:
    from pushd.config import Config
    from pushd.metrics import Metrics


def check_targets(exclude: object, users: object) -> tuple | None:
    """``exclude`` and ``users`` of a publish, checked; ``users`` as a tuple."""
    if exclude is not None and not isinstance(exclude, str):
        raise InvalidField("'exclude' must be a connection id")
    if users is None:
        return None
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise InvalidField("'users' must be a list of user ids")
    return tuple(users)


def message_ids(count: int) -> list[str]:
    """``count`` new message ids (as ``new_message_id``), from one read of
    the system's random source."""
    raw = os.urandom(8 * count).hex()
    return [raw[i : i + 16] for i in range(0, 16 * count, 16)]


class HubBatch:
    """Mixed into ``pushd.hub.Hub``, which sets the attributes below."""

    config: Config
    clock: Any
    metrics: Metrics
    webhooks: Any

    async def publish_batch(self, app: App, items: list) -> list:
        """Publish each item in order; one result per item: the message id,
        or the PushdError that refused it (the others still go out).

        An item is ``(channels, event, data, exclude, users,
        idempotency_key)`` as ``Hub.publish`` takes them, or a PushdError
        the adapter already refused it with (passed through in its place).
        """
        hub: Any = self  # publish() is the Hub's
        results: list = []
        ids = message_ids(len(items))
        published = 0
        started = metrics_now()
        for n, item in enumerate(items):
            if isinstance(item, PushdError):
                results.append(item)
                continue
            channels, event, data, exclude, users, key = item
            try:
                if (
                    key is not None
                    or not isinstance(channels, list)
                    or len(channels) != 1
                ):
                    results.append(
                        await hub.publish(
                            app,
                            channels,
                            event,
                            data,
                            exclude=exclude,
                            users=users,
                            idempotency_key=key,
                        )
                    )
                else:
                    await self._publish_one(app, ids[n], channels[0], item)
                    results.append(ids[n])
                    published += 1
            except PushdError as e:
                results.append(e)
            ended = metrics_now()
            self.metrics.observe_publish(ended - started)
            started = ended
        if published:
            self.metrics.published.labels(app.id).inc(published)
        return results

    async def _publish_one(
        self, app: App, message_id: str, channel: Any, item: tuple
    ) -> None:
        """``Hub.publish`` of one message to one channel, inline."""
        _, event, data, exclude, users, _ = item
        event = validate_event(event)
        check_value(data, self.config.max_json_depth)
        users = check_targets(exclude, users)
        name = validate_channel(channel)
        message = Message(
            name,
            event,
            data,
            message_id,
            app.id,
            exclude,
            users,
            time=self.clock.seconds(),
        )
        hub: Any = self  # _publish and _store_offline are the Hub's
        message = await hub._publish(message)
        if self.webhooks is not None:
            self.webhooks.emit(
                app,
                "message_published",
                channel=name,
                event=event,
                data=data,
                message_id=message_id,
            )
        hub._store_offline(app, name, message)
