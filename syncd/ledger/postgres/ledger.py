"""The shared ledger of a fleet: one PostgreSQL database for every host of an account.

The same concepts and methods as the SQLite ledger (:mod:`syncd.ledger.sqlite`), with what a
fleet needs on top (``docs/fleet-ledger.md``):

- **Contents are fleet-wide**: the sha256 is the primary key, so a content another host has
  already uploaded is only given this host's path and shares its asset id.
- **Paths are per host** (``host``, the configured ``fleet.host_name``): every path method
  reads and writes this host's rows only, so a rescan here never marks another host's files
  gone.
- **Work is claimed with a lease.** :meth:`PostgresLedger.due_jobs` takes due contents with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` and stamps them ``claimed_by`` + ``lease_until`` (on
  the database server's clock), renewed in the background at a third of the lease. Just
  before bytes leave, the move to ``uploading`` (:meth:`begin_attempt`, :meth:`mark_sending`)
  and the last bytes of a direct upload (:meth:`mark_finishing`) check that this host still
  holds the claim, else :class:`~syncd.errors.ClaimLost` is raised and the send abandoned.
- **An expired claim is taken over, never simply re-sent.** A content found ``uploading``
  with an expired lease is what a crash leaves: a direct upload goes back to ``pending`` and
  counts one possible remote duplicate if its last bytes had left; a signed-URL upload goes
  back to ``allocated`` on the same asset id (its status is asked before any resend). A late
  answer to the host that lost the claim is kept as a superseded asset, never lost.

The driver is asyncpg (one wheel with no libpq to install) with its connection pool. When the
server is down or restarting, reads raise :class:`~syncd.errors.LedgerUnreachable` and writes
wait and retry (logging one line), so nothing a caller meant to record is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import posixpath
import socket
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from syncd.errors import ClaimLost, LedgerError, LedgerUnreachable
from syncd.fingerprint import Fingerprint
from syncd.ledger.postgres_migrations import MIGRATIONS, applied, migrate
from syncd.ledger.records import (
    CONTENT_STATES,
    PATH_STATES,
    Attempt,
    Content,
    ContentState,
    Job,
    PathRecord,
    PathState,
    RecoveryReport,
)

if TYPE_CHECKING:
    from syncd.ledger.postgres_migrations import Db

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")
_R = TypeVar("_R")

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


def _retry_unreachable(
    fn: Callable[Concatenate[PostgresLedger, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[PostgresLedger, _P], Coroutine[Any, Any, _R]]:
    """Make a write method wait out an unreachable server and retry, logging once per episode.

    Safe because a transaction whose connection broke either committed or rolled back whole;
    the methods are written so that running one again after a commit whose answer was lost
    changes nothing more than a counter.
    """

    async def wrapper(self: PostgresLedger, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        delay = 0.5
        while True:
            try:
                result = await fn(self, *args, **kwargs)
            except LedgerUnreachable as exc:
                if self.stalled is None:
                    log.error("%s; syncd stops claiming uploads until it is back", exc)
                self.stalled = str(exc)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            if self.stalled is not None:
                log.warning("ledger %s is reachable again; resuming", self.path)
                self.stalled = None
            return result

    functools.update_wrapper(wrapper, fn)
    return wrapper


class PostgresLedger:
    """Async access to the shared ledger, as one host of a fleet. Use :meth:`open`.

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
    ) -> None:
        self._pool = pool
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

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        host: str | None = None,
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
        lease_s: float = DEFAULT_LEASE_S,
        renew_every_s: float | None = None,
        pool_size: int = 4,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 60.0,
    ) -> PostgresLedger:
        """Connect to the ledger at ``url`` (``postgresql://...``) and migrate its schema.

        Given the URL, this host's name (default: the machine's host name), whether to open
        for reading only (no migration, no lease renewal), the clock, the lease length and
        how often claims are renewed (default: a third of the lease). Returns the open store;
        raises :class:`LedgerUnreachable` when the server cannot be reached and
        :class:`LedgerError` for anything else (bad URL, unknown database, refused login).
        """
        shown = display_url(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=connect_timeout_s,
                command_timeout=command_timeout_s,
                server_settings={
                    "application_name": f"syncd {host or default_host_name()}",
                    # A host frozen (SIGSTOP) inside a transaction would hold its row locks,
                    # and SKIP LOCKED would hide those rows from every other host for as long
                    # as it stays frozen: the server ends such a session well within a lease.
                    # No transaction of syncd waits on anything but its own statements.
                    "idle_in_transaction_session_timeout": str(
                        int(1000 * max(1.0, min(lease_s / 4, 30.0)))
                    ),
                },
            )
        except _UNREACHABLE as exc:
            raise LedgerUnreachable(_unreachable_text(shown, exc)) from None
        except (asyncpg.PostgresError, ValueError) as exc:
            raise LedgerError(f"ledger {shown}: {_one_line(exc)}") from None
        store = cls(
            pool,
            url,
            host=host or default_host_name(),
            clock=clock,
            lease_s=lease_s,
            renew_every_s=renew_every_s,
        )
        try:
            if not readonly:
                async with pool.acquire() as conn:
                    await migrate(conn, clock())
                store._renewer = asyncio.create_task(
                    store._renew_claims(), name="syncd-ledger-leases"
                )
        except _UNREACHABLE as exc:
            await pool.close()
            raise LedgerUnreachable(_unreachable_text(shown, exc)) from None
        except asyncpg.PostgresError as exc:
            await pool.close()
            raise LedgerError(f"ledger {shown}: {_one_line(exc)}") from None
        return store

    async def close(self) -> None:
        """Stop renewing claims and close the pool. Idempotent.

        Claims are not released here: a graceful stop releases each one as its upload ends;
        those left expire, as after a crash, and :meth:`recover` clears them at the next start.
        """
        if self._closed:
            return
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._pool.close()

    def terminate(self) -> None:
        """Drop every connection at once, as a killed process would (for tests)."""
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
        self._pool.terminate()

    async def integrity_problems(self, *, quick: bool = False) -> list[str]:
        """PostgreSQL checks its own storage; this returns the migrations this version knows
        that the database lacks (empty when the schema is complete)."""
        async with self._conn() as conn:
            done = set(await applied(conn))
        return [f"migration {m.name} not applied" for m in MIGRATIONS if m.name not in done]

    async def backup(self, dest: str) -> None:
        """Not done by syncd for a shared ledger: raises :class:`LedgerError` naming
        ``pg_dump``, the tool that makes a consistent copy of a live PostgreSQL database."""
        raise LedgerError(
            f"syncd does not back up a PostgreSQL ledger; use pg_dump (e.g. pg_dump -Fc -f "
            f"{dest} '{self.path}')"
        )

    async def _renew_claims(self) -> None:
        """Extend this host's claims on contents it works on, every ``renew_every_s``."""
        while True:
            await asyncio.sleep(self.renew_every_s)
            try:
                async with self._conn() as conn:
                    await conn.execute(
                        f"UPDATE contents SET lease_until = {_NOW} + $2 WHERE claimed_by = $1 "
                        "AND state IN ('pending', 'allocated', 'uploading')",
                        self.host,
                        self.lease_s,
                    )
            except LedgerUnreachable:
                continue  # the writers say so; the next turn tries again
            except LedgerError:
                log.exception("renewing the claims of host %s failed", self.host)

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncGenerator[Db, None]:
        """A pooled connection; connection-level failures become :class:`LedgerUnreachable`."""
        if self._closed:
            raise LedgerError("internal error: the ledger is closed")
        try:
            async with self._pool.acquire() as conn:
                yield conn
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

    # ---------------------------------------------------------------- key/value

    async def get_kv(self, key: str) -> Any:
        """Return the JSON value this host stored under ``key``, or None."""
        rows = await self._read("SELECT value FROM kv WHERE host = $1 AND key = $2", self.host, key)
        return json.loads(rows[0][0]) if rows else None

    @_retry_unreachable
    async def set_kv(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key`` for this host."""
        await self._write(
            "INSERT INTO kv (host, key, value) VALUES ($1, $2, $3) "
            "ON CONFLICT (host, key) DO UPDATE SET value = excluded.value",
            self.host,
            key,
            json.dumps(value),
        )

    # ---------------------------------------------------------------- paths (this host's)

    async def get_path(self, path: str, *, host: str | None = None) -> PathRecord | None:
        """Return this host's (or ``host``'s) record of ``path``, or None."""
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND path = $2",
            host or self.host,
            _b(path),
        )
        return _path(rows[0]) if rows else None

    async def get_paths(self, paths: Sequence[str]) -> dict[str, PathRecord]:
        """Return the records of those of ``paths`` this host's ledger rows know."""
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND path = ANY($2::bytea[])",
            self.host,
            [_b(p) for p in paths],
        )
        return {rec.path: rec for rec in map(_path, rows)}

    @_retry_unreachable
    async def touch_paths(self, paths: Iterable[str]) -> None:
        """Mark ``paths`` as seen now, unchanged; a gone path holding a content is present
        again, and a content parked for want of a present path becomes due again."""
        now = self._clock()
        blobs = [_b(p) for p in paths]
        if not blobs:
            return

        async def tx(db: Db) -> None:
            await db.execute(
                "UPDATE paths SET last_seen = $1, "
                "gone_at = CASE WHEN state = 'gone' AND sha256 IS NOT NULL THEN NULL "
                "ELSE gone_at END, "
                "state = CASE WHEN state = 'gone' AND sha256 IS NOT NULL THEN 'present' "
                "ELSE state END WHERE host = $2 AND path = ANY($3::bytea[])",
                now,
                self.host,
                blobs,
            )
            await db.execute(
                "UPDATE contents SET next_attempt_at = $1 WHERE last_error LIKE "
                "'no present path%' AND state IN ('pending', 'allocated') AND sha256 IN "
                "(SELECT sha256 FROM paths WHERE host = $2 AND path = ANY($3::bytea[]))",
                now,
                self.host,
                blobs,
            )

        await self._tx(tx)

    @_retry_unreachable
    async def record_content(
        self,
        path: str,
        root: str,
        fingerprint: Fingerprint,
        sha256: str,
        extension: str,
    ) -> Content:
        """Record that this host's ``path`` holds the content ``sha256``.

        Creates the content as ``pending`` (due now) if no host knows it; a content known to
        the fleet is not uploaded again (its asset id is shared). A content waiting for a
        present path becomes due again. Returns the content as it now stands.
        """
        now = self._clock()

        async def tx(db: Db) -> Content:
            await db.execute(
                "INSERT INTO contents (sha256, size, extension, state, next_attempt_at, "
                "created_at, updated_at) VALUES ($1, $2, $3, 'pending', $4, $4, $4) "
                "ON CONFLICT (sha256) DO NOTHING",
                sha256,
                fingerprint.size,
                extension,
                now,
            )
            await db.execute(
                "UPDATE contents SET next_attempt_at = $1, updated_at = $1 WHERE sha256 = $2 "
                "AND state IN ('pending', 'allocated') AND next_attempt_at > $1 "
                "AND last_error LIKE 'no present path%'",
                now,
                sha256,
            )
            await _upsert_path(db, self.host, path, root, "present", sha256, None, fingerprint, now)
            await db.execute(
                "INSERT INTO holdings (sha256, host, path, first_seen, last_seen) "
                "VALUES ($1, $2, $3, $4, $4) ON CONFLICT (sha256, host, path) "
                "DO UPDATE SET last_seen = excluded.last_seen",
                sha256,
                self.host,
                _b(path),
                now,
            )
            row = await db.fetchrow(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = $1", sha256
            )
            return _content(_must(row))

        return await self._tx(tx)

    @_retry_unreachable
    async def record_path_state(
        self,
        path: str,
        root: str,
        state: PathState,
        reason: str | None,
        fingerprint: Fingerprint | None = None,
        open_since: float | None = None,
    ) -> None:
        """Record a path of this host that holds no uploadable content."""
        now = self._clock()

        async def tx(db: Db) -> None:
            await _upsert_path(
                db, self.host, path, root, state, None, reason, fingerprint, now, open_since
            )

        await self._tx(tx)

    @_retry_unreachable
    async def set_open_since(self, path: str, since: float | None) -> None:
        """Note that a known ``path`` is (``since`` given) or is no longer open for writing."""
        await self._write(
            "UPDATE paths SET open_since = $1 WHERE host = $2 AND path = $3",
            since,
            self.host,
            _b(path),
        )

    @_retry_unreachable
    async def mark_gone(self, path: str) -> None:
        """Record that this host's ``path`` was deleted or moved away."""
        now = self._clock()
        await self._write(
            "UPDATE paths SET state = 'gone', gone_at = $1, last_seen = $1, open_since = NULL "
            "WHERE host = $2 AND path = $3 AND state <> 'gone'",
            now,
            self.host,
            _b(path),
        )

    @_retry_unreachable
    async def mark_gone_under(self, folder: str) -> int:
        """Record every path of this host below ``folder`` as gone; returns how many."""
        now = self._clock()
        prefix = _b(folder.rstrip("/")) + b"/"
        return await self._write(
            "UPDATE paths SET state = 'gone', gone_at = $1, open_since = NULL "
            "WHERE host = $2 AND path >= $3 AND path < $4 AND state <> 'gone'",
            now,
            self.host,
            prefix,
            prefix[:-1] + b"0",
        )

    @_retry_unreachable
    async def mark_missing_gone(
        self, root: str, paths: Sequence[str], folders: Sequence[str], seen_before: float
    ) -> int:
        """After a complete scan of ``root`` on this host: mark gone ``paths`` and every path
        below ``folders``, among this host's paths under ``root`` not gone already and not
        recorded since ``seen_before``. Other hosts' paths are never touched. Returns how many
        paths were marked."""
        now = self._clock()
        lows = [_b(f.rstrip("/")) + b"/" for f in folders]
        highs = [low[:-1] + b"0" for low in lows]

        async def tx(db: Db) -> int:
            marked = _rowcount(
                await db.execute(
                    "UPDATE paths SET state = 'gone', gone_at = $1, open_since = NULL "
                    "WHERE host = $2 AND root = $3 AND path = ANY($4::bytea[]) "
                    "AND state <> 'gone' AND last_seen < $5",
                    now,
                    self.host,
                    root,
                    [_b(p) for p in paths],
                    seen_before,
                )
            )
            if lows:
                marked += _rowcount(
                    await db.execute(
                        "UPDATE paths p SET state = 'gone', gone_at = $1, open_since = NULL "
                        "FROM unnest($4::bytea[], $5::bytea[]) AS r (low, high) "
                        "WHERE p.host = $2 AND p.root = $3 AND p.path >= r.low "
                        "AND p.path < r.high AND p.state <> 'gone' AND p.last_seen < $6",
                        now,
                        self.host,
                        root,
                        lows,
                        highs,
                        seen_before,
                    )
                )
            return marked

        return await self._tx(tx)

    @_retry_unreachable
    async def forget_path(self, path: str) -> bool:
        """Stop tracking this host's ``path``. Returns True if it was known."""
        return (
            await self._write(
                "DELETE FROM paths WHERE host = $1 AND path = $2", self.host, _b(path)
            )
            > 0
        )

    def path_reader(self) -> PgPathReader:
        """A :class:`PgPathReader` for a scan's walker thread (call it in that thread)."""
        return PgPathReader(self)

    async def known_in_folder(
        self, folder: str
    ) -> tuple[dict[str, tuple[int, int, int, int, int] | None], list[str]]:
        """This host's tracked (not gone) files directly in ``folder`` by name, each with the
        fingerprint it was settled with (present or skipped) or None, and the names of its
        sub-folders holding tracked files: what :meth:`PgPathReader.folder` returns.

        Reads the folder's key range in pages; a sub-folder's rows are skipped by starting the
        next page after them, so each row is read once however deep the tree.
        """
        prefix = _b(folder.rstrip("/")) + b"/"
        upper = prefix[:-1] + b"0"
        cut = len(prefix)
        encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
        files: dict[str, tuple[int, int, int, int, int] | None] = {}
        subdirs: list[str] = []
        low, inclusive = prefix, True
        page = 500
        async with self._conn() as conn:
            while True:
                rows = await conn.fetch(
                    "SELECT path, dev, ino, size, mtime_ns, ctime_ns, state FROM paths "
                    f"WHERE host = $1 AND path {'>=' if inclusive else '>'} $2 AND path < $3 "
                    "AND state <> 'gone' ORDER BY path LIMIT $4",
                    self.host,
                    low,
                    upper,
                    page,
                )
                jumped = False
                for path, dev, ino, size, mtime_ns, ctime_ns, state in rows:
                    rest = bytes(path[cut:])
                    slash = rest.find(b"/")
                    if slash < 0:
                        settled = dev is not None and state in ("present", "skipped")
                        files[rest.decode(encoding, errors)] = (
                            (dev, ino, size, mtime_ns, ctime_ns) if settled else None
                        )
                        continue
                    child = rest[:slash]
                    subdirs.append(child.decode(encoding, errors))
                    low, inclusive, jumped = prefix + child + b"0", True, True
                    break
                if not jumped:
                    if len(rows) < page:
                        return files, subdirs
                    low, inclusive = bytes(rows[-1][0]), False

    # ---------------------------------------------------------------- contents

    async def get_content(self, sha256: str) -> Content | None:
        """Return the content with this exact hash, or None."""
        rows = await self._read(f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = $1", sha256)
        return _content(rows[0]) if rows else None

    async def find_contents(self, key: str) -> list[Content]:
        """Return contents whose sha256 starts with ``key`` (4+ hex digits) or whose current or
        superseded asset id is ``key``."""
        key = key.strip()
        rows = await self._read(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE asset_id = $1 OR sha256 IN "
            "(SELECT sha256 FROM superseded_assets WHERE asset_id = $1)",
            key,
        )
        if not rows and len(key) >= 4 and all(ch in "0123456789abcdefABCDEF" for ch in key):
            rows = await self._read(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 >= $1 AND sha256 < $2 "
                "ORDER BY sha256 LIMIT 20",
                key.lower(),
                key.lower() + "g",
            )
        return [_content(r) for r in rows]

    async def paths_of(self, sha256: str) -> list[tuple[str, PathRecord | None]]:
        """Every path, on any host, that ever held ``sha256``, with its current record."""
        rows = await self._read(
            f"SELECT h.path, {_P_PATH_COLS} FROM holdings h LEFT JOIN paths p "
            "ON p.host = h.host AND p.path = h.path WHERE h.sha256 = $1 "
            "ORDER BY h.first_seen, h.host",
            sha256,
        )
        return [(_s(r[0]), None if r[1] is None else _path(list(r)[1:])) for r in rows]

    async def hosts_of(self, sha256: str) -> list[tuple[str, str]]:
        """``(host, path)`` of every path that ever held ``sha256``, oldest first."""
        rows = await self._read(
            "SELECT host, path FROM holdings WHERE sha256 = $1 ORDER BY first_seen, host", sha256
        )
        return [(r[0], _s(r[1])) for r in rows]

    async def attempts_of(self, sha256: str) -> list[Attempt]:
        """Every upload attempt of ``sha256`` by any host, oldest first."""
        rows = await self._read(
            f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE sha256 = $1 ORDER BY id", sha256
        )
        return [_attempt(r) for r in rows]

    # ---------------------------------------------------------------- claims and uploads

    @_retry_unreachable
    async def due_jobs(self, limit: int, exclude: Iterable[str] = ()) -> list[Job]:
        """Claim up to ``limit`` contents due for upload now that a present path of this host
        holds, oldest due first; returns them with that path.

        ``exclude`` names contents already in flight here. Contents claimed by another host
        whose lease is live are skipped (``FOR UPDATE SKIP LOCKED`` keeps two hosts from
        claiming one row at once); expired ``uploading`` claims are taken over first (see the
        module docstring). A due content that no host holds a present path for is parked
        until one appears.
        """
        now = self._clock()
        skip = list(set(exclude))

        async def tx(db: Db) -> list[Job]:
            await _take_over_expired(db, self.host, now)
            rows = await db.fetch(
                "SELECT c.sha256, EXISTS (SELECT 1 FROM paths p WHERE p.sha256 = c.sha256 "
                "AND p.host = $1 AND p.state = 'present') FROM contents c "
                "WHERE c.state IN ('pending', 'allocated') AND c.next_attempt_at <= $2 "
                f"AND NOT (c.sha256 = ANY($3::text[])) AND {_FREE} AND {_WORKABLE} "
                "ORDER BY c.next_attempt_at LIMIT $4 FOR UPDATE OF c SKIP LOCKED",
                self.host,
                now,
                skip,
                limit,
            )
            mine = [r[0] for r in rows if r[1]]
            orphans = [r[0] for r in rows if not r[1]]
            if orphans:
                await db.execute(
                    "UPDATE contents SET next_attempt_at = $1, last_error = "
                    "'no present path holds this content', claimed_by = NULL, "
                    "lease_until = NULL WHERE sha256 = ANY($2::text[])",
                    now + _PARK_S,
                    orphans,
                )
            if not mine:
                return []
            claimed = await db.fetch(
                f"UPDATE contents SET claimed_by = $1, lease_until = {_NOW} + $2 "
                f"WHERE sha256 = ANY($3::text[]) RETURNING {_CONTENT_COLS}",
                self.host,
                self.lease_s,
                mine,
            )
            # A host whose claim expired between its steps (a signed URL allocated, not yet
            # sent) keeps no open attempt on what is now this host's.
            await db.execute(
                "UPDATE attempts SET ended_at = $1, outcome = 'interrupted', error = "
                "'lease of host ' || host || ' expired; taken over by host ' || $2 "
                "WHERE sha256 = ANY($3::text[]) AND ended_at IS NULL AND host <> $2",
                now,
                self.host,
                mine,
            )
            paths = await db.fetch(
                "SELECT DISTINCT ON (sha256) sha256, path, dev, ino, size, mtime_ns, ctime_ns "
                "FROM paths WHERE host = $1 AND state = 'present' AND sha256 = ANY($2::text[]) "
                "ORDER BY sha256, last_seen DESC",
                self.host,
                mine,
            )
            where = {r[0]: r for r in paths}
            jobs: list[Job] = []
            for row in sorted(claimed, key=lambda r: (r["next_attempt_at"], r["sha256"])):
                content = _content(row)
                p = where[content.sha256]
                fp = None if p[2] is None else Fingerprint(p[2], p[3], p[4], p[5], p[6])
                jobs.append(Job(content, _s(p[1]), fp))
            return jobs

        return await self._tx(tx)

    async def next_due_at(self) -> float | None:
        """When the next content this host could claim becomes due (None if none waits):
        a content another host claims counts from when that claim expires (converted from
        the server's clock to this host's), so a host wakes to take over a dead host's work."""
        rows = await self._read(
            "SELECT MIN(CASE WHEN c.claimed_by IS NOT NULL AND c.claimed_by <> $1 "
            f"AND c.lease_until >= {_NOW} THEN GREATEST(c.next_attempt_at, "
            f"c.lease_until - {_NOW} + $2) ELSE c.next_attempt_at END) FROM contents c "
            "WHERE (c.state IN ('pending', 'allocated') OR (c.state = 'uploading' "
            f"AND c.claimed_by IS DISTINCT FROM $1)) AND {_WORKABLE}",
            self.host,
            self._clock(),
        )
        return rows[0][0] if rows else None

    async def claimed_by(self, sha256: str) -> tuple[str | None, float | None]:
        """Who claims ``sha256`` and for how many more seconds (negative once expired)."""
        rows = await self._read(
            f"SELECT claimed_by, lease_until - {_NOW} FROM contents WHERE sha256 = $1", sha256
        )
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    async def release_claims(self) -> int:
        """Release every claim of this host on contents not being sent (graceful stop).
        Not retried: a stop must not wait for the server; leases expire anyway."""
        return await self._write(
            "UPDATE contents SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = $1 "
            "AND state IN ('pending', 'allocated', 'uploaded')",
            self.host,
        )

    @_retry_unreachable
    async def begin_attempt(
        self, sha256: str, path: str, mode: str, asset_id: str | None = None
    ) -> int:
        """Mark ``sha256`` as uploading and open an attempt row; returns the attempt id.

        Fenced: only while this host holds (or can take) the claim and the content is still
        ``pending`` or ``allocated``; raises :class:`ClaimLost` otherwise, and nothing is
        written. Committed before the first byte is sent.
        """
        now = self._clock()

        async def tx(db: Db) -> int:
            moved = await db.fetchval(
                f"UPDATE contents c SET state = 'uploading', upload_mode = $2, updated_at = $3, "
                f"claimed_by = $1, lease_until = {_NOW} + $4 WHERE c.sha256 = $5 "
                f"AND c.state IN ('pending', 'allocated') AND {_FREE} RETURNING 1",
                self.host,
                mode,
                now,
                self.lease_s,
                sha256,
            )
            if moved is None:
                raise await _claim_lost(db, self.host, sha256)
            attempt = await db.fetchval(
                "INSERT INTO attempts (sha256, host, path, mode, asset_id, started_at) "
                "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                sha256,
                self.host,
                _b(path),
                mode,
                asset_id,
                now,
            )
            return int(attempt)

        return await self._tx(tx)

    @_retry_unreachable
    async def mark_finishing(self, attempt_id: int) -> None:
        """A direct attempt is about to send its last bytes (recovery counts it if its answer
        is lost). Fenced: raises :class:`ClaimLost` when this host's attempt was closed by a
        takeover or its claim went to another host, so the last bytes are never sent."""

        async def tx(db: Db) -> None:
            row = await db.fetchrow(
                "SELECT a.sha256, a.outcome, a.ended_at IS NULL AND a.host = $1 "
                "AND c.claimed_by = $1 AND c.state = 'uploading' FROM attempts a "
                "JOIN contents c ON c.sha256 = a.sha256 WHERE a.id = $2 FOR UPDATE OF c",
                self.host,
                attempt_id,
            )
            if row is None or not row[2]:
                sha256 = "?" if row is None else row[0]
                raise await _claim_lost(db, self.host, sha256)
            if row[1] is None:
                await db.execute(
                    "UPDATE attempts SET outcome = 'finishing' WHERE id = $1", attempt_id
                )

        await self._tx(tx)

    @_retry_unreachable
    async def allocate(
        self, sha256: str, asset_id: str, url: str, expires_at: float, attempt_id: int
    ) -> None:
        """Record a signed-URL asset allocated for ``sha256``, before any byte moves.

        When this host's attempt was taken over meanwhile, the asset is kept as superseded
        (it never receives bytes) and :class:`ClaimLost` is raised.
        """
        now = self._clock()

        async def tx(db: Db) -> bool:
            if not await _attempt_live(db, self.host, attempt_id):
                await _keep_superseded(
                    db, asset_id, sha256, None, self.host, None,
                    f"allocated by host {self.host} after its claim was lost; never sent", now,
                )  # fmt: skip
                return False
            await db.execute(
                "UPDATE contents SET state = 'allocated', asset_id = $1, signed_url = $2, "
                "signed_url_expires_at = $3, upload_mode = 'signed_url', remote_status = "
                "'WAITING', updated_at = $4 WHERE sha256 = $5",
                asset_id,
                url,
                expires_at,
                now,
                sha256,
            )
            await db.execute(
                "UPDATE attempts SET asset_id = $1 WHERE id = $2", asset_id, attempt_id
            )
            return True

        if not await self._tx(tx):
            raise ClaimLost(f"{sha256[:12]}: claim lost before its signed URL was recorded")

    @_retry_unreachable
    async def mark_sending(self, sha256: str) -> None:
        """A signed-URL content goes from allocated to uploading (bytes start moving).
        Fenced like :meth:`begin_attempt`: raises :class:`ClaimLost` unless this host holds
        the claim."""
        now = self._clock()

        async def tx(db: Db) -> None:
            moved = await db.fetchval(
                f"UPDATE contents SET state = 'uploading', updated_at = $2, "
                f"lease_until = {_NOW} + $3 WHERE sha256 = $4 AND claimed_by = $1 "
                "AND state IN ('allocated', 'uploading') RETURNING 1",
                self.host,
                now,
                self.lease_s,
                sha256,
            )
            if moved is None:
                raise await _claim_lost(db, self.host, sha256)

        await self._tx(tx)

    @_retry_unreachable
    async def finish_upload(
        self,
        sha256: str,
        attempt_id: int,
        asset_id: str,
        *,
        bytes_sent: int,
        http_status: int | None,
        next_poll_at: float,
    ) -> None:
        """The API answered with ``asset_id`` for exactly ``sha256``'s bytes: uploaded.

        When this host had lost the claim (its attempt was taken over), the content is left
        to the host that took it and the asset is kept as superseded: a remote duplicate,
        counted once (the takeover counted it if the last bytes had left by then).
        """
        now = self._clock()

        async def tx(db: Db) -> None:
            if not await _attempt_live(db, self.host, attempt_id):
                await _late_answer(db, self.host, sha256, attempt_id, asset_id, now)
                return
            await db.execute(
                "UPDATE contents SET state = 'uploaded', asset_id = $1, remote_status = "
                "COALESCE(remote_status, 'WAITING'), signed_url = NULL, "
                "signed_url_expires_at = NULL, attempts = attempts + 1, last_error = NULL, "
                "uploaded_at = $2, updated_at = $2, next_poll_at = $3, polls = 0, "
                "claimed_by = NULL, lease_until = NULL WHERE sha256 = $4",
                asset_id,
                now,
                next_poll_at,
                sha256,
            )
            await db.execute(
                "UPDATE attempts SET ended_at = $1, outcome = 'ok', asset_id = $2, "
                "http_status = $3, bytes_sent = $4 WHERE id = $5",
                now,
                asset_id,
                http_status,
                bytes_sent,
                attempt_id,
            )

        await self._tx(tx)

    async def accepted_since(self, mode: str, since: float, other_than: str) -> bool:
        """Whether another content's upload in ``mode`` (by any host) succeeded after ``since``."""
        rows = await self._read(
            "SELECT EXISTS (SELECT 1 FROM attempts WHERE outcome = 'ok' AND mode = $1 "
            "AND sha256 <> $2 AND ended_at > $3)",
            mode,
            other_than,
            since,
        )
        return bool(rows[0][0])

    async def previous_attempt_end(self, sha256: str, attempt_id: int) -> float | None:
        """When the attempt of ``sha256`` before ``attempt_id`` ended (None if it is the first)."""
        rows = await self._read(
            "SELECT MAX(ended_at) FROM attempts WHERE sha256 = $1 AND id < $2",
            sha256,
            attempt_id,
        )
        return rows[0][0] if rows else None

    @_retry_unreachable
    async def retry_later(
        self,
        sha256: str,
        attempt_id: int | None,
        *,
        outcome: str,
        error: str,
        next_attempt_at: float,
        http_status: int | None = None,
        bytes_sent: int | None = None,
        count_attempt: bool = True,
        count_throttle: bool = False,
        keep_allocation: bool = False,
        possible_duplicate: bool = False,
    ) -> Content:
        """Put ``sha256`` back in the queue for ``next_attempt_at`` and release the claim;
        returns the content. As in the SQLite ledger; an attempt that was taken over (or a
        claim another host holds) only closes this host's attempt and leaves the content."""
        now = self._clock()
        state = "allocated" if keep_allocation else "pending"

        async def tx(db: Db) -> Content:
            if attempt_id is not None:
                live = await _attempt_live(db, self.host, attempt_id)
            else:
                live = bool(
                    await db.fetchval(
                        f"SELECT {_FREE} FROM contents c WHERE c.sha256 = $2 FOR UPDATE",
                        self.host,
                        sha256,
                    )
                )
            if live:
                if not keep_allocation:
                    await db.execute(
                        "INSERT INTO superseded_assets (asset_id, sha256, sent_sha256, host, "
                        "path, reason, at) SELECT asset_id, sha256, NULL, $1, NULL, $2, $3 "
                        "FROM contents WHERE sha256 = $4 AND asset_id IS NOT NULL "
                        "ON CONFLICT (asset_id) DO NOTHING",
                        self.host,
                        f"dropped on retry: {error}",
                        now,
                        sha256,
                    )
                await db.execute(
                    "UPDATE contents SET state = $1, attempts = attempts + $2, "
                    "throttle_count = throttle_count + $3, possible_duplicates = "
                    "possible_duplicates + $4, last_error = $5, next_attempt_at = $6, "
                    "updated_at = $7, asset_id = CASE WHEN $8 THEN asset_id END, "
                    "remote_status = CASE WHEN $8 THEN remote_status END, "
                    "signed_url = CASE WHEN $8 THEN signed_url END, "
                    "signed_url_expires_at = CASE WHEN $8 THEN signed_url_expires_at END, "
                    "claimed_by = NULL, lease_until = NULL WHERE sha256 = $9",
                    state,
                    int(count_attempt),
                    int(count_throttle),
                    int(possible_duplicate),
                    error,
                    next_attempt_at,
                    now,
                    keep_allocation,
                    sha256,
                )
            if attempt_id is not None:
                await _end_attempt(
                    db, now, attempt_id, outcome, error, http_status, bytes_sent, self.host
                )
            row = await db.fetchrow(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = $1", sha256
            )
            return _content(_must(row))

        return await self._tx(tx)

    @_retry_unreachable
    async def give_up(
        self,
        sha256: str,
        attempt_id: int | None,
        *,
        state: Literal["failed", "rejected"],
        outcome: str,
        error: str,
        http_status: int | None = None,
    ) -> None:
        """Mark ``sha256`` failed or rejected and release the claim (fenced as
        :meth:`retry_later`)."""
        now = self._clock()

        async def tx(db: Db) -> None:
            if attempt_id is None or await _attempt_live(db, self.host, attempt_id):
                await db.execute(
                    "UPDATE contents SET state = $1, last_error = $2, updated_at = $3, "
                    "attempts = attempts + $4, claimed_by = NULL, lease_until = NULL "
                    "WHERE sha256 = $5",
                    state,
                    error,
                    now,
                    int(attempt_id is not None),
                    sha256,
                )
            if attempt_id is not None:
                await _end_attempt(
                    db, now, attempt_id, outcome, error, http_status, None, self.host
                )

        await self._tx(tx)

    @_retry_unreachable
    async def supersede(
        self,
        sha256: str,
        attempt_id: int | None,
        asset_id: str,
        *,
        sent_sha256: str | None,
        path: str | None,
        reason: str,
    ) -> None:
        """Record ``asset_id`` as not ``sha256``'s asset; the content goes back to pending
        (due now, claim released) unless this host's attempt was taken over meanwhile."""
        now = self._clock()

        async def tx(db: Db) -> None:
            await _keep_superseded(db, asset_id, sha256, sent_sha256, self.host, path, reason, now)
            if attempt_id is None or await _attempt_live(db, self.host, attempt_id):
                await db.execute(
                    "UPDATE contents SET state = 'pending', asset_id = NULL, remote_status = "
                    "NULL, signed_url = NULL, signed_url_expires_at = NULL, last_error = $1, "
                    "next_attempt_at = $2, updated_at = $2, next_poll_at = NULL, "
                    "claimed_by = NULL, lease_until = NULL WHERE sha256 = $3 AND "
                    "(asset_id IS NULL OR asset_id = $4)",
                    reason,
                    now,
                    sha256,
                    asset_id,
                )
            if attempt_id is not None:
                await _end_attempt(db, now, attempt_id, "superseded", reason, None, None, self.host)

        await self._tx(tx)

    # ---------------------------------------------------------------- polling

    @_retry_unreachable
    async def due_polls(self, limit: int) -> list[Content]:
        """Claim uploaded contents whose remote status is due to be asked for, oldest due
        first (one host polls each: others skip a content claimed for polling)."""
        now = self._clock()
        rows = await self._read(
            f"UPDATE contents SET claimed_by = $1, lease_until = {_NOW} + $2 "
            "WHERE sha256 IN (SELECT c.sha256 FROM contents c WHERE c.state = 'uploaded' "
            f"AND c.next_poll_at <= $3 AND {_FREE} ORDER BY c.next_poll_at LIMIT $4 "
            f"FOR UPDATE OF c SKIP LOCKED) RETURNING {_CONTENT_COLS}",
            self.host,
            self.lease_s,
            now,
            limit,
        )
        return sorted((_content(r) for r in rows), key=lambda c: (c.next_poll_at or 0, c.sha256))

    async def next_poll_at(self) -> float | None:
        """When the next status poll this host could take is due (None if none awaits)."""
        rows = await self._read(
            f"SELECT MIN(c.next_poll_at) FROM contents c WHERE c.state = 'uploaded' AND {_FREE}",
            self.host,
        )
        return rows[0][0] if rows else None

    @_retry_unreachable
    async def record_status(
        self, sha256: str, asset_id: str, status: str, *, next_poll_at: float | None
    ) -> None:
        """Record a polled remote status (``SUCCESS`` makes the content done) and release
        the poll claim."""
        now = self._clock()

        async def tx(db: Db) -> None:
            row = await db.fetchrow(
                "SELECT remote_status, asset_id, state FROM contents WHERE sha256 = $1 FOR UPDATE",
                sha256,
            )
            if row is None or row[1] != asset_id or row[2] != "uploaded":
                return  # superseded or re-queued meanwhile: this answer is stale
            if row[0] != status:
                await db.execute(
                    "INSERT INTO status_changes (sha256, asset_id, remote_status, at) "
                    "VALUES ($1, $2, $3, $4)",
                    sha256,
                    asset_id,
                    status,
                    now,
                )
            if status == "SUCCESS":
                await db.execute(
                    "UPDATE contents SET state = 'done', remote_status = 'SUCCESS', "
                    "done_at = $1, updated_at = $1, next_poll_at = NULL, polls = polls + 1, "
                    "last_error = NULL, claimed_by = NULL, lease_until = NULL "
                    "WHERE sha256 = $2",
                    now,
                    sha256,
                )
            else:
                await db.execute(
                    "UPDATE contents SET remote_status = $1, updated_at = $2, "
                    "next_poll_at = $3, polls = polls + 1, claimed_by = NULL, "
                    "lease_until = NULL WHERE sha256 = $4",
                    status,
                    now,
                    next_poll_at,
                    sha256,
                )

        await self._tx(tx)

    @_retry_unreachable
    async def remote_failed(
        self, sha256: str, asset_id: str, reason: str, *, max_attempts: int
    ) -> ContentState:
        """The asset ended ``FAILED`` (or vanished): re-upload, or fail when attempts ran out.
        Returns the content's new state (``pending`` or ``failed``)."""
        now = self._clock()

        async def tx(db: Db) -> ContentState:
            row = await db.fetchrow(
                "SELECT attempts, asset_id FROM contents WHERE sha256 = $1 FOR UPDATE", sha256
            )
            if row is None or row[1] != asset_id:
                return "pending"
            await db.execute(
                "INSERT INTO status_changes (sha256, asset_id, remote_status, at) "
                "VALUES ($1, $2, 'FAILED', $3)",
                sha256,
                asset_id,
                now,
            )
            await _keep_superseded(db, asset_id, sha256, sha256, self.host, None, reason, now)
            state: ContentState = "failed" if row[0] >= max_attempts else "pending"
            await db.execute(
                "UPDATE contents SET state = $1, remote_status = 'FAILED', asset_id = NULL, "
                "remote_failures = remote_failures + 1, last_error = $2, next_attempt_at = $3, "
                "next_poll_at = NULL, updated_at = $3, claimed_by = NULL, lease_until = NULL "
                "WHERE sha256 = $4",
                state,
                reason,
                now,
                sha256,
            )
            return state

        return await self._tx(tx)

    # ---------------------------------------------------------------- recovery and operators

    @_retry_unreachable
    async def recover(self) -> RecoveryReport:
        """Startup recovery of this host's own work (the rest of the fleet carries on).

        Contents this host left ``uploading`` are recovered as in the SQLite ledger (direct:
        back to ``pending``, one possible remote duplicate if its last bytes had left;
        signed-URL: back to ``allocated`` on the same asset id), this host's open attempts are
        closed as interrupted, its claims are released, and polls are due now.
        """
        now = self._clock()

        async def tx(db: Db) -> RecoveryReport:
            direct = _rowcount(
                await db.execute(
                    "UPDATE contents c SET state = 'pending', possible_duplicates = "
                    "possible_duplicates + CASE WHEN EXISTS (SELECT 1 FROM attempts a WHERE "
                    "a.sha256 = c.sha256 AND a.host = $1 AND a.ended_at IS NULL AND "
                    "a.outcome = 'finishing') THEN 1 ELSE 0 END, next_attempt_at = $2, "
                    "updated_at = $2, last_error = 'interrupted during a direct upload' "
                    "WHERE c.state = 'uploading' AND c.upload_mode = 'direct' "
                    "AND c.claimed_by = $1",
                    self.host,
                    now,
                )
            )
            signed = _rowcount(
                await db.execute(
                    "UPDATE contents SET state = CASE WHEN asset_id IS NULL THEN 'pending' "
                    "ELSE 'allocated' END, next_attempt_at = $2, updated_at = $2 "
                    "WHERE state = 'uploading' AND claimed_by = $1",
                    self.host,
                    now,
                )
            )
            await db.execute(
                "UPDATE attempts SET ended_at = $2, outcome = CASE WHEN outcome = 'finishing' "
                "THEN 'interrupted_possible_duplicate' ELSE 'interrupted' END "
                "WHERE host = $1 AND ended_at IS NULL",
                self.host,
                now,
            )
            await db.execute(
                "UPDATE contents SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = $1",
                self.host,
            )
            polls = _rowcount(
                await db.execute(
                    f"UPDATE contents c SET next_poll_at = $2 WHERE c.state = 'uploaded' "
                    f"AND {_FREE}",
                    self.host,
                    now,
                )
            )
            return RecoveryReport(direct, signed, polls)

        return await self._tx(tx)

    @_retry_unreachable
    async def requeue(self, *, states: Sequence[ContentState], sha256s: Sequence[str] = ()) -> int:
        """Operator retry: contents in ``states`` (all, or only ``sha256s``) become due now.
        Attempts and throttle counts restart from zero. Returns how many were re-queued."""
        now = self._clock()
        sql = (
            "UPDATE contents SET state = CASE WHEN asset_id IS NOT NULL AND signed_url IS NOT "
            "NULL THEN 'allocated' ELSE 'pending' END, attempts = 0, throttle_count = 0, "
            "next_attempt_at = $1, updated_at = $1, claimed_by = NULL, lease_until = NULL "
            "WHERE state = ANY($2::text[])"
        )
        args: list[Any] = [now, list(states)]
        if sha256s:
            sql += " AND sha256 = ANY($3::text[])"
            args.append(list(sha256s))
        return await self._write(sql, *args)

    async def counts(self) -> dict[str, dict[str, int]]:
        """Counts per content state and per path state (every host), plus backlog bytes."""
        contents: dict[str, int] = {s: 0 for s in CONTENT_STATES}
        for state, n in await self._read("SELECT state, COUNT(*) FROM contents GROUP BY state"):
            contents[state] = n
        paths: dict[str, int] = {s: 0 for s in PATH_STATES}
        for state, n in await self._read("SELECT state, COUNT(*) FROM paths GROUP BY state"):
            paths[state] = n
        rows = await self._read(
            "SELECT COALESCE(SUM(size), 0)::bigint FROM contents "
            "WHERE state IN ('pending', 'allocated', 'uploading')"
        )
        return {"contents": contents, "paths": paths, "backlog": {"bytes": int(rows[0][0])}}

    async def unfinished_count(self) -> int:
        """Contents a present path of this host holds that are still on their way to a final
        state (another host may be the one uploading them); parked ones are not counted."""
        rows = await self._read(
            "SELECT COUNT(*) FROM contents c WHERE c.state IN "
            "('pending', 'allocated', 'uploading', 'uploaded') "
            "AND NOT (c.state IN ('pending', 'allocated') AND c.last_error LIKE "
            "'no present path%') AND EXISTS (SELECT 1 FROM paths p WHERE p.sha256 = c.sha256 "
            "AND p.host = $1 AND p.state = 'present')",
            self.host,
        )
        return int(rows[0][0])

    async def possible_duplicates(self) -> int:
        """Total possible remote duplicates counted, fleet-wide."""
        rows = await self._read(
            "SELECT COALESCE(SUM(possible_duplicates), 0)::bigint FROM contents"
        )
        return int(rows[0][0])

    async def iter_assets(
        self,
        *,
        states: Sequence[str] = (),
        root: str | None = None,
        since: float | None = None,
        page_size: int = 1000,
        on_page: Callable[[int], None] | None = None,
        host: str | None = None,
    ) -> AsyncGenerator[tuple[PathRecord, Content | None], None]:
        """Stream every known path of every host (or of ``host`` only) with its content, in
        path order, with the filters of the SQLite ledger's ``iter_assets``. Raises
        :class:`ValueError` for an unknown state."""
        unknown = [s for s in states if s not in CONTENT_STATES and s not in PATH_STATES]
        if unknown:
            raise ValueError(f"unknown state {unknown[0]!r}")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        content_states = [s for s in states if s in CONTENT_STATES]
        path_states = [s for s in states if s in PATH_STATES]
        either: list[str] = []
        if content_states:
            either.append(f"c.state = ANY({arg(content_states)}::text[])")
        if path_states:
            either.append(f"p.state = ANY({arg(path_states)}::text[])")
        if either:
            where.append("(" + " OR ".join(either) + ")")
        if root is not None:
            prefix = _b(posixpath.normpath(root)).rstrip(b"/") + b"/"
            where.append(f"p.path >= {arg(prefix)} AND p.path < {arg(prefix[:-1] + b'0')}")
        if since is not None:
            where.append(
                "GREATEST(p.first_seen, COALESCE(c.updated_at, 0), COALESCE(p.gone_at, 0)) "
                f">= {arg(since)}"
            )
        if host is not None:
            where.append(f"p.host = {arg(host)}")
        fixed = len(args)
        base = (
            f"SELECT {_P_PATH_COLS}, {_C_CONTENT_COLS}, p.host FROM paths p "
            "LEFT JOIN contents c ON c.sha256 = p.sha256 WHERE "
        )
        after: tuple[bytes, str] | None = None
        while True:
            page_args = list(args)
            keyset: list[str] = []
            if after is not None:
                keyset = [f"(p.path, p.host) > (${fixed + 1}, ${fixed + 2})"]
                page_args.extend(after)
            page_args.append(page_size)
            sql = (
                base
                + " AND ".join([*keyset, *where] or ["TRUE"])
                + f" ORDER BY p.path, p.host LIMIT ${len(page_args)}"
            )
            page = await self._read(sql, *page_args)
            if on_page is not None:
                on_page(len(page))
            for row in page:
                values = list(row)
                content = None if values[_N_PATH] is None else _content(values[_N_PATH:-1])
                yield _path(values[:_N_PATH]), content
            if len(page) < page_size:
                return
            after = (bytes(page[-1][0]), str(page[-1][-1]))

    async def upload_activity(self, since: float) -> dict[str, dict[str, int]]:
        """Upload attempts of every host started at or after ``since``, per upload mode:
        ``{mode: {"requests": n, "ok": n, "bytes": n}}``."""
        rows = await self._read(
            "SELECT mode, COUNT(*), COUNT(*) FILTER (WHERE outcome = 'ok'), "
            "COALESCE(SUM(bytes_sent) FILTER (WHERE outcome = 'ok'), 0)::bigint "
            "FROM attempts WHERE started_at >= $1 GROUP BY mode",
            since,
        )
        return {r[0]: {"requests": r[1], "ok": r[2], "bytes": r[3]} for r in rows}

    async def oldest_waiting_content(self) -> tuple[Content, str | None] | None:
        """The backlog content recorded longest ago, with one present path holding it (this
        host's first), or None when the backlog is empty."""
        rows = await self._read(
            f"SELECT {_C_CONTENT_COLS}, (SELECT p.path FROM paths p WHERE p.sha256 = c.sha256 "
            "AND p.state = 'present' ORDER BY (p.host = $1) DESC, p.last_seen DESC LIMIT 1) "
            "FROM contents c WHERE c.state IN ('pending', 'allocated', 'uploading') "
            "ORDER BY c.created_at LIMIT 1",
            self.host,
        )
        if not rows:
            return None
        values = list(rows[0])
        path = values[-1]
        return _content(values[:-1]), None if path is None else _s(path)

    async def oldest_unsettled_path(self) -> PathRecord | None:
        """This host's path waiting to settle seen first, or None."""
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND state = 'unsettled' "
            "ORDER BY COALESCE(open_since, first_seen) LIMIT 1",
            self.host,
        )
        return _path(rows[0]) if rows else None

    async def due_count(self, now: float) -> int:
        """How many contents (fleet-wide) are due for upload at ``now``."""
        rows = await self._read(
            "SELECT COUNT(*) FROM contents WHERE state IN ('pending', 'allocated') "
            "AND next_attempt_at <= $1",
            now,
        )
        return int(rows[0][0])

    async def superseded_of(self, sha256: str) -> list[tuple[str, str, float]]:
        """Remote assets once uploaded for ``sha256`` but not its asset, oldest first."""
        rows = await self._read(
            "SELECT asset_id, reason, at FROM superseded_assets WHERE sha256 = $1 "
            "ORDER BY at, asset_id",
            sha256,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def get_contents(self, sha256s: Sequence[str]) -> dict[str, Content]:
        """Return the contents among ``sha256s`` that the ledger knows."""
        rows = await self._read(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = ANY($1::text[])",
            list(dict.fromkeys(sha256s)),
        )
        return {c.sha256: c for c in map(_content, rows)}

    async def any_done_asset_id(self) -> str | None:
        """Return the asset id of some content that is done (for a key probe), or None."""
        rows = await self._read(
            "SELECT asset_id FROM contents WHERE state = 'done' AND asset_id IS NOT NULL LIMIT 1"
        )
        return str(rows[0][0]) if rows else None

    # ---- dashboard pages
    # The local endpoint's lists, one bounded query per page, as the SQLite ledger's: the
    # fleet's uploads and problem contents, this host's paths.

    async def recent_uploads(
        self, limit: int, before_id: int | None = None
    ) -> list[tuple[Attempt, Content | None]]:
        """The last ``limit`` successful upload attempts of every host (newest first), each
        with its content, before attempt ``before_id`` when given (the next page)."""
        rows = await self._read(
            f"SELECT {', '.join('a.' + c for c in Attempt.__slots__)}, {_C_CONTENT_COLS} "
            "FROM attempts a LEFT JOIN contents c ON c.sha256 = a.sha256 "
            "WHERE a.outcome = 'ok' AND a.id < $1 ORDER BY a.id DESC LIMIT $2",
            before_id if before_id is not None else 1 << 62,
            limit,
        )
        n = len(Attempt.__slots__)
        found: list[tuple[Attempt, Content | None]] = []
        for row in rows:
            values = list(row)
            content = None if values[n] is None else _content(values[n:])
            found.append((_attempt(values[:n]), content))
        return found

    async def problem_contents(
        self, limit: int, after: tuple[float, str] | None = None
    ) -> list[tuple[Content, str | None]]:
        """Failed and rejected contents, the most recently changed first, each with one path
        that holds it (this host's present one first); ``after`` is the last ``(updated_at,
        sha256)`` of the previous page."""
        keyset = "AND (c.updated_at, c.sha256) < ($3, $4) " if after is not None else ""
        rows = await self._read(
            f"SELECT {_C_CONTENT_COLS}, (SELECT p.path FROM paths p WHERE p.sha256 = c.sha256 "
            "ORDER BY (p.state = 'present') DESC, (p.host = $1) DESC, p.last_seen DESC "
            "LIMIT 1) FROM contents c "
            f"WHERE c.state IN ('failed', 'rejected') {keyset}"
            "ORDER BY c.updated_at DESC, c.sha256 DESC LIMIT $2",
            self.host,
            limit,
            *(after or ()),
        )
        found: list[tuple[Content, str | None]] = []
        for row in rows:
            values = list(row)
            found.append((_content(values[:-1]), None if values[-1] is None else _s(values[-1])))
        return found

    async def problem_paths(
        self, roots: Sequence[str], limit: int, after: str | None = None
    ) -> list[PathRecord]:
        """This host's paths under the given roots in state ``error`` or ``unsettled``, in
        path order after ``after``."""
        if not roots:
            return []
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND root = ANY($2::text[]) "
            "AND state IN ('error', 'unsettled') AND path > $3 ORDER BY path LIMIT $4",
            self.host,
            list(roots),
            _b(after) if after is not None else b"",
            limit,
        )
        return [_path(r) for r in rows]

    async def find_paths(self, part: str, limit: int) -> list[PathRecord]:
        """Up to ``limit`` of this host's paths that start with ``part`` (when it is absolute:
        a range of the primary key) or else contain it anywhere, in path order."""
        needle = _b(part)
        if part.startswith("/"):
            upper = needle[:-1] + bytes([needle[-1] + 1]) if needle[-1] < 255 else needle + b"\xff"
            rows = await self._read(
                f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND path >= $2 AND path < $3 "
                "ORDER BY path LIMIT $4",
                self.host,
                needle,
                upper,
                limit,
            )
        else:
            rows = await self._read(
                f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND position($2 in path) > 0 "
                "ORDER BY path LIMIT $3",
                self.host,
                needle,
                limit,
            )
        return [_path(r) for r in rows]


