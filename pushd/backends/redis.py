"""Many pushd nodes as one, through Redis (txredisapi).

Every node holds two Redis connections: one for commands and one
subscriber connection, SUBSCRIBEd to ``PREFIX:c:<channel key>`` for exactly
the channels it has local subscribers on.  A publish is a PUBLISH; every
node, the publishing one included, delivers what comes back on its
subscriber connection, so all nodes see one order per channel: Redis's.

Membership (presence, users online, subscriber counts) lives in Redis too,
each entry tagged with the node that owns it.  Nodes renew a lease
(``PREFIX:nodes``, a sorted set of expiry times) every ``heartbeat``
seconds; any node that finds a lease expired cleans up after the dead node
(under a lock) and announces ``member_removed`` for users that had their last
connection there.  So a node killed with -9 leaves no ghost members for
longer than ``node-ttl`` + ``heartbeat`` seconds.

When Redis is unreachable, nothing hangs: commands time out after
``timeout`` seconds, publishes are refused with BackendUnavailable (HTTP
503) and delivered nowhere, so a retry cannot duplicate them, and both
connections reconnect by themselves.  After a reconnect the node puts back
what it owns (``redis_state``), subscribes again to every channel and
catches up on channels that keep history before it delivers live messages
(``redis_tracks``); on other channels it reports that messages may have
been lost.  The outage and the recovery are logged once each.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import replace
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from pushd.backends import parse_argstring, redis_state
from pushd.backends.redis_commands import CommandProtocol
from pushd.backends.redis_relay import RedisRelayState
from pushd.backends.redis_subscriber import Subscriber
from pushd.backends.redis_tracks import Tracks
from pushd.backends.stores import RedisStores
from pushd.errors import BackendUnavailable, CodecError, OutcomeUnknown
from pushd.history import HistoryResult, Retention, answer_since
from pushd.interfaces import (
    Deliver,
    IBackend,
    IConnectionRegistry,
    IDeliveryGaps,
    IIdempotencyStore,
    IInFlight,
    IMemberReturns,
    IMultiProcess,
    INonceStore,
    IReadiness,
    IRelayState,
)
from pushd.message import (
    CODEC_VERSION,
    MEMBER_REMOVED,
    Message,
    channel_key,
    decode_message,
    encode_message,
    new_message_id,
)

# KEYS: member connections of (channel, user), channel members hash, node set
# ARGV: user, user info JSON, member entry, node entry.  Returns 1 if first.
_JOIN = """
redis.call('SADD', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
local first = 1 - redis.call('HEXISTS', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return first
"""
# KEYS as _JOIN; ARGV: user, member entry, node entry.  Returns 1 if last.
_LEAVE = """
local removed = redis.call('SREM', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[3])
if removed == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
# KEYS: user's connections, app's online users, node set; ARGV: user, entry, node entry
_CONNECT = """
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""
_DISCONNECT = """
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[3], ARGV[3])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
"""
# ARGV: prefix, now, [channel key].  Sums subscriber counts of live nodes.
_OCCUPANCY = """
local nodes = redis.call('ZRANGEBYSCORE', ARGV[1] .. ':nodes', ARGV[2], '+inf')
local totals, order = {}, {}
for _, node in ipairs(nodes) do
  local occ = ARGV[1] .. ':occ:' .. node
  if ARGV[3] then
    local n = tonumber(redis.call('HGET', occ, ARGV[3]) or '0')
    if totals[ARGV[3]] == nil then order[#order + 1] = ARGV[3]; totals[ARGV[3]] = 0 end
    totals[ARGV[3]] = totals[ARGV[3]] + n
  else
    local flat = redis.call('HGETALL', occ)
    for i = 1, #flat, 2 do
      if totals[flat[i]] == nil then order[#order + 1] = flat[i]; totals[flat[i]] = 0 end
      totals[flat[i]] = totals[flat[i]] + tonumber(flat[i + 1])
    end
  end
end
local out = {}
for _, k in ipairs(order) do out[#out + 1] = k; out[#out + 1] = tostring(totals[k]) end
return out
"""

# Publish, and say whether anyone keeps the channel for offline delivery
# (pushd.hub stores the message for them next, see _no_keepers).
# KEYS: pub/sub channel, keepers set; ARGV: message JSON.
_PUBLISH = """
redis.call('PUBLISH', KEYS[1], ARGV[1])
return redis.call('EXISTS', KEYS[2])
"""
# Publish and keep, atomically, so offsets follow delivery order.
# KEYS: stream, offset counter, epoch, pub/sub channel, keepers set
# ARGV: message JSON, size, ttl in ms, now (s), a fresh epoch
_PUBLISH_KEPT = """
local epoch = redis.call('GET', KEYS[3])
-- Everything kept has expired by the clock history reads use (ARGV[4]),
-- even if Redis has not dropped the keys yet: the history is lost.
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if epoch and (not newest
    or tonumber(newest[2][4]) + tonumber(ARGV[3]) / 1000 < tonumber(ARGV[4])) then
  epoch = nil
end
if not epoch then
  epoch = ARGV[5]
  redis.call('SET', KEYS[3], epoch)
  redis.call('DEL', KEYS[1], KEYS[2])
end
local offset = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-1', 'p', ARGV[1], 't', ARGV[4])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
-- pushd.message.encode_message's object, with the position in front
redis.call('PUBLISH', KEYS[4],
  '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '",' .. string.sub(ARGV[1], 2))
return {offset, epoch, redis.call('EXISTS', KEYS[5])}
"""
# KEYS: stream, offset counter, epoch.  Returns {epoch, offset, id, payload, t, ...}
_READ_KEPT = """
local out = {redis.call('GET', KEYS[3]) or '', redis.call('GET', KEYS[2]) or '0'}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  out[#out + 1] = entry[1]
  out[#out + 1] = entry[2][2]
  out[#out + 1] = entry[2][4]
end
return out
"""

# Store a message for offline users.  ARGV: prefix, app, channel key,
# message JSON, size, ttl ms, extra users...  Returns how many got it.
_STORE_OFFLINE = """
local prefix, app = ARGV[1], ARGV[2]
local users = redis.call('SMEMBERS', prefix .. ':keepers:' .. ARGV[3])
for i = 7, #ARGV do users[#users + 1] = ARGV[i] end
local done, stored = {}, 0
for _, user in ipairs(users) do
  if not done[user] then
    done[user] = true
    if redis.call('SCARD', prefix .. ':u:' .. app .. ':' .. user) == 0 then
      local box = prefix .. ':inbox:' .. app .. ':' .. user
      redis.call('RPUSH', box, ARGV[4])
      redis.call('LTRIM', box, -tonumber(ARGV[5]), -1)
      redis.call('PEXPIRE', box, ARGV[6])
      stored = stored + 1
    end
  end
end
return stored
"""
# KEYS: inbox.  Returns and removes its content.
_TAKE_OFFLINE = """
local all = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return all
"""

SEP = "\x1f"
# Longest wait between reconnection attempts (txredisapi's default grows to
# 10 s, which made recovery slow).
RECONNECT_MAX_DELAY = 1.0
# Error replies of a Redis that is up but cannot serve yet.
_NOT_READY = {"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"}


@implementer(IBackend, IReadiness, IDeliveryGaps, IMemberReturns, IIdempotencyStore)
@implementer(INonceStore, IConnectionRegistry)  # pushd.backends.stores
@implementer(IRelayState)  # pushd.backends.redis_relay
@implementer(IMultiProcess)  # --workers N (pushd.workers)
@implementer(IInFlight)  # the WebSocket flush waits for our own copies
class RedisBackend(RedisStores, RedisRelayState):
    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        prefix: str = "pushd",
        node_ttl: float = 15.0,
        heartbeat: float = 5.0,
        timeout: float = 3.0,
    ) -> None:
        self._reactor = reactor
        self.host, self.port, self.db, self._password = host, port, db, password
        self.prefix = prefix
        self.node_ttl, self.heartbeat, self.timeout = node_ttl, heartbeat, timeout
        self.node_id = secrets.token_hex(6)
        self._delivers: dict[str, list[Deliver]] = {}
        # (channel key, message id) -> fired when our own copy is delivered here
        self._echoes: dict[tuple[str, str], Deferred] = {}
        self._landed: list = []  # IInFlight.watch_landed callbacks
        # (channel key, message id) published while nobody kept the channel
        self._unkept: dict[tuple[str, str], bool] = {}
        self._subscriber: Subscriber | None = None
        self._sub_factory: Any = None
        self._redis: Any = None
        self._heartbeat: LoopingCall | None = None
        self._up = True  # last state logged
        self._reconnects = 0
        self._commands = 0
        self._command_seconds = 0.0
        self._stopping = False
        self._started = False
        self._recovering = False
        self._departures: list = []
        self._returns: list = []
        self._gaps: list = []
        self.owned = redis_state.Owned()
        self._tracks = Tracks(
            self._deliver_locally,
            self._read_stream,
            self._gap,
            lambda seconds: deferLater(self._reactor, seconds, lambda: None),
        )
        self._marker = ""  # the data-loss marker as last seen
        # After reconnecting, a node waits before it counts others dead:
        # after an outage every node gets the time to renew its lease
        # (issue 10).  Set when a recovery completes.
        self._healthy_since = float("-inf")

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Deferred:
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        connected = txredisapi.lazyConnection(
            self.host,
            self.port,
            dbid=self.db,
            password=self._password,
            reconnect=True,
            replyTimeout=self.timeout,
            connectTimeout=self.timeout,
            convertNumbers=False,
        )
        # Reconnect quickly after an outage (txredisapi's default backoff
        # grows to 10 s): 0.2 s, then up to 2 s between attempts.
        connected._factory.initialDelay = 0.2
        connected._factory.maxDelay = RECONNECT_MAX_DELAY
        # Connections are built once connected (never before this returns).
        connected._factory.protocol = CommandProtocol
        self._redis = connected
        try:
            await self._timed(connected._connected)
        except BackendUnavailable:
            connected.disconnect()
            raise BackendUnavailable(
                "cannot reach Redis at %s:%d" % (self.host, self.port)
            ) from None
        factory = txredisapi.SubscriberFactory(isLazy=True)
        factory.protocol = Subscriber
        factory.backend = self
        factory.password = self._password
        factory.reconnect = True
        factory.convertNumbers = False
        factory.maxDelay = RECONNECT_MAX_DELAY
        factory.initialDelay = 0.2
        factory.startConnecting(
            txredisapi._makeEndpoint(self.host, self.port, self.timeout)
        )
        self._sub_factory = factory
        await self._timed(factory.deferred)
        await self._check()
        await self._check_codec_versions()
        self._started = True
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self._reactor
        self._heartbeat.start(self.heartbeat, now=False)
        self._log.info(
            "redis backend: node {node} on {host}:{port} db {db} prefix {prefix}",
            node=self.node_id,
            host=self.host,
            port=self.port,
            db=self.db,
            prefix=self.prefix,
        )

    async def _check_codec_versions(self) -> None:
        """Say so when live nodes of a previous pushd share this Redis: they
        cannot read what this node publishes (docs/plugins.md, upgrades)."""
        await self._run("hset", self._k("codec"), self.node_id, CODEC_VERSION)
        now = "%f" % self._reactor.seconds()
        live = await self._run("zrangebyscore", self._k("nodes"), now, "+inf")
        versions = await self._run("hgetall", self._k("codec"))
        older = sorted(n for n in live if versions.get(n) != str(CODEC_VERSION))
        if older:
            self._log.warn(
                "redis backend: {count} live node(s) ({nodes}) use another "
                "message codec than this node's version {version}; until every "
                "node sharing prefix {prefix} runs the same pushd, messages "
                "between them are dropped and logged",
                count=len(older),
                nodes=", ".join(older),
                version=CODEC_VERSION,
                prefix=self.prefix,
            )

    def stop(self) -> Deferred:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        try:
            await self._cleanup_node(self.node_id, announce=True)
        except Exception:
            self._log.failure("cleaning up node {node} on stop", node=self.node_id)
        for closing in (self._sub_factory, self._redis):
            if closing is not None:
                try:
                    await closing.disconnect()
                except Exception:
                    pass

    # -- keys -----------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _chan(self, key: str) -> str:
        return self._k("c", key)

    # -- commands, bounded in time ------------------------------------------------

    async def _timed(self, d: Deferred) -> Any:
        d.addTimeout(self.timeout, self._reactor)
        started = time.perf_counter()
        try:
            result = await d
        except (TimeoutError, txredisapi.ConnectionError, ConnectionError) as e:
            # Callers get 503; the outage itself is logged, once, from the
            # subscriber connection's state.
            if "Not connected" in str(e):
                raise BackendUnavailable("Redis is unreachable") from None
            # Sent, but no answer: Redis may have carried it out.
            raise OutcomeUnknown("Redis did not answer") from None
        except txredisapi.ResponseError as e:
            # A Redis that is starting (loading its append-only file) or
            # failing over refuses commands for a while: an outage too.
            if str(e).split(" ", 1)[0] in _NOT_READY:
                raise BackendUnavailable("Redis is not ready: %s" % e) from None
            raise
        finally:
            self._commands += 1
            self._command_seconds += time.perf_counter() - started
        return result

    def state(self) -> dict:
        """For metrics and stats: up, reconnects, commands and their time."""
        return {
            "up": self._up,
            "reconnects": self._reconnects,
            "commands": self._commands,
            "command_seconds": self._command_seconds,
        }

    def nodes(self) -> Deferred:
        """Fires with the nodes whose lease is current, each with the age of
        its lease in seconds (``GET /api/stats``)."""
        return Deferred.fromCoroutine(self._nodes())

    async def _nodes(self) -> list[dict]:
        now = self._reactor.seconds()
        leases = await self._run(
            "zrangebyscore", self._k("nodes"), now, "+inf", withscores=True
        )
        return [
            {
                "id": node,
                "lease_age_seconds": round(
                    max(0.0, now - (float(expiry) - self.node_ttl)), 3
                ),
            }
            for node, expiry in leases
        ]

    async def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._redis is None:
            raise BackendUnavailable("Redis backend is not started")
        return await self._timed(getattr(self._redis, method)(*args, **kwargs))

    def _script(self, script: str, keys: list, args: list) -> Deferred:
        """EVAL(SHA) of ``script`` on the command connection itself.

        txredisapi's handler picks the connection for every call through a
        generator and two more Deferreds (a pool of one here): a fifth of a
        publish's own cost on this node (bench/compare.py, 1 subscriber).
        Without a live connection, the handler's path says why."""
        assert self._redis is not None
        pool = self._redis._factory.pool
        if pool and pool[0].connected:
            return pool[0].eval(script, keys, args)
        return self._redis.eval(script, keys, args)

    def _set_up(self, up: bool, why: str = "") -> None:
        if up == self._up or self._stopping:
            return
        self._up = up
        if up:
            self._reconnects += 1
            self._log.info(
                "redis backend: connection to {host}:{port} restored",
                host=self.host,
                port=self.port,
            )
        else:
            self._log.warn(
                "redis backend: lost {host}:{port} ({why}); refusing "
                "publishes and reconnecting",
                host=self.host,
                port=self.port,
                why=why,
            )

    # -- pub/sub ------------------------------------------------------------------

    def _subscriber_up(self, proto: Subscriber) -> Deferred | None:
        self._subscriber = proto
        if self._started:
            self._recovering = True
            d = Deferred.fromCoroutine(self._recover(proto))
            d.addErrback(lambda f: self._log.failure("recovering failed", f))
        return None

    async def _recover(self, proto: Subscriber) -> None:
        """Back after an outage: put back what this node owns, subscribe
        again, catch up, and only then say "restored"."""
        while self._subscriber is proto and not self._stopping:
            try:
                mode = await self._check()
                await redis_state.reassert(self, announce=mode == "evicted")
                self._tracks.hold_all()
                keys = list(self._delivers)
                if keys:
                    await self._timed(proto.subscribe([self._chan(k) for k in keys]))
                for key in keys:
                    await self._tracks.catch_up(key)
                if self._subscriber is not proto:
                    return  # lost again meanwhile; the next recovery goes on
            except BackendUnavailable:
                await deferLater(self._reactor, 0.1, lambda: None)
                continue
            except Exception:
                self._log.failure("recovering after an outage failed; retrying")
                await deferLater(self._reactor, 0.5, lambda: None)
                continue
            self._recovering = False
            self._healthy_since = self._reactor.seconds()
            self._set_up(True)
            return

    def unready_reason(self) -> str | None:
        if self._stopping:
            return "shutting down"
        if self._subscriber is None:
            # /ready answers anyone who can reach the port: where Redis
            # lives is for the log ("lost host:port"), not for them.
            return "Redis is unreachable"
        if self._recovering:
            return "catching up after a Redis outage"
        return None

    def watch_gaps(self, callback) -> None:
        self._gaps.append(callback)

    def _gap(self, key: str, reason: str, kept: bool) -> None:
        for callback in self._gaps:
            try:
                callback(key, reason, kept)
            except Exception:
                self._log.failure("reporting a gap on {key}", key=key)

    def watch_returns(self, callback) -> None:
        self._returns.append(callback)

    def _subscriber_down(self, proto: Subscriber) -> None:
        if self._subscriber is proto:
            self._subscriber = None
            self._healthy_since = float("inf")  # until recovered
            self._set_up(False, "subscriber connection lost")
            self._no_copies(None)

    def _received(self, channel: str, payload: str | bytes) -> None:
        key = channel[len(self.prefix) + 3 :]
        if key not in self._tracks:
            return
        try:
            message = decode_message(payload, key)
        except CodecError as e:
            self._log.warn(
                "ignoring a message on {channel}: {why}", channel=channel, why=e
            )
            return
        self._tracks.received(message)
        echo = self._echoes.pop((key, message.id), None)
        if echo is not None:
            if not self._echoes:
                self._all_landed()
            echo.callback(None)

    # -- IInFlight: our own copies on their way back -------------------------

    def in_flight(self) -> int:
        return len(self._echoes)

    def watch_landed(self, callback) -> None:
        self._landed.append(callback)

    def _all_landed(self) -> None:
        for callback in self._landed:
            try:
                callback()
            except Exception:
                self._log.failure("in-flight watcher {cb!r} failed", cb=callback)

    def _no_copies(self, channel: str | None) -> None:
        """Our copies of publishes to ``channel`` (None: to any channel) will
        not come back (nobody here listens any more, or the subscriber
        connection is gone): their publishers stop waiting for them, as
        after ``timeout``, and so does the flush."""
        gone = [k for k in self._echoes if channel is None or k[0] == channel]
        echoes = [self._echoes.pop(echo_key) for echo_key in gone]
        if gone and not self._echoes:
            self._all_landed()
        for echo in echoes:
            echo.callback(None)

    def _drop_echo(self, echo: Deferred | None, echo_key: tuple[str, str]) -> None:
        """Give up on our copy of a publish (not sent, refused, or late)."""
        if echo is not None and self._echoes.get(echo_key) is echo:
            del self._echoes[echo_key]
            if not self._echoes:
                self._all_landed()

    def _deliver_locally(self, message: Message, delivers: list | None = None) -> None:
        for deliver in tuple(
            delivers if delivers is not None else self._delivers.get(message.key, ())
        ):
            try:
                deliver(message)
            except Exception:
                self._log.failure("delivery to {deliver!r} failed", deliver=deliver)

    def publish(self, message: Message, retention: Retention | None = None) -> Deferred:
        return Deferred.fromCoroutine(self._publish(message, retention))

    async def _publish(self, message: Message, retention: Retention | None) -> Message:
        if self._subscriber is None:
            raise BackendUnavailable("Redis is unreachable: not published; retry later")
        # Backpressure: when this node has subscribers on the channel, the
        # publish completes once our own copy has come back and been fanned
        # out, as with the memory backend.  Without it a fast publisher
        # outruns fan-out, latency grows without bound (measured: seconds),
        # and Redis may drop the subscriber connection for its output buffer.
        echo_key = (message.key, message.id)
        echo = None
        if (
            message.key in self._delivers
            and not self._recovering
            and echo_key not in self._echoes
        ):
            echo = self._echoes[echo_key] = Deferred()
        try:
            key = message.key
            if self._redis is None:
                raise BackendUnavailable("Redis backend is not started")
            if retention is None:
                kept = await self._timed(
                    self._script(
                        _PUBLISH,
                        [self._chan(key), self._k("keepers", key)],
                        [encode_message(message)],
                    )
                )
            else:
                offset, epoch, kept = await self._timed(
                    self._script(
                        _PUBLISH_KEPT,
                        [
                            self._k("h", key),
                            self._k("ho", key),
                            self._k("he", key),
                            self._chan(key),
                            self._k("keepers", key),
                        ],
                        [
                            encode_message(message),
                            retention.size,
                            int(retention.ttl * 1000),
                            "%f" % self._reactor.seconds(),
                            secrets.token_hex(4),
                        ],
                    )
                )
                message = replace(message, offset=int(offset), epoch=epoch)
            if not int(kept):
                self._no_keepers(key, message.id)
        except OutcomeUnknown:
            self._drop_echo(echo, echo_key)
            raise OutcomeUnknown(
                "Redis did not answer: the message may or may not have been "
                "published; retry with the same idempotency key"
            ) from None
        except BackendUnavailable:
            self._drop_echo(echo, echo_key)
            raise BackendUnavailable(
                "Redis is unreachable: not published; retry later"
            ) from None
        except BaseException:
            # Refused by Redis (an error reply): no copy is coming.
            self._drop_echo(echo, echo_key)
            raise
        if echo is not None and not echo.called:
            echo.addTimeout(self.timeout, self._reactor)
            try:
                await echo
            except TimeoutError:
                # Redis took it; our copy is late.  Not an error for the publisher.
                self._drop_echo(echo, echo_key)
        return message

    def history(self, channel, since, epoch, limit, retention) -> Deferred:
        return Deferred.fromCoroutine(
            self._history(channel, since, epoch, limit, retention)
        )

    async def _history(
        self,
        channel: str,
        since: int | None,
        epoch: str | None,
        limit: int,
        retention: Retention,
    ) -> HistoryResult:
        flat = await self._run(
            "eval",
            _READ_KEPT,
            [self._k("h", channel), self._k("ho", channel), self._k("he", channel)],
            [],
        )
        current, offset = flat[0], int(flat[1])
        oldest_time = self._reactor.seconds() - retention.ttl
        kept = []
        for i in range(2, len(flat), 3):
            if float(flat[i + 2]) >= oldest_time:
                position = int(flat[i].split("-")[0])
                kept.append(
                    replace(
                        decode_message(flat[i + 1], channel),
                        offset=position,
                        epoch=current,
                    )
                )
        if not current:
            return HistoryResult([], "", 0, since in (None, 0))
        return answer_since(kept, current, offset, since, epoch, limit)

    async def _read_stream(self, channel: str) -> tuple[str, int, list[Message]]:
        """The channel's whole stream, for catching up: (epoch, offset, kept)."""
        flat = await self._run(
            "eval",
            _READ_KEPT,
            [self._k("h", channel), self._k("ho", channel), self._k("he", channel)],
            [],
        )
        epoch = flat[0]
        kept = [
            replace(
                decode_message(flat[i + 1], channel),
                offset=int(flat[i].split("-")[0]),
                epoch=epoch,
            )
            for i in range(2, len(flat), 3)
        ]
        return epoch, int(flat[1]), kept

    # -- idempotency keys -------------------------------------------------------

    def claim(self, key: str, value: str, window: float) -> Deferred:
        async def run() -> str | None:
            # As publish: known down, refuse now; waiting out the timeout
            # per key held a publisher's whole frame (3 s a message).
            if self._subscriber is None:
                raise BackendUnavailable(
                    "Redis is unreachable: not published; retry later"
                )
            stored = await self._run(
                "set",
                self._k("idem", key),
                value,
                pexpire=int(window * 1000),
                only_if_not_exists=True,
            )
            if stored:
                return None
            return await self._run("get", self._k("idem", key))

        return Deferred.fromCoroutine(run())

    def settle(self, key: str, value: str, window: float) -> Deferred:
        d = Deferred.fromCoroutine(
            self._run("set", self._k("idem", key), value, pexpire=int(window * 1000))
        )
        return d.addCallback(lambda _: None)

    def release(self, key: str) -> Deferred:
        d = Deferred.fromCoroutine(self._run("delete", [self._k("idem", key)]))
        return d.addCallback(lambda _: None)

    def forget(self, channel: str) -> Deferred:
        d = Deferred.fromCoroutine(
            self._run(
                "delete",
                [self._k("h", channel), self._k("ho", channel), self._k("he", channel)],
            )
        )
        return d.addCallback(lambda _: None)

    def subscribe(self, channel: str, deliver: Deliver) -> Deferred:
        delivers = self._delivers.get(channel)
        if delivers:
            delivers.append(deliver)
            return succeed(None)
        return Deferred.fromCoroutine(self._subscribe(channel, deliver))

    async def _subscribe(self, channel: str, deliver: Deliver) -> None:
        """SUBSCRIBE, then read where the channel's stream stands: what
        arrived before that is older than any local subscriber, what comes
        after is delivered in order from there."""
        if self._subscriber is None:
            raise BackendUnavailable("Redis is unreachable: cannot subscribe now")
        self._delivers[channel] = [deliver]
        self._tracks.start(channel)
        try:
            await self._timed(self._subscriber.subscribe(self._chan(channel)))
            epoch, offset = await self._run(
                "mget", [self._k("he", channel), self._k("ho", channel)]
            )
        except BaseException:
            if self._delivers.get(channel) == [deliver]:
                del self._delivers[channel]
                self._tracks.drop(channel)
            raise
        await self._tracks.settle(channel, epoch, int(offset or 0))

    def unsubscribe(self, channel: str, deliver: Deliver) -> Deferred:
        delivers = self._delivers.get(channel)
        if delivers is None or deliver not in delivers:
            return succeed(None)
        delivers.remove(deliver)
        if delivers:
            return succeed(None)
        del self._delivers[channel]
        self._tracks.drop(channel)
        self._no_copies(channel)
        if self._subscriber is None:
            return succeed(None)
        d = self._subscriber.unsubscribe(self._chan(channel))
        d.addErrback(lambda f: None)  # a lost connection forgets it anyway
        return d.addCallback(lambda _: None)

    def watch_departures(self, callback) -> None:
        self._departures.append(callback)

    # -- occupancy -------------------------------------------------------------

    def report_occupancy(self, channel: str, count: int) -> None:
        occ = self._k("occ", self.node_id)
        if count > 0:
            self.owned.occupancy[channel] = count
        else:
            self.owned.occupancy.pop(channel, None)
        if count > 0:
            d = Deferred.fromCoroutine(self._run("hset", occ, channel, count))
        else:
            d = Deferred.fromCoroutine(self._run("hdel", occ, channel))
        d.addErrback(lambda f: f.trap(BackendUnavailable))

    def occupancy(self, channel: str | None = None) -> Deferred:
        return Deferred.fromCoroutine(self._occupancy(channel))

    async def _occupancy(self, channel: str | None) -> dict:
        args = [self.prefix, "%f" % self._reactor.seconds()] + (
            [channel] if channel else []
        )
        flat = await self._run("eval", _OCCUPANCY, [], args)
        counts = {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}
        counts = {k: v for k, v in counts.items() if v > 0}
        if channel is not None:
            return {channel: counts.get(channel, 0)}
        return counts

    # -- membership and users -----------------------------------------------------

    def _member_keys(self, channel: str, user_id: str) -> list[str]:
        return [
            self._k("mc", channel, user_id),
            self._k("m", channel),
            self._k("node", self.node_id),
        ]

    def join(self, channel, user_id, user_info, connection_id) -> Deferred:
        owned = (channel, user_id, connection_id)
        self.owned.members[owned] = user_info

        def failed(failure):
            self.owned.members.pop(owned, None)
            return failure

        d = Deferred.fromCoroutine(
            self._join(channel, user_id, user_info, connection_id)
        )
        return d.addErrback(failed)

    async def _join(self, channel, user_id, user_info, connection_id) -> bool:
        first = await self._run(
            "eval",
            _JOIN,
            self._member_keys(channel, user_id),
            [
                user_id,
                json.dumps(user_info),
                "%s/%s" % (self.node_id, connection_id),
                redis_state.member_entry(channel, user_id, connection_id),
            ],
        )
        return bool(first)

    def leave(self, channel, user_id, connection_id) -> Deferred:
        self.owned.members.pop((channel, user_id, connection_id), None)

        def failed(failure):
            # Announced once Redis is back (redis_state.announce_departures).
            failure.trap(BackendUnavailable)
            self.owned.unannounced.add((channel, user_id))
            return failure

        d = Deferred.fromCoroutine(
            self._leave(self.node_id, channel, user_id, connection_id)
        )
        return d.addErrback(failed)

    async def _leave(
        self, node: str, channel: str, user_id: str, connection_id: str
    ) -> bool:
        keys = [
            self._k("mc", channel, user_id),
            self._k("m", channel),
            self._k("node", node),
        ]
        last = await self._run(
            "eval",
            _LEAVE,
            keys,
            [
                user_id,
                "%s/%s" % (node, connection_id),
                SEP.join(("m", channel, user_id, connection_id)),
            ],
        )
        return bool(last)

    def members(self, channel) -> Deferred:
        d = Deferred.fromCoroutine(self._run("hgetall", self._k("m", channel)))
        return d.addCallback(
            lambda raw: {user: json.loads(info) for user, info in raw.items()}
        )

    def connect_user(self, app, user_id, connection_id) -> Deferred:
        self.owned.users.add((app, user_id, connection_id))
        return Deferred.fromCoroutine(
            self._connect(app, user_id, connection_id)
        ).addCallback(lambda _: None)

    async def _connect(self, app, user_id, connection_id) -> None:
        await self._run(
            "eval",
            _CONNECT,
            [
                self._k("u", app, user_id),
                self._k("users", app),
                self._k("node", self.node_id),
            ],
            [
                user_id,
                "%s/%s" % (self.node_id, connection_id),
                redis_state.user_entry(app, user_id, connection_id),
            ],
        )

    def disconnect_user(self, app, user_id, connection_id) -> Deferred:
        self.owned.users.discard((app, user_id, connection_id))
        return Deferred.fromCoroutine(
            self._disconnect_user(self.node_id, app, user_id, connection_id)
        ).addCallback(lambda _: None)

    async def _disconnect_user(self, node, app, user_id, connection_id) -> None:
        await self._run(
            "eval",
            _DISCONNECT,
            [self._k("u", app, user_id), self._k("users", app), self._k("node", node)],
            [
                user_id,
                "%s/%s" % (node, connection_id),
                SEP.join(("u", app, user_id, connection_id)),
            ],
        )

    def user_connections(self, app, user_id) -> Deferred:
        return Deferred.fromCoroutine(self._run("scard", self._k("u", app, user_id)))

    def users_online(self, app) -> Deferred:
        return Deferred.fromCoroutine(self._run("scard", self._k("users", app)))

    # -- offline delivery ------------------------------------------------------

    def keep_channel(self, app, user_id, channel, keep) -> Deferred:
        verb = "sadd" if keep else "srem"
        key = channel_key(app, channel)

        async def run() -> None:
            await self._run(verb, self._k("kept", app, user_id), channel)
            await self._run(verb, self._k("keepers", key), user_id)

        return Deferred.fromCoroutine(run())

    def kept_channels(self, app, user_id) -> Deferred:
        d = Deferred.fromCoroutine(self._run("smembers", self._k("kept", app, user_id)))
        return d.addCallback(sorted)

    def _no_keepers(self, key: str, message_id: str) -> None:
        """Nobody kept the channel when this message was published: storing
        it for offline users (``store_offline``, which the hub calls next)
        needs no round trip to Redis.  Bounded: a verdict forgotten only
        costs that round trip."""
        if len(self._unkept) >= 1024:
            self._unkept.clear()
        self._unkept[(key, message_id)] = True

    def store_offline(self, message, users, size, ttl) -> Deferred:
        if not users and self._unkept.pop((message.key, message.id), False):
            # Nobody kept the channel at the moment of the PUBLISH (checked
            # in the same script): nothing to store, and no round trip.
            return succeed(0)
        return Deferred.fromCoroutine(
            self._run(
                "eval",
                _STORE_OFFLINE,
                [],
                [
                    self.prefix,
                    message.app,
                    message.key,
                    encode_message(message),
                    size,
                    int(ttl * 1000),
                    *list(users),
                ],
            )
        )

    def take_offline(self, app, user_id) -> Deferred:
        async def run() -> list:
            raw = await self._run(
                "eval", _TAKE_OFFLINE, [self._k("inbox", app, user_id)], []
            )
            # Entries from before codec version 1 name their channel, not their app.
            return [decode_message(item, channel_key(app, "")) for item in raw]

        return Deferred.fromCoroutine(run())

    # -- node leases and dead-node cleanup ------------------------------------------

    async def _renew_lease(self) -> None:
        now = self._reactor.seconds()
        await self._run("zadd", self._k("nodes"), now + self.node_ttl, self.node_id)

    def _beat(self) -> Deferred:
        d = Deferred.fromCoroutine(self._heartbeat_once())
        d.addErrback(lambda f: f.trap(BackendUnavailable))
        d.addErrback(lambda f: self._log.failure("heartbeat failed", f))
        return d

    async def _check(self) -> str:
        """Renew the lease; 'lost' if Redis lost its data since we last
        looked, 'evicted' if other nodes removed this one, else 'ok'."""
        now = self._reactor.seconds()
        mode, self._marker = await self._run(
            "eval",
            redis_state.CHECK,
            [self._k("alive"), self._k("nodes")],
            [self._marker, self.node_id, now + self.node_ttl, secrets.token_hex(8)],
        )
        if mode != "ok" and self._started:
            self._log.warn(
                "redis backend: {why}; putting this node's state back",
                why="Redis lost its data" if mode == "lost" else "node was evicted",
            )
        return mode

    async def _heartbeat_once(self) -> None:
        if self._recovering or self._subscriber is None:
            return
        mode = await self._check()
        if mode != "ok":
            await redis_state.reassert(self, announce=mode == "evicted")
        now = self._reactor.seconds()
        # Others may need up to RECONNECT_MAX_DELAY to notice Redis is
        # back, and a command timeout to renew their lease.
        grace = self.node_ttl + RECONNECT_MAX_DELAY + self.timeout
        if now - self._healthy_since < grace:
            return
        dead = await self._run("zrangebyscore", self._k("nodes"), "-inf", now)
        for node in dead:
            if node == self.node_id:
                continue
            locked = await self._run(
                "set",
                self._k("lock", node),
                self.node_id,
                expire=int(self.node_ttl) + 30,
                only_if_not_exists=True,
            )
            if locked:
                self._log.info(
                    "redis backend: node {node} stopped renewing its lease; "
                    "removing its connections",
                    node=node,
                )
                await self._cleanup_node(node, announce=True)

    async def _announce(self, key: str, event: str, data: dict) -> None:
        app, _, name = key.partition("/")
        message = Message(name, event, data, new_message_id(), app)
        await self._run("publish", self._chan(key), encode_message(message))

    async def _cleanup_node(self, node: str, announce: bool) -> None:
        """Remove everything ``node`` owned; announce users who left presence."""
        entries = await self._run("smembers", self._k("node", node))
        for entry in entries:
            kind, a, b, conn = entry.split(SEP)
            if kind == "m":
                last = await self._leave(node, a, b, conn)
                name = a.partition("/")[2]
                if last and announce and name.startswith("presence-"):
                    await redis_state.announce_member(self, a, b, MEMBER_REMOVED)
            else:
                await self._disconnect_user(node, a, b, conn)
        await self._run("delete", [self._k("node", node), self._k("occ", node)])
        await self._run("hdel", self._k("codec"), node)
        await self._run("zrem", self._k("nodes"), node)


def from_argstring(reactor: Any, argstring: str) -> RedisBackend:
    """``redis:host=H:port=P:db=N:password=S:prefix=X:node-ttl=S:heartbeat=S:timeout=S``."""
    args = parse_argstring(argstring)
    known = {
        "host",
        "port",
        "db",
        "password",
        "prefix",
        "node-ttl",
        "heartbeat",
        "timeout",
    }
    unknown = set(args) - known
    if unknown:
        raise ValueError(
            "unknown argument(s) %s (known: %s)"
            % (", ".join(sorted(unknown)), ", ".join(sorted(known)))
        )
    try:
        kwargs: dict[str, Any] = {
            "host": args.get("host", "127.0.0.1"),
            "port": int(args.get("port", 6379)),
            "db": int(args.get("db", 0)),
            "password": args.get("password") or None,
            "prefix": args.get("prefix", "pushd"),
            "node_ttl": float(args.get("node-ttl", 15)),
            "heartbeat": float(args.get("heartbeat", 5)),
            "timeout": float(args.get("timeout", 3)),
        }
    except ValueError:
        raise ValueError(
            "port and db take whole numbers; node-ttl, heartbeat and "
            "timeout take seconds"
        ) from None
    if kwargs["heartbeat"] <= 0 or kwargs["node_ttl"] <= kwargs["heartbeat"]:
        raise ValueError("need 0 < heartbeat < node-ttl")
    if not kwargs["prefix"] or ":" in kwargs["prefix"]:
        raise ValueError("prefix must be non-empty and without ':'")
    return RedisBackend(reactor, **kwargs)
