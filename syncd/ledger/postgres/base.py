"""The fleet ledger's shared part: the SQL fragments of claims and leases, row decoding, what
an unreachable server looks like, the retry of writes while it is, and :class:`PgBase`, the
owner of the pool every section of the ledger runs its transactions and queries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from syncd.errors import LedgerError, LedgerUnreachable
from syncd.fingerprint import Fingerprint
from syncd.ledger.records import Attempt, Content, PathRecord

if TYPE_CHECKING:
    from syncd.ledger.postgres_migrations import Db


log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")
_R = TypeVar("_R")
_L = TypeVar("_L", bound="PgBase")

DEFAULT_LEASE_S = 600.0
RETRY_MAX_S = 30.0
_PARK_S = 365 * 86400.0
# The database server's clock, in epoch seconds: leases never compare two hosts' clocks.
_NOW = "extract(epoch from clock_timestamp())::float8"
_CONTENT_COLS = ", ".join(Content.__slots__)
_C_CONTENT_COLS = ", ".join("c." + c for c in Content.__slots__)
_PATH_COLS = (
    "path, root, state, sha256, reason, dev, ino, size, mtime_ns, ctime_ns, open_since, "
    "first_seen, last_seen, gone_at"
)
_P_PATH_COLS = ", ".join("p." + c.strip() for c in _PATH_COLS.split(","))
_N_PATH = len(_PATH_COLS.split(","))
_ATTEMPT_COLS = ", ".join(Attempt.__slots__)
# This host may work on a content: nobody claims it, this host does, or the claim expired.
_FREE = f"(c.claimed_by IS NULL OR c.claimed_by = $1 OR c.lease_until < {_NOW})"
# A content this host can upload (a present path here holds it) or must park (none anywhere).
_WORKABLE = (
    "(EXISTS (SELECT 1 FROM paths p WHERE p.sha256 = c.sha256 AND p.host = $1 "
    "AND p.state = 'present') OR NOT EXISTS (SELECT 1 FROM paths p WHERE p.sha256 = c.sha256 "
    "AND p.state = 'present'))"
)

# What a lost or refused connection looks like: the server is down, restarting, starting up,
# out of connections or disk, or a query timed out. Everything else is a bug or a bad schema.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # 57P01 admin shutdown, 57P03 cannot connect
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: disk full, too many connections
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock: retry
    # A connection the server dropped mid-statement can leave asyncpg's protocol in a state it
    # does not expect ("cannot switch to state 15; another operation is in progress"): the
    # connection is lost, not the query wrong. _conn terminates it so the pool opens a new one.
    asyncpg.InternalClientError,
)


def _b(path: str) -> bytes:
    return os.fsencode(path)


def _s(blob: bytes) -> str:
    return os.fsdecode(blob)


def display_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def default_host_name() -> str:
    """This machine's host name: the default ``fleet.host_name``."""
    return socket.gethostname()


_Row = Sequence[Any] | asyncpg.Record


def _content(row: _Row) -> Content:
    return Content(*row)


def _path(row: _Row) -> PathRecord:
    fp = None if row[5] is None else Fingerprint(row[5], row[6], row[7], row[8], row[9])
    return PathRecord(
        _s(row[0]), row[1], row[2], row[3], row[4], fp, row[10], row[11], row[12], row[13]
    )


def _attempt(row: _Row) -> Attempt:
    values = list(row)
    values[2] = None if row[2] is None else _s(row[2])
    return Attempt(*values)


async def _wait_out(store: PgBase, call: Callable[[], Coroutine[Any, Any, _R]]) -> _R:
    """Run ``call()`` until it does not raise :class:`LedgerUnreachable`, backing off between
    tries and logging once when the server is lost and once when it is back."""
    delay = 0.5
    while True:
        try:
            result = await call()
        except LedgerUnreachable as exc:
            if store.stalled is None:
                log.error("%s; syncd stops claiming uploads until it is back", exc)
            store.stalled = str(exc)
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX_S, delay * 2)
            continue
        if store.stalled is not None:
            log.warning("ledger %s is reachable again; resuming", store.path)
            store.stalled = None
        return result