class PgPathReader:
    """The paths a scan compares a folder's listing with, asked from the scan's own thread.

    The walker runs in a thread; each :meth:`folder` call hands the query to the store's
    event loop and waits for it (the loop stays free meanwhile). Raises :class:`LedgerError`
    (the walk then stops comparing and hands every file on).
    """

    def __init__(self, store: PostgresLedger, timeout_s: float = 60.0) -> None:
        self._store = store
        self._timeout_s = timeout_s

    def folder(
        self, folder: str
    ) -> tuple[dict[str, tuple[int, int, int, int, int] | None], list[str]]:
        """See :meth:`PostgresLedger.known_in_folder`."""
        future = asyncio.run_coroutine_threadsafe(
            self._store.known_in_folder(folder), self._store._loop
        )
        try:
            return future.result(self._timeout_s)
        except TimeoutError:
            future.cancel()
            raise LedgerUnreachable(f"ledger {self._store.path}: no answer in time") from None

    def close(self) -> None:
        """Nothing to release: the queries ran on the store's pool."""


# -------------------------------------------------------------------- statements


async def _upsert_path(
    db: Db,
    host: str,
    path: str,
    root: str,
    state: PathState,
    sha256: str | None,
    reason: str | None,
    fp: Fingerprint | None,
    now: float,
    open_since: float | None = None,
) -> None:
    dev, ino, size, mtime, ctime = fp if fp is not None else (None,) * 5
    await db.execute(
        "INSERT INTO paths (host, path, root, state, sha256, reason, dev, ino, size, mtime_ns, "
        "ctime_ns, open_since, first_seen, last_seen, gone_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14) "
        "ON CONFLICT (host, path) DO UPDATE SET root = excluded.root, state = excluded.state, "
        "sha256 = excluded.sha256, reason = excluded.reason, dev = excluded.dev, "
        "ino = excluded.ino, size = excluded.size, mtime_ns = excluded.mtime_ns, "
        "ctime_ns = excluded.ctime_ns, open_since = excluded.open_since, "
        "last_seen = excluded.last_seen, gone_at = excluded.gone_at",
        host,
        _b(path),
        root,
        state,
        sha256,
        reason,
        dev,
        ino,
        size,
        mtime,
        ctime,
        open_since,
        now,
        now if state == "gone" else None,
    )


