"""The SQLite ledger's shared part: row decoding, error classification, the stall retry, and
:class:`LedgerBase`, the owner of the connections every section of the ledger runs its
transactions and queries on.

Paths are ``str`` in Python (``os.fsdecode``, so undecodable bytes survive as surrogates) and
stored as BLOBs of the exact on-disk bytes. Times are wall-clock epoch seconds (``time.time``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from syncd.errors import LedgerCorrupt, LedgerError, LedgerUnwritable
from syncd.fingerprint import Fingerprint
from syncd.ledger.records import Attempt, Content, PathRecord
from syncd.ledger.sqlite.connection import _Connection, _fetch

_T = TypeVar("_T")
log = logging.getLogger(__name__)

# SQLite's default limit on host parameters is 999 in old builds; stay under it.
_IN_CHUNK = 900


def _b(path: str) -> bytes:
    return os.fsencode(path)


def _s(blob: bytes | str) -> str:
    return os.fsdecode(blob) if isinstance(blob, bytes) else blob


_CONTENT_COLS = ", ".join(Content.__slots__)
_PATH_COLS = (
    "path, root, state, sha256, reason, dev, ino, size, mtime_ns, ctime_ns, open_since, "
    "first_seen, last_seen, gone_at"
)
_ATTEMPT_COLS = ", ".join(Attempt.__slots__)


def _content(row: Sequence[Any]) -> Content:
    return Content(*row)


def _path(row: Sequence[Any]) -> PathRecord:
    fp = None if row[5] is None else Fingerprint(row[5], row[6], row[7], row[8], row[9])
    return PathRecord(
        _s(row[0]), row[1], row[2], row[3], row[4], fp, row[10], row[11], row[12], row[13]
    )


def _attempt(row: Sequence[Any]) -> Attempt:
    values = list(row)
    values[2] = None if row[2] is None else _s(row[2])
    return Attempt(*values)


def classify_sqlite_error(exc: sqlite3.Error, path: str) -> LedgerError:
    """Given a sqlite3 error, return the ledger error a user should see (one line)."""
    text = str(exc)
    low = text.lower()
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return LedgerCorrupt(path, text)
    if "full" in low:
        return LedgerStalled(f"ledger {path}: disk full ({text}); free space to continue")
    if "readonly" in low or "read-only" in low:
        return LedgerStalled(f"ledger {path} is read-only ({text}); make it writable")
    if "disk i/o error" in low:
        return LedgerStalled(f"ledger {path}: I/O error ({text}); check the disk and its space")
    if "unable to open" in low:
        return LedgerUnwritable(f"cannot open ledger {path} ({text}); check the folder exists")
    if "locked" in low or "busy" in low:
        return LedgerStalled(
            f"ledger {path} is locked by another process ({text}); "
            "close the other writer (an sqlite3 shell holding a transaction?)"
        )
    return LedgerError(f"ledger {path}: {text}")


class LedgerStalled(LedgerUnwritable):
    """The ledger cannot be written *for now*: disk full, read-only, locked by another writer.

    The daemon waits and retries (see :func:`_retry_stalled`): nothing is lost, since the
    failed transaction rolled back and the caller still holds what it meant to record.
    """


_P = ParamSpec("_P")
_R = TypeVar("_R")
_L = TypeVar("_L", bound="LedgerBase")
STALL_RETRY_MAX_S = 30.0


def _retry_stalled(
    fn: Callable[Concatenate[_L, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_L, _P], Coroutine[Any, Any, _R]]:
    """Make a write method wait out a stalled ledger and retry, logging once per episode.

    Safe because a stalled transaction rolled back entirely: running the method again is
    running it for the first time.
    """

    async def wrapper(self: _L, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        delay = 0.5
        while True:
            try:
                result = await fn(self, *args, **kwargs)
            except LedgerStalled as exc:
                if self.stalled is None:
                    log.error("%s; syncd pauses until it can write again", exc)
                self.stalled = str(exc)
                await asyncio.sleep(delay)
                delay = min(STALL_RETRY_MAX_S, delay * 2)
                continue
            if self.stalled is not None:
                log.warning("ledger %s is writable again; resuming", self.path)
                self.stalled = None
            return result

    functools.update_wrapper(wrapper, fn)
    return wrapper


class LedgerBase:
    """What every section of the ledger shares: the connections, the clock and the way a
    transaction or a query is run on them. Owned and opened by
    :class:`~syncd.ledger.sqlite.ledger.Ledger`; the sections (paths, uploads, polling,
    queries, pages) are subclasses that add methods only.

    Every public coroutine is one transaction, run as one function on a connection's own
    thread (see :class:`~syncd.ledger.sqlite.connection._Connection`): writes on the writer
    connection, where the write transactions queued together share one COMMIT; reads on a
    second connection (read-only, WAL lets it read while the writer writes) so they never wait
    behind writes. A ledger opened ``readonly`` has one read-only connection for both.
    """

    def __init__(
        self, writer: _Connection, reader: _Connection, path: str, clock: Callable[[], float]
    ) -> None:
        self._writer = writer
        self._reader = reader
        self.path = path
        self._clock = clock
        # Why writes are waiting (disk full, read-only, locked), or None: for health checks.
        self.stalled: str | None = None

    async def _transaction(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(connection)`` as one write transaction; return what it returns.

        Returns after the COMMIT that made its writes durable; raises the ledger error a
        failed statement or COMMIT stands for (a stall is :class:`LedgerStalled`), after the
        function's writes were rolled back.
        """
        try:
            return await self._writer.call(fn, grouped=True)
        except sqlite3.Error as exc:
            raise classify_sqlite_error(exc, self.path) from None

    async def _query(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(connection)`` on the read connection; return what it returns."""
        try:
            return await self._reader.call(fn)
        except sqlite3.Error as exc:
            raise classify_sqlite_error(exc, self.path) from None

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._query(_fetch(sql, params))

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; returns the number of rows changed."""

        def run(db: sqlite3.Connection) -> int:
            return db.execute(sql, params).rowcount

        return await self._transaction(run)


def _must(value: _T | None) -> _T:
    """Return ``value``; a None here is a bug in the ledger's own SQL."""
    if value is None:
        raise LedgerError("internal error: a row the ledger just wrote is missing")
    return value
