"""The ``IRelayState`` contract, one of ``pushd.testing.BackendContract``'s mixins.

It lives in its own module to keep pushd.testing small, and uses what
``pushd.testing._Contract`` gives every mixin (``_started``, ``_peer``).  A
test class may also define ``relay_entries(backend)``: how many relay
channel entries the backend holds, to show that asking for unknown channels
stores nothing.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from zope.interface.verify import verifyObject

from pushd.interfaces import IRelayState


class RelayStateContract:
    """Every IRelayState must pass these (skipped for backends without it)."""

    _started: Any
    _peer: Any

    async def relay_entries(self, backend: Any) -> int | None:
        """Relay channel entries ``backend`` holds; None: not countable."""
        return None

    async def _state(self) -> Any:
        return await self._started(IRelayState)

    async def _entries_unchanged(self, backend: Any, before: int | None) -> bool:
        return before is None or await self.relay_entries(backend) == before

    @pytest_twisted.ensureDeferred
    async def test_relay_provides_interface(self):
        """The state declares and implements every IRelayState method."""
        assert verifyObject(IRelayState, await self._state())

    @pytest_twisted.ensureDeferred
    async def test_relay_create_exists_delete(self):
        """A created channel exists until deleted; deleting twice says so."""
        state = await self._state()
        assert await state.relay_exists("a/news") is False
        assert await state.relay_delete("a/news") is False
        await state.relay_create("a/news", 60)
        assert await state.relay_exists("a/news") is True
        assert await state.relay_exists("b/news") is False  # apps apart
        assert await state.relay_delete("a/news") is True
        assert await state.relay_exists("a/news") is False
        assert await state.relay_delete("a/news") is False

    @pytest_twisted.ensureDeferred
    async def test_relay_requests_recorded_only_on_existing_channels(self):
        """Asking for unknown channels stores nothing, however many are
        asked for; an existing channel remembers the last request until it
        is deleted."""
        state = await self._state()
        before = await self.relay_entries(state)
        for n in range(200):
            assert await state.relay_requested("a/new-%d" % n, 1000.0) is False
        assert await self._entries_unchanged(state, before)
        assert await state.relay_last_requested("a/new-1") is None
        assert await state.relay_exists("a/new-1") is False
        await state.relay_create("a/c", 60)
        assert await state.relay_last_requested("a/c") is None
        assert await state.relay_requested("a/c", 1000.5) is True
        assert await state.relay_requested("a/c", 1002.25) is True
        assert await state.relay_last_requested("a/c") == 1002.25
        await state.relay_create("a/c", 60)  # renewing keeps it
        assert await state.relay_last_requested("a/c") == 1002.25
        await state.relay_delete("a/c")
        await state.relay_create("a/c", 60)  # a new channel: never asked
        assert await state.relay_last_requested("a/c") is None

    @pytest_twisted.ensureDeferred
    async def test_relay_channels_expire_unless_renewed(self):
        """A channel not created again within its ttl is gone, with what it
        remembered; one renewed with a longer ttl stays."""
        from pushd.testing import eventually_equals

        state = await self._state()
        before = await self.relay_entries(state)
        await state.relay_create("a/short", 0.3)
        await state.relay_create("a/renewed", 0.3)
        await state.relay_create("a/renewed", 60)
        await state.relay_requested("a/short", 5.0)
        await eventually_equals(lambda: state.relay_exists("a/short"), False)
        assert await state.relay_last_requested("a/short") is None
        assert await state.relay_requested("a/short", 6.0) is False
        assert await state.relay_exists("a/renewed") is True
        await state.relay_create("a/other", 60)  # lets a lazy store prune
        if before is not None:
            assert await self.relay_entries(state) == before + 2

    @pytest_twisted.ensureDeferred
    async def test_relay_state_is_shared_between_nodes(self):
        """A PUT on one node is honoured by the other, and both answer the
        same last-request time; a delete on either is seen by both."""
        state = await self._state()
        peer = await self._peer(state)
        await state.relay_create("a/shared", 60)
        assert await peer.relay_exists("a/shared") is True
        assert await peer.relay_requested("a/shared", 77.5) is True
        assert await state.relay_last_requested("a/shared") == 77.5
        assert await peer.relay_delete("a/shared") is True
        assert await state.relay_exists("a/shared") is False