async def _take_over_expired(db: Db, host: str, now: float) -> None:
    """Contents left ``uploading`` by a host whose lease expired (killed, frozen, cut off):
    close its attempts and put them back as its own restart would (direct: ``pending``, one
    possible remote duplicate when its last bytes had left; signed-URL: ``allocated`` on the
    same asset id). Never re-sent blindly: the next claim starts from that state."""
    rows = await db.fetch(
        "SELECT sha256, claimed_by FROM contents WHERE state = 'uploading' "
        f"AND claimed_by IS DISTINCT FROM $1 AND COALESCE(lease_until, 0) < {_NOW} "
        "ORDER BY sha256 LIMIT 100 FOR UPDATE SKIP LOCKED",
        host,
    )
    for sha256, holder in rows:
        closed = await db.fetch(
            "UPDATE attempts SET ended_at = $2, error = $3, outcome = CASE WHEN outcome = "
            "'finishing' THEN 'interrupted_possible_duplicate' ELSE 'interrupted' END "
            "WHERE sha256 = $1 AND ended_at IS NULL "
            "RETURNING outcome = 'interrupted_possible_duplicate'",
            sha256,
            now,
            f"lease of host {holder} expired; taken over by host {host}",
        )
        finishing = any(r[0] for r in closed)
        await db.execute(
            "UPDATE contents SET state = CASE WHEN upload_mode = 'direct' OR asset_id IS NULL "
            "THEN 'pending' ELSE 'allocated' END, possible_duplicates = possible_duplicates + "
            "CASE WHEN upload_mode = 'direct' AND $2 THEN 1 ELSE 0 END, next_attempt_at = $3, "
            "updated_at = $3, last_error = $4, claimed_by = NULL, lease_until = NULL "
            "WHERE sha256 = $1",
            sha256,
            bool(finishing),
            now,
            f"lease of host {holder} expired during an upload",
        )
        log.warning(
            "%s: the lease of host %s expired during its upload; taken over%s",
            sha256[:12],
            holder,
            " (counted as a possible remote duplicate)" if finishing else "",
        )


