"""Publishing many messages in one call: ``POST /api/batch`` and the
publisher WebSocket (issue 16).

The rules are ``Hub.publish``'s, message by message and in order; what a
batch saves is the machinery around them.  A message to one channel
without an idempotency key (the chat-like case) is validated and handed
to the backend inline: no coroutine step or Deferred per message when the
backend publishes in this process (``IInProcess``: memory), event and
channel names checked once, message ids drawn from one ``os.urandom``
call, the publish counter incremented once per batch.  Anything else (several channels, an idempotency key) goes through
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


class Known:
    """Names already found valid, so publishes (single or batched) do not
    check the same few events and a bounded set of channels again for every
    message (a fifth of a chat-like message's validation, bench/chat.py).  Only names that
    passed are remembered, at most ``size`` of them (then it starts over),
    so nothing a publisher sends grows it without bound."""

    __slots__ = ("_check", "_names", "_size")

    def __init__(self, check: Any, size: int = 4096) -> None:
        self._check = check
        self._names: set[str] = set()
        self._size = size

    def __call__(self, name: object) -> str:
        names = self._names
        if type(name) is str and name in names:
            return name
        valid = self._check(name)
        if len(names) >= self._size:
            names.clear()
        names.add(valid)
        return valid


class HubBatch:
    """Mixed into ``pushd.hub.Hub``, which sets the attributes below."""

    config: Config
    clock: Any
    metrics: Metrics
    webhooks: Any
    _valid_event = Known(validate_event)
    _valid_channel = Known(validate_channel)

    async def publish_batch(self, app: App, items: list) -> list:
        """Publish each item in order; one result per item: the message id,
        or the PushdError that refused it (the others still go out).

        An item is ``(channels, event, data, exclude, users,
        idempotency_key)`` as ``Hub.publish`` takes them, or a PushdError
        the adapter already refused it with (passed through in its place).
        """
        hub: Any = self  # publish() and the backend hand-over are the Hub's
        results: list = []
        ids = message_ids(len(items))
        published = 0
        observe = self.metrics.observe_publish
        in_process = hub._in_process
        now = self.clock.seconds()  # the batch arrived at once
        for n, item in enumerate(items):
            if isinstance(item, PushdError):
                results.append(item)
                continue
            channels, event, data, exclude, users, key = item
            try:
                if key is not None or type(channels) is not list or len(channels) != 1:
                    # Hub.publish times each channel's publish itself.
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
                    started = metrics_now()
                    message = self._message(app, ids[n], channels[0], item, now)
                    if in_process is not None:
                        # No Deferred, no coroutine step per message.
                        try:
                            message = in_process.publish_now(
                                message, hub._retention(message)
                            )
                        except PushdError:
                            raise
                        except Exception as e:
                            raise hub._publish_failed(message, e) from None
                    else:
                        d = hub._hand_over(message)
                        # Fired already (a synchronous third-party backend):
                        # no coroutine step.
                        if d.called and type(d.result) is Message:
                            message = d.result
                        else:
                            message = await hub._settle(d, message)
                    self._published(app, message)
                    observe(metrics_now() - started)
                    results.append(message.id)
                    published += 1
            except PushdError as e:
                results.append(e)  # refused: not a publish to time
        if published:
            self.metrics.count_published(app.id, published)
        return results

    def _message(
        self, app: App, message_id: str, channel: Any, item: tuple, now: float
    ) -> Message:
        """One batch item to one channel as ``Hub.publish`` checks it."""
        _, event, data, exclude, users, _ = item
        event = self._valid_event(event)
        check_value(data, self.config.max_json_depth)
        if exclude is not None or users is not None:
            users = check_targets(exclude, users)
        return Message(
            self._valid_channel(channel),
            event,
            data,
            message_id,
            app.id,
            exclude,
            users,
            None,  # user_id
            None,  # offset
            None,  # epoch
            now,  # time (positional: a tenth of building one, bench/chat.py)
        )

    def _published(self, app: App, message: Message) -> None:
        """What follows publishing an app's message (not a client event):
        the webhook, and keeping it for offline users."""
        if self.webhooks is not None:
            self.webhooks.emit(
                app,
                "message_published",
                channel=message.channel,
                event=message.event,
                data=message.data,
                message_id=message.id,
            )
        hub: Any = self  # _store_offline is the Hub's
        hub._store_offline(app, message.channel, message)
