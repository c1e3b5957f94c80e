"""Cluster state as soft state: each node owns its entries and re-asserts them.

What a node writes to Redis about itself (its lease, its users' connections,
its presence members, its subscriber counts) can vanish: Redis restarts
empty or fails over to an empty replica, or other nodes evict this node
because its lease lapsed while it could not reach Redis (issue 10).  So the
node keeps its own copy (``Owned``) and writes it all back (``reassert``):

* at once after every reconnect;
* when the heartbeat finds the marker key gone or changed (Redis lost its
  data: re-asserted silently, since nobody saw these members leave);
* when the heartbeat finds this node's lease gone (others evicted it and
  announced its members' departures: re-asserted with ``member_added`` for
  each user that is back, so every client's member list is right again).

Entries Redis holds for this node that it no longer owns (connections that
closed while Redis was unreachable) are removed, and their departures
announced then.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, FirstError, gatherResults

from pushd.message import MEMBER_ADDED, MEMBER_REMOVED

if TYPE_CHECKING:
    from pushd.backends.redis import RedisBackend

SEP = "\x1f"

# KEYS: marker, node leases.  ARGV: marker seen last, node, lease expiry,
# a fresh marker.  Renews the lease; says whether Redis lost data ('lost':
# the marker is gone or was replaced) or this node was evicted.
CHECK = """
local marker = redis.call('GET', KEYS[1])
local lease = redis.call('ZSCORE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if not marker then
  redis.call('SET', KEYS[1], ARGV[4])
  return {'lost', ARGV[4]}
end
if marker ~= ARGV[1] then return {'lost', marker} end
if not lease then return {'evicted', marker} end
return {'ok', marker}
"""
# KEYS: this node's subscriber counts.  ARGV: channel, count, ...
OCCUPANCY = """
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


class Owned:
    """This node's entries, as the hub last set them."""

    def __init__(self) -> None:
        # (channel key, user, connection) -> user info
        self.members: dict[tuple[str, str, str], Any] = {}
        # (app, user, connection)
        self.users: set[tuple[str, str, str]] = set()
        # channel key -> local subscribers
        self.occupancy: dict[str, int] = {}
        # (channel key, user): left while Redis was unreachable, not announced
        self.unannounced: set[tuple[str, str]] = set()


def _start(d: Any) -> Deferred:
    return Deferred.fromCoroutine(d)


async def reassert(backend: RedisBackend, announce: bool) -> None:
    """Write everything ``backend`` owns back to Redis and remove what it no
    longer owns.  Commands are sent without waiting in between, in the same
    order as the hub's own, so a join or leave racing this one wins."""
    owned = backend.owned
    entries = set(await backend._run("smembers", backend._k("node", backend.node_id)))
    pending: list[Deferred] = [_start(backend._renew_lease())]
    joins = []
    for (channel, user, conn), info in list(owned.members.items()):
        d = _start(backend._join(channel, user, info, conn))
        joins.append((d, channel, user, info))
        pending.append(d)
    for app, user, conn in list(owned.users):
        pending.append(_start(backend._connect(app, user, conn)))
    flat: list[Any] = []
    for channel, count in owned.occupancy.items():
        flat += [channel, count]
    pending.append(
        _start(
            backend._run("eval", OCCUPANCY, [backend._k("occ", backend.node_id)], flat)
        )
    )
    leaves = []
    for entry in entries:
        kind, a, b, conn = entry.split(SEP)
        if kind == "m" and (a, b, conn) not in owned.members:
            d = _start(backend._leave(backend.node_id, a, b, conn))
            leaves.append((d, a, b))
            pending.append(d)
        elif kind == "u" and (a, b, conn) not in owned.users:
            pending.append(
                _start(backend._disconnect_user(backend.node_id, a, b, conn))
            )
    try:
        await gatherResults(pending, consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()
    for d, channel, user, info in joins:
        if announce and d.result and _presence(channel):
            await announce_member(backend, channel, user, MEMBER_ADDED, info)
    for d, channel, user in leaves:
        owned.unannounced.discard((channel, user))
        if d.result and _presence(channel):
            await announce_member(backend, channel, user, MEMBER_REMOVED)
    await announce_departures(backend)


async def announce_departures(backend: RedisBackend) -> None:
    """Say ``member_removed`` for users who left while Redis was unreachable
    and are in the channel on no node now."""
    owned = backend.owned
    for channel, user in sorted(owned.unannounced):
        owned.unannounced.discard((channel, user))
        if any(k[0] == channel and k[1] == user for k in owned.members):
            continue
        if not await backend._run("hexists", backend._k("m", channel), user):
            await announce_member(backend, channel, user, MEMBER_REMOVED)


async def announce_member(
    backend: RedisBackend,
    channel: str,
    user: str,
    event: str,
    info: Any = None,
) -> None:
    """Publish a presence event the backend itself caused, and tell the hub
    (webhooks)."""
    app, _, name = channel.partition("/")
    data: dict = {"user_id": user}
    if event == MEMBER_ADDED:
        data["user_info"] = info
    await backend._announce(channel, event, data)
    callbacks = backend._returns if event == MEMBER_ADDED else backend._departures
    for callback in callbacks:
        callback(app, name, user)


def _presence(channel: str) -> bool:
    return channel.partition("/")[2].startswith("presence-")


def member_entry(channel: str, user: str, conn: str) -> str:
    return SEP.join(("m", channel, user, conn))


def user_entry(app: str, user: str, conn: str) -> str:
    return SEP.join(("u", app, user, conn))


def info_json(info: Any) -> str:
    return json.dumps(info)