async def _attempt_live(db: Db, host: str, attempt_id: int) -> bool:
    """Whether ``attempt_id`` is this host's and still open (no takeover closed it); locks
    its content's row for the rest of the transaction."""
    row = await db.fetchrow(
        "SELECT a.ended_at IS NULL AND a.host = $1 AND c.claimed_by IS NOT DISTINCT FROM $1 "
        "FROM attempts a JOIN contents c ON c.sha256 = a.sha256 WHERE a.id = $2 "
        "FOR UPDATE OF c",
        host,
        attempt_id,
    )
    return bool(row is not None and row[0])


async def _claim_lost(db: Db, host: str, sha256: str) -> ClaimLost:
    row = await db.fetchrow(
        f"SELECT state, claimed_by, lease_until - {_NOW} FROM contents WHERE sha256 = $1",
        sha256,
    )
    if row is None:
        return ClaimLost(f"{sha256[:12]}: not in the ledger")
    state, holder, left = row
    if holder is not None and holder != host:
        why = f"claimed by host {holder} (lease {max(0.0, left or 0.0):.0f} s left)"
    else:
        why = f"now {state}"
    return ClaimLost(f"{sha256[:12]}: host {host} lost its claim ({why}); not sending")


async def _keep_superseded(
    db: Db,
    asset_id: str,
    sha256: str,
    sent_sha256: str | None,
    host: str,
    path: str | None,
    reason: str,
    now: float,
) -> None:
    await db.execute(
        "INSERT INTO superseded_assets (asset_id, sha256, sent_sha256, host, path, reason, at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (asset_id) DO NOTHING",
        asset_id,
        sha256,
        sent_sha256,
        host,
        None if path is None else _b(path),
        reason,
        now,
    )