def _retry_unreachable(
    fn: Callable[Concatenate[_L, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_L, _P], Coroutine[Any, Any, _R]]:
    """Make a write method wait out an unreachable server and retry, logging once per episode.

    Safe because a transaction whose connection broke either committed or rolled back whole;
    the methods are written so that running one again after a commit whose answer was lost
    changes nothing more than a counter.
    """

    async def wrapper(self: _L, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await _wait_out(self, lambda: fn(self, *args, **kwargs))

    functools.update_wrapper(wrapper, fn)
    return wrapper


def _pipeline_read(
    fn: Callable[Concatenate[_L, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_L, _P], Coroutine[Any, Any, _R]]:
    """Make a read that the daemon's stages depend on wait out an outage, like a write, when
    the store was opened with ``wait_out_outages`` (the daemon); elsewhere (the operator's
    commands) it raises :class:`LedgerUnreachable` at once, so a command fails with one line
    instead of hanging.

    Without it, a file settling while the server restarts would stop the hash stage (its
    look-up raised), and the dispatcher would end at its first look-up of the next due time.
    """

    async def wrapper(self: _L, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not self.wait_out_outages:
            return await fn(self, *args, **kwargs)
        return await _wait_out(self, lambda: fn(self, *args, **kwargs))

    functools.update_wrapper(wrapper, fn)
    return wrapper


class PgBase:
    """What every section of the fleet's ledger shares: the pool, this host's name, the clock,
    the lease, and the way a transaction or a query is run on a pooled connection. Owned and
    opened by :class:`~syncd.ledger.postgres.ledger.PostgresLedger`; the sections (paths,
    claims, uploads, polling, queries, pages) are subclasses that add methods only.

    Every public coroutine is one transaction on a connection of the pool. ``path`` is the
    database URL without its password (for messages); ``host`` is this host's name;
    ``stalled`` says why writes are waiting (None when they are not).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        url: str,
        *,
        host: str,
        clock: Callable[[], float],
        lease_s: float,
        renew_every_s: float | None,
        wait_out_outages: bool = False,
    ) -> None:
        self._pool = pool
        self.wait_out_outages = wait_out_outages
        self.url = url
        self.path = display_url(url)
        self.host = host
        self._clock = clock
        self.lease_s = lease_s
        self.renew_every_s = lease_s / 3 if renew_every_s is None else renew_every_s
        self.stalled: str | None = None
        self._loop = asyncio.get_running_loop()
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncGenerator[Db, None]:
        """A pooled connection; connection-level failures become :class:`LedgerUnreachable`."""
        if self._closed:
            raise LedgerError("internal error: the ledger is closed")
        try:
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                except asyncpg.InternalClientError:
                    conn.terminate()  # its protocol state is lost: never back into the pool
                    raise
        except _UNREACHABLE as exc:
            raise LedgerUnreachable(_unreachable_text(self.path, exc)) from None
        except asyncpg.PostgresError as exc:
            raise LedgerError(f"ledger {self.path}: {_one_line(exc)}") from None

    async def _tx(self, fn: Callable[[Db], Awaitable[_T]]) -> _T:
        """Run ``fn(connection)`` inside one transaction; returns what it returns after the
        COMMIT. Raises :class:`LedgerUnreachable` or :class:`LedgerError` (rolled back)."""
        async with self._conn() as conn, conn.transaction():
            return await fn(conn)

    async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            return await conn.fetch(sql, *args)

    async def _write(self, sql: str, *args: Any) -> int:
        """Run one statement in its own transaction; returns the number of rows changed."""
        async with self._conn() as conn:
            return _rowcount(await conn.execute(sql, *args))


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3`` (0 when there is none)."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _must(value: _T | None) -> _T:
    if value is None:
        raise LedgerError("internal error: a row the ledger just wrote is missing")
    return value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _unreachable_text(shown: str, exc: BaseException) -> str:
    return f"ledger {shown} is unreachable ({type(exc).__name__}: {_one_line(exc)})"
