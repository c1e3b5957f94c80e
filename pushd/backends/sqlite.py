"""One node, history kept on disk: the memory backend plus SQLite.

``--backend sqlite:path=/var/lib/pushd/history.db``

Fan-out, membership and users are in memory (one node), as in the memory
backend; history and positions are in SQLite, so a restarted pushd still
knows every kept message and the epoch of every channel, and reconnecting
clients recover across the restart.  SQLite runs in one thread of
``twisted.enterprise.adbapi``: the reactor never waits on the disk, and the
single thread keeps writes, hence offsets, in publish order.

The database is opened in exclusive locking mode (issue 11).  In WAL mode
SQLite otherwise maps a shared-memory ``-shm`` file; if that file is
truncated or its disk fills, the next access kills the process with SIGBUS,
with nothing logged.  Exclusive mode keeps the WAL index in process memory
instead (no ``-shm`` at all), and makes a second pushd on the same file
fail at start, by name, rather than share it.  Every database error names
the file, at start and after.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import replace
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from pushd.backends import parse_argstring
from pushd.backends.memory import MemoryBackend
from pushd.errors import BackendUnavailable
from pushd.history import HistoryResult, Retention, answer_since
from pushd.interfaces import IBackend
from pushd.message import Message, decode_message, encode_message

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS channels (key TEXT PRIMARY KEY, epoch TEXT NOT NULL,"
    " offset INTEGER NOT NULL, expires REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages (key TEXT NOT NULL, offset INTEGER NOT NULL,"
    " body TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (key, offset))",
]


@implementer(IBackend)
class SqliteBackend(MemoryBackend):
    _log = Logger()

    def __init__(self, clock: Any, path: str) -> None:
        super().__init__(clock)
        self.path = path
        self._pool: adbapi.ConnectionPool | None = None

    @property
    def _db(self) -> adbapi.ConnectionPool:
        if self._pool is None:
            raise BackendUnavailable("sqlite backend is not started")
        return self._pool

    def start(self) -> Deferred:
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            timeout=1.0,  # one connection: only another process can be busy
            cp_min=1,
            cp_max=1,
            cp_noisy=False,
        )
        d = self._pool.runInteraction(self._create)
        d.addErrback(self._failed_to_open)
        return d

    @staticmethod
    def _create(txn: Any) -> None:
        txn.execute("PRAGMA locking_mode=EXCLUSIVE")
        txn.execute("PRAGMA journal_mode=WAL")
        for statement in _SCHEMA:
            txn.execute(statement)
        # Take the exclusive lock now: another process on the file is
        # refused here, at start, not at its first publish.
        txn.execute("DELETE FROM channels WHERE 0")

    def _failed_to_open(self, failure: Any) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        failure.trap(sqlite3.Error)
        raise BackendUnavailable(
            "sqlite backend cannot use %s: %s" % (self.path, failure.getErrorMessage())
        )

    def _run(self, *args: Any) -> Deferred:
        """A database interaction whose errors name the file and are
        answered as 503 (BackendUnavailable), logged once each."""
        d = self._db.runInteraction(*args)
        d.addErrback(self._fault)
        return d

    def _fault(self, failure: Any) -> None:
        failure.trap(sqlite3.Error)
        error = "sqlite backend %s: %s" % (self.path, failure.getErrorMessage())
        self._log.error("{error}", error=error)
        raise BackendUnavailable(error)

    def stop(self) -> Deferred:
        if self._pool is not None:
            self._pool.close()
        return super().stop()

    def publish(self, message: Message, retention: Retention | None = None) -> Deferred:
        if retention is None:
            return super().publish(message)
        d = self._run(self._store, message, retention, self._now())
        d.addCallback(lambda stored: super(SqliteBackend, self).publish(stored))
        return d

    @staticmethod
    def _store(txn: Any, message: Message, retention: Retention, now: float) -> Message:
        key = message.key
        txn.execute("DELETE FROM messages WHERE key = ? AND expires <= ?", (key, now))
        txn.execute("SELECT epoch, offset, expires FROM channels WHERE key = ?", (key,))
        row = txn.fetchone()
        if row is None or row[2] <= now:
            # New channel, or everything expired: a new epoch says the
            # history is gone.
            epoch, offset = secrets.token_hex(4), 0
            txn.execute("DELETE FROM messages WHERE key = ?", (key,))
        else:
            epoch, offset = row[0], row[1]
        offset += 1
        expires = now + retention.ttl
        txn.execute(
            "INSERT OR REPLACE INTO channels VALUES (?, ?, ?, ?)",
            (key, epoch, offset, expires),
        )
        message = replace(message, offset=offset, epoch=epoch)
        txn.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?)",
            (key, offset, encode_message(message), expires),
        )
        txn.execute(
            "DELETE FROM messages WHERE key = ? AND offset <= ?",
            (key, offset - retention.size),
        )
        return message

    def forget(self, channel: str) -> Deferred:
        super().forget(channel)
        return self._run(self._forget, channel)

    @staticmethod
    def _forget(txn: Any, key: str) -> None:
        txn.execute("DELETE FROM channels WHERE key = ?", (key,))
        txn.execute("DELETE FROM messages WHERE key = ?", (key,))

    def history(
        self,
        channel: str,
        since: int | None,
        epoch: str | None,
        limit: int,
        retention: Retention,
    ) -> Deferred:
        return self._run(self._read, channel, since, epoch, limit, self._now())

    @staticmethod
    def _read(
        txn: Any, key: str, since: int | None, epoch: str | None, limit: int, now: float
    ) -> HistoryResult:
        txn.execute("SELECT epoch, offset, expires FROM channels WHERE key = ?", (key,))
        row = txn.fetchone()
        if row is None or row[2] <= now:
            return HistoryResult([], "", 0, since in (None, 0))
        current, offset = row[0], row[1]
        txn.execute(
            "SELECT offset, body FROM messages WHERE key = ? AND expires > ?"
            " ORDER BY offset",
            (key, now),
        )
        # The row's position is authoritative: bodies from before codec
        # version 1 have none.
        kept = [
            replace(decode_message(body, key), offset=o, epoch=current)
            for o, body in txn.fetchall()
        ]
        return answer_since(kept, current, offset, since, epoch, limit)


def from_argstring(reactor: Any, argstring: str) -> SqliteBackend:
    args = parse_argstring(argstring)
    unknown = set(args) - {"path"}
    if unknown:
        raise ValueError(
            "unknown argument(s) %s (known: path)" % ", ".join(sorted(unknown))
        )
    if not args.get("path"):
        raise ValueError("needs path=FILE for the database")
    return SqliteBackend(reactor, args["path"])