async def _late_answer(
    db: Db, host: str, sha256: str, attempt_id: int, asset_id: str, now: float
) -> None:
    """The API answered ``asset_id`` to an attempt this host had lost: the bytes left, so
    the asset exists. Keep it (superseded) and count the duplicate, unless the takeover
    counted it already or it is the content's own asset (a signed URL resent)."""
    row = await db.fetchrow(
        "SELECT a.outcome, c.asset_id FROM attempts a JOIN contents c ON c.sha256 = a.sha256 "
        "WHERE a.id = $1",
        attempt_id,
    )
    if row is None or row[1] == asset_id:
        return
    counted = row[0] == "interrupted_possible_duplicate"
    await _keep_superseded(
        db, asset_id, sha256, sha256, host, None,
        f"remote duplicate: answered to host {host} after its claim was lost", now,
    )  # fmt: skip
    if not counted:
        await db.execute(
            "UPDATE contents SET possible_duplicates = possible_duplicates + 1 WHERE sha256 = $1",
            sha256,
        )
    await db.execute(
        "UPDATE attempts SET outcome = 'late_duplicate', asset_id = $2 WHERE id = $1",
        attempt_id,
        asset_id,
    )
    log.warning(
        "%s: asset %s was answered to host %s after its claim was lost: kept as a remote duplicate",
        sha256[:12],
        asset_id,
        host,
    )


async def _end_attempt(
    db: Db,
    now: float,
    attempt_id: int,
    outcome: str,
    error: str | None,
    http_status: int | None,
    bytes_sent: int | None,
    host: str,
) -> None:
    """Close this host's ``attempt_id`` (one a takeover closed already keeps its outcome)."""
    await db.execute(
        "UPDATE attempts SET ended_at = $1, outcome = $2, error = $3, http_status = $4, "
        "bytes_sent = $5 WHERE id = $6 AND host = $7 AND ended_at IS NULL",
        now,
        outcome,
        error,
        http_status,
        bytes_sent,
        attempt_id,
        host,
    )


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
