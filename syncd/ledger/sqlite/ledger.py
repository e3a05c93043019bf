"""The ledger: one SQLite file (WAL) mapping content hashes to remote assets, and paths to contents.

The ledger is the queue: contents due for upload or polling are rows, not objects in memory.
Every state change is one committed transaction, written before the step that depends on it.
One daemon owns a ledger at a time (an ``flock`` on ``<ledger>.lock`` holding its pid); command
line tools open it read-only, or write through short transactions of their own.

Paths are ``str`` in Python (``os.fsdecode``, so undecodable bytes survive as surrogates) and
stored as BLOBs of the exact on-disk bytes. Times are wall-clock epoch seconds (``time.time``).
The schema, states and transitions are documented in ``docs/ledger.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import posixpath
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar
from urllib.parse import quote

from syncd.errors import LedgerCorrupt, LedgerError, LedgerLocked, LedgerUnwritable
from syncd.fingerprint import Fingerprint
from syncd.ledger.migrations import migrate
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
STALL_RETRY_MAX_S = 30.0


def _retry_stalled(
    fn: Callable[Concatenate[Ledger, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[Ledger, _P], Coroutine[Any, Any, _R]]:
    """Make a write method wait out a stalled ledger and retry, logging once per episode.

    Safe because a stalled transaction rolled back entirely: running the method again is
    running it for the first time.
    """

    async def wrapper(self: Ledger, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
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


class LedgerLock:
    """Exclusive ownership of a ledger by one daemon: ``flock`` on ``<ledger>.lock``.

    The lock file holds the owner's pid so a second daemon can name it. The kernel drops the lock
    when the process dies, so a stale file never blocks a restart.
    """

    def __init__(self, ledger_path: str) -> None:
        self.path = ledger_path + ".lock"
        self._fd: int | None = None
        self.previous = ""  # what the lock file held when acquired

    def acquire(self) -> None:
        """Take the lock; raises :class:`LedgerLocked` naming the holder's pid if it is held."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise LedgerUnwritable(
                f"cannot create the ledger's lock file {self.path}: {exc.strerror or exc}"
                + (
                    "; the ledger must be on a writable file system"
                    if exc.errno == errno.EROFS
                    else ""
                )
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LedgerLocked(self.path[: -len(".lock")], holder_pid(self.path)) from None
            raise
        # What the previous owner left: its pid, and a stamp if it closed the ledger cleanly.
        self.previous = os.pread(fd, 4096, 0).decode("ascii", "replace")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def closed_cleanly(self) -> bool:
        """Whether the previous owner closed the ledger cleanly and nothing has touched its
        files since (same device, inode, size, mtime and ctime of the file and its WAL).
        Call after :meth:`acquire`."""
        lines = self.previous.splitlines()
        stamp = _files_stamp(self.path[: -len(".lock")])
        return stamp is not None and f"{_CLEAN_STAMP} {stamp}" in lines

    def mark_clean(self) -> None:
        """Record that the ledger was just closed cleanly (its connection closed after a
        graceful stop): the next owner may skip the check at open while the files stay
        untouched. Acquiring the lock clears the mark."""
        stamp = _files_stamp(self.path[: -len(".lock")])
        if self._fd is None or stamp is None:
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n{_CLEAN_STAMP} {stamp}\n".encode(), 0)

    def release(self) -> None:
        """Drop the lock (the file stays; its content no longer matters)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_CLEAN_STAMP = "closed-cleanly"


def _files_stamp(ledger_path: str) -> str | None:
    """The stat fingerprints of the ledger file and its WAL (``-`` when absent); None when the
    ledger file cannot be stat-ed."""
    parts: list[str] = []
    for suffix in ("", "-wal"):
        try:
            st = os.stat(ledger_path + suffix)
        except FileNotFoundError:
            if not suffix:
                return None
            parts.append("-")
            continue
        except OSError:
            return None
        parts.append(f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}")
    return " ".join(parts)


def holder_pid(lock_path: str) -> int | None:
    """Return the pid of the daemon holding ``lock_path``, or None if nobody holds it."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 32).decode("ascii", "replace").split("\n")[0].strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def prepare_ledger_dir(path: str) -> None:
    """Create the ledger's folder (0700) and file (0600) if missing; raises LedgerUnwritable."""
    folder = os.path.dirname(path) or "."
    try:
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise LedgerUnwritable(
                f"ledger {path} is on a read-only file system; syncd must be able to write it "
                "(set ledger.path to a writable place, e.g. /var/lib/syncd)"
            ) from None
        raise LedgerUnwritable(f"cannot create ledger {path}: {exc.strerror or exc}") from None


@dataclass(slots=True)
class _Call:
    """One function queued for a connection's thread, and where its outcome goes."""

    fn: Callable[[sqlite3.Connection], Any]
    grouped: bool  # a write transaction that may share one SQLite transaction with others
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    ok: bool = False
    value: Any = None


class _Connection:
    """One ``sqlite3`` connection owned by one thread that runs the functions queued to it.

    Each queued function is given the connection and runs on that thread as a whole, so a
    transaction costs one round trip through the event loop however many statements it has.
    The thread takes everything queued since its last turn at once: consecutive *grouped*
    calls (write transactions) run inside one ``BEGIN IMMEDIATE ... COMMIT``, each in its own
    SAVEPOINT so a function that raises rolls back only its own work (group commit); the others
    run alone, outside any transaction. Every outcome of a turn is handed back to the event
    loop in one ``call_soon_threadsafe``, after the COMMIT: a caller never sees its write
    before it is durable, and never sees a failed group's work as done.
    """

    def __init__(self, conn: sqlite3.Connection, name: str) -> None:
        self.conn = conn
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[sqlite3.Connection], _T], *, grouped: bool = False) -> _T:
        """Run ``fn(connection)`` on the connection's thread; return what it returns.

        ``grouped`` marks a write transaction: it runs inside a transaction shared with the
        other write transactions queued meanwhile and returns only after that COMMIT. Raises
        what ``fn`` raised, or the ``sqlite3.Error`` that made the shared transaction fail. A
        cancelled caller's function may still run (whole, or not at all).
        """
        if self._closed:
            raise LedgerError("internal error: the ledger is closed")
        loop = asyncio.get_running_loop()
        call = _Call(fn, grouped, loop, loop.create_future())
        self._queue.put(call)
        return await call.future  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    async def close(self) -> None:
        """Run what is queued, close the connection and end the thread."""
        if self._closed:
            return
        await self.call(lambda conn: conn.close())
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            calls = [first]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                calls.append(more)
            i = 0
            while i < len(calls):
                if calls[i].grouped:
                    j = i
                    while j < len(calls) and calls[j].grouped:
                        j += 1
                    self._run_group(calls[i:j])
                    i = j
                else:
                    self._run_alone(calls[i])
                    i += 1
            self._hand_back(calls)
            if stop:
                return

    def _run_alone(self, call: _Call) -> None:
        try:
            call.value, call.ok = call.fn(self.conn), True
        except BaseException as exc:  # handed to the caller, whatever it is
            call.value, call.ok = exc, False

    def _run_group(self, calls: list[_Call]) -> None:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for call in calls:
                conn.execute("SAVEPOINT call")
                try:
                    call.value, call.ok = call.fn(conn), True
                except BaseException as exc:
                    if not conn.in_transaction:
                        raise  # SQLite rolled the whole transaction back (disk full, I/O)
                    call.value, call.ok = exc, False
                    conn.execute("ROLLBACK TO call")
                conn.execute("RELEASE call")
            conn.execute("COMMIT")
        except BaseException as exc:
            # Nothing of this group was committed: every caller gets the error (a stall is
            # retried by each one), whatever its own function returned.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for call in calls:
                call.value, call.ok = exc, False

    def _hand_back(self, calls: list[_Call]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        for call in calls:
            by_loop.setdefault(call.loop, []).append(call)
        for loop, mine in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, mine)


def _resolve(calls: list[_Call]) -> None:
    for call in calls:
        if call.future.done():
            continue  # the caller was cancelled
        if call.ok:
            call.future.set_result(call.value)
        else:
            call.future.set_exception(call.value)


def _connect(target: str, uri: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, *, now: float) -> None:
    """Set the writer connection up (WAL, durability, foreign keys) and migrate the schema."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn, now)


def _fetch(sql: str, params: Sequence[Any]) -> Callable[[sqlite3.Connection], list[Any]]:
    def run(conn: sqlite3.Connection) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    return run


class Ledger:
    """Async access to the ledger.

    Use :meth:`open`. Every public coroutine is one transaction, run as one function on a
    connection's own thread (see :class:`_Connection`): writes on the writer connection, where
    the write transactions queued together share one COMMIT; reads on a second connection
    (read-only, WAL lets it read while the writer writes) so they never wait behind writes.
    A ledger opened ``readonly`` has one read-only connection for both.
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

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        readonly: bool = False,
        check: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> Ledger:
        """Open (creating and migrating unless ``readonly``) the ledger at ``path``.

        ``check`` runs SQLite's ``quick_check`` first. Returns the open ledger; raises
        :class:`LedgerCorrupt` for a damaged file, :class:`LedgerUnwritable` when it cannot be
        created or written, :class:`LedgerError` for anything else.
        """
        ro_target = f"file:{_uri_path(path)}?mode=ro"
        if readonly:
            if not await asyncio.to_thread(os.path.exists, path):
                raise LedgerError(f"no ledger at {path} (has the daemon run with this config?)")
            target, uri = ro_target, True
        else:
            prepare_ledger_dir(path)
            target, uri = path, False
        try:
            conn = await asyncio.to_thread(_connect, target, uri)
        except sqlite3.Error as exc:
            raise classify_sqlite_error(exc, path) from None
        writer = _Connection(conn, "syncd-ledger-ro" if readonly else "syncd-ledger-writer")
        ledger = cls(writer, writer, path, clock)
        try:
            if check:
                problems = await ledger.integrity_problems(quick=True)
                if problems:
                    raise LedgerCorrupt(path, "; ".join(problems[:3]))
            if not readonly:
                await writer.call(functools.partial(_prepare, now=clock()))
                reader = await asyncio.to_thread(_connect, ro_target, True)
                ledger._reader = _Connection(reader, "syncd-ledger-reader")
        except sqlite3.Error as exc:
            await writer.close()
            raise classify_sqlite_error(exc, path) from None
        except BaseException:
            await writer.close()
            raise
        return ledger

    async def close(self) -> None:
        """Checkpoint and close the connections. Idempotent."""
        if self._writer.closed:
            return
        if self._reader is not self._writer:
            await self._reader.close()

        def optimize(conn: sqlite3.Connection) -> None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA optimize")

        await self._writer.call(optimize)
        await self._writer.close()

    async def integrity_problems(self, *, quick: bool = False) -> list[str]:
        """Run SQLite's integrity check; returns its complaints (empty when the file is sound)."""
        pragma = "quick_check" if quick else "integrity_check"
        rows = [r[0] for r in await self._reader.call(_fetch(f"PRAGMA {pragma}", ()))]
        return [] if rows == ["ok"] else rows

    async def backup(self, dest: str) -> None:
        """Write a consistent online copy of the ledger to ``dest`` (mode 0600).

        Raises :class:`LedgerUnwritable` if ``dest`` exists or cannot be written.
        """
        if await asyncio.to_thread(os.path.exists, dest):
            raise LedgerUnwritable(f"backup target {dest} already exists")
        await asyncio.to_thread(prepare_ledger_dir, dest)
        os.unlink(dest)  # VACUUM INTO wants to create the file itself; the folder is ready
        old = os.umask(0o077)
        try:
            # On the reader: a snapshot of what is committed; writes carry on meanwhile.
            await self._reader.call(_fetch("VACUUM INTO ?", (dest,)))
        except sqlite3.Error as exc:
            raise LedgerUnwritable(f"backup to {dest} failed: {exc}") from None
        finally:
            os.umask(old)
        os.chmod(dest, 0o600)

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

    # ---------------------------------------------------------------- key/value

    async def get_kv(self, key: str) -> Any:
        """Return the JSON value stored under ``key``, or None."""
        rows = await self._read("SELECT value FROM kv WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    @_retry_stalled
    async def set_kv(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key``."""
        await self._write(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    # ---------------------------------------------------------------- paths

    async def get_path(self, path: str) -> PathRecord | None:
        """Return the ledger's record of ``path``, or None."""
        rows = await self._read(f"SELECT {_PATH_COLS} FROM paths WHERE path = ?", (_b(path),))
        return _path(rows[0]) if rows else None

    async def get_paths(self, paths: Sequence[str]) -> dict[str, PathRecord]:
        """Return the records of those of ``paths`` the ledger knows (one query per 900)."""
        found: dict[str, PathRecord] = {}
        for i in range(0, len(paths), _IN_CHUNK):
            chunk = [_b(p) for p in paths[i : i + _IN_CHUNK]]
            marks = ",".join("?" * len(chunk))
            rows = await self._read(
                f"SELECT {_PATH_COLS} FROM paths WHERE path IN ({marks})",
                chunk,
            )
            for row in rows:
                rec = _path(row)
                found[rec.path] = rec
        return found

    @_retry_stalled
    async def touch_paths(self, paths: Iterable[str]) -> None:
        """Mark ``paths`` as seen now, unchanged (a rescan found the fingerprint the ledger has).

        A path that was gone and is back with the same bytes is present again, and a content
        parked for want of a present path becomes due again.
        """
        now = self._clock()
        rows = [(now, _b(p)) for p in paths]
        if not rows:
            return

        def tx(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE paths SET last_seen = ?1, "
                "gone_at = CASE WHEN state = 'gone' AND sha256 IS NOT NULL THEN NULL "
                "ELSE gone_at END, "
                "state = CASE WHEN state = 'gone' AND sha256 IS NOT NULL THEN 'present' "
                "ELSE state END WHERE path = ?2",
                rows,
            )
            db.executemany(
                "UPDATE contents SET next_attempt_at = ?1 WHERE last_error LIKE 'no present path%' "
                "AND state IN ('pending', 'allocated') "
                "AND sha256 = (SELECT sha256 FROM paths WHERE path = ?2)",
                rows,
            )

        await self._transaction(tx)

    @_retry_stalled
    async def record_content(
        self,
        path: str,
        root: str,
        fingerprint: Fingerprint,
        sha256: str,
        extension: str,
    ) -> Content:
        """Record that ``path`` holds the content ``sha256`` (hashed with ``fingerprint``).

        Creates the content as ``pending`` (due now) if it is new; a known content is not
        uploaded again. A content waiting for a present path becomes due again. Returns the
        content as it now stands.
        """
        now = self._clock()

        def tx(db: sqlite3.Connection) -> Content:
            db.execute(
                "INSERT INTO contents (sha256, size, extension, state, next_attempt_at, "
                "created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?) "
                "ON CONFLICT (sha256) DO NOTHING",
                (sha256, fingerprint.size, extension, now, now, now),
            )
            db.execute(
                "UPDATE contents SET next_attempt_at = ?, updated_at = ? "
                "WHERE sha256 = ? AND state IN ('pending', 'allocated') AND next_attempt_at > ? "
                "AND last_error LIKE 'no present path%'",
                (now, now, sha256, now),
            )
            _upsert_path(db, path, root, "present", sha256, None, fingerprint, now)
            db.execute(
                "INSERT INTO holdings (sha256, path, first_seen, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha256, path) DO UPDATE SET last_seen = excluded.last_seen",
                (sha256, _b(path), now, now),
            )
            row = db.execute(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = ?", (sha256,)
            ).fetchone()
            return _content(_must(row))

        return await self._transaction(tx)

    @_retry_stalled
    async def record_path_state(
        self,
        path: str,
        root: str,
        state: PathState,
        reason: str | None,
        fingerprint: Fingerprint | None = None,
        open_since: float | None = None,
    ) -> None:
        """Record a path that holds no uploadable content: skipped, unsettled, error or gone."""
        now = self._clock()

        def tx(db: sqlite3.Connection) -> None:
            _upsert_path(
                db, path, root, state, None, reason, fingerprint, now, open_since=open_since
            )

        await self._transaction(tx)

    @_retry_stalled
    async def set_open_since(self, path: str, since: float | None) -> None:
        """Note that a known ``path`` is (``since`` given) or is no longer open for writing."""
        await self._write("UPDATE paths SET open_since = ? WHERE path = ?", (since, _b(path)))

    @_retry_stalled
    async def mark_gone(self, path: str) -> None:
        """Record that ``path`` was deleted or moved away (its content's record stays)."""
        now = self._clock()
        await self._write(
            "UPDATE paths SET state = 'gone', gone_at = ?, last_seen = ?, open_since = NULL "
            "WHERE path = ? AND state != 'gone'",
            (now, now, _b(path)),
        )

    @_retry_stalled
    async def mark_gone_under(self, folder: str) -> int:
        """Record every path below ``folder`` as gone (the folder was deleted or moved away).

        Returns how many paths were marked.
        """
        now = self._clock()
        prefix = _b(folder.rstrip("/")) + b"/"
        # Every path that starts with "folder/" sorts between "folder/" and "folder0".
        return await self._write(
            "UPDATE paths SET state = 'gone', gone_at = ?, open_since = NULL "
            "WHERE path >= ? AND path < ? AND state != 'gone'",
            (now, prefix, prefix[:-1] + b"0"),
        )

    @_retry_stalled
    async def mark_missing_gone(
        self, root: str, paths: Sequence[str], folders: Sequence[str], seen_before: float
    ) -> int:
        """After a complete scan of ``root``: mark gone ``paths`` (tracked files its folders'
        listings did not show) and every path below ``folders`` (folders not walked).

        Only paths recorded under ``root``, not gone already and not recorded since
        ``seen_before`` (the scan's start: a path recorded meanwhile was there) are marked.
        Only call this when the root was available for the whole scan. Returns how many paths
        were marked.
        """
        now = self._clock()
        marked = 0
        for i in range(0, len(paths), _IN_CHUNK):
            rows = [(now, _b(p), root, seen_before) for p in paths[i : i + _IN_CHUNK]]

            def gone_paths(db: sqlite3.Connection, rows: list[Any] = rows) -> int:
                cur = db.executemany(
                    "UPDATE paths SET state = 'gone', gone_at = ?1, open_since = NULL "
                    "WHERE path = ?2 AND root = ?3 AND state != 'gone' AND last_seen < ?4",
                    rows,
                )
                return max(0, cur.rowcount)

            marked += await self._transaction(gone_paths)
        for i in range(0, len(folders), _IN_CHUNK):
            ranges = []
            for folder in folders[i : i + _IN_CHUNK]:
                prefix = _b(folder.rstrip("/")) + b"/"
                ranges.append((now, prefix, prefix[:-1] + b"0", root, seen_before))

            def gone_folders(db: sqlite3.Connection, ranges: list[Any] = ranges) -> int:
                # The literal state test lets SQLite answer each range from paths_live.
                cur = db.executemany(
                    "UPDATE paths SET state = 'gone', gone_at = ?1, open_since = NULL "
                    "WHERE path >= ?2 AND path < ?3 AND state != 'gone' AND root = ?4 "
                    "AND last_seen < ?5",
                    ranges,
                )
                return max(0, cur.rowcount)

            marked += await self._transaction(gone_folders)
        return marked

    @_retry_stalled
    async def forget_path(self, path: str) -> bool:
        """Stop tracking ``path`` (the content and the remote asset stay). Returns True if known."""
        return await self._write("DELETE FROM paths WHERE path = ?", (_b(path),)) > 0

    # ---------------------------------------------------------------- contents

    async def get_content(self, sha256: str) -> Content | None:
        """Return the content with this exact hash, or None."""
        rows = await self._read(f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = ?", (sha256,))
        return _content(rows[0]) if rows else None

    async def find_contents(self, key: str) -> list[Content]:
        """Return contents whose sha256 starts with ``key`` (4+ hex digits) or whose current or
        superseded asset id is ``key``."""
        key = key.strip()
        rows = await self._read(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE asset_id = ? OR sha256 IN "
            "(SELECT sha256 FROM superseded_assets WHERE asset_id = ?)",
            (key, key),
        )
        if not rows and len(key) >= 4 and all(ch in "0123456789abcdefABCDEF" for ch in key):
            rows = await self._read(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 >= ? AND sha256 < ? LIMIT 20",
                (key.lower(), key.lower() + "g"),
            )
        return [_content(r) for r in rows]

    async def paths_of(self, sha256: str) -> list[tuple[str, PathRecord | None]]:
        """Every path that ever held ``sha256``, with its current record (None if forgotten)."""
        rows = await self._read(
            "SELECT h.path, " + ", ".join(f"p.{c.strip()}" for c in _PATH_COLS.split(",")) + " "
            "FROM holdings h LEFT JOIN paths p ON p.path = h.path "
            "WHERE h.sha256 = ? ORDER BY h.first_seen",
            (sha256,),
        )
        return [(_s(r[0]), None if r[1] is None else _path(r[1:])) for r in rows]

    async def attempts_of(self, sha256: str) -> list[Attempt]:
        """Every upload attempt of ``sha256``, oldest first."""
        rows = await self._read(
            f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE sha256 = ? ORDER BY id", (sha256,)
        )
        return [_attempt(r) for r in rows]

    @_retry_stalled
    async def due_jobs(self, limit: int, exclude: Iterable[str] = ()) -> list[Job]:
        """Return up to ``limit`` contents due for upload now, oldest due first.

        ``exclude`` names contents already in flight. A due content with no present path is
        parked (``last_error`` says why) until a path holding it appears again.
        """
        now = self._clock()
        skip = set(exclude)
        n_content = len(Content.__slots__)
        # The content with its most recently seen present path and that path's fingerprint,
        # in one query. The due contents are limited first: joined before the LIMIT, the path
        # lookup ran for every due content, so each call cost time in the backlog's size
        # (3.3 ms at 2,000 pending, against 0.07 ms).
        rows = await self._read(
            f"SELECT {', '.join('c.' + c for c in Content.__slots__)}, "
            "p.path, p.dev, p.ino, p.size, p.mtime_ns, p.ctime_ns "
            "FROM (SELECT * FROM contents WHERE state IN ('pending', 'allocated') "
            "AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?) AS c "
            "LEFT JOIN paths p ON p.path = "
            "(SELECT p2.path FROM paths p2 WHERE p2.sha256 = c.sha256 AND p2.state = 'present' "
            " ORDER BY p2.last_seen DESC LIMIT 1) "
            "ORDER BY c.next_attempt_at",
            (now, limit + len(skip)),
        )
        jobs: list[Job] = []
        orphans: list[str] = []
        for row in rows:
            content = _content(row[:n_content])
            if content.sha256 in skip:
                continue
            path = row[n_content]
            if path is None:
                orphans.append(content.sha256)
                continue
            fp = None if row[n_content + 1] is None else Fingerprint(*row[n_content + 1 :])
            jobs.append(Job(content, _s(path), fp))
            if len(jobs) >= limit:
                break
        if orphans:

            def park(db: sqlite3.Connection) -> None:
                db.executemany(
                    "UPDATE contents SET next_attempt_at = ?, last_error = "
                    "'no present path holds this content' WHERE sha256 = ?",
                    [(now + 365 * 86400, s) for s in orphans],
                )

            await self._transaction(park)
        return jobs

    async def next_due_at(self) -> float | None:
        """When the next content becomes due for upload (None if none is waiting)."""
        rows = await self._read(
            "SELECT MIN(next_attempt_at) FROM contents WHERE state IN ('pending', 'allocated')"
        )
        return rows[0][0] if rows else None

    @_retry_stalled
    async def begin_attempt(
        self, sha256: str, path: str, mode: str, asset_id: str | None = None
    ) -> int:
        """Mark ``sha256`` as uploading and open an attempt row. Returns the attempt id.

        Committed before the first byte is sent, so a crash in flight is seen on restart.
        """
        now = self._clock()

        def tx(db: sqlite3.Connection) -> int:
            db.execute(
                "UPDATE contents SET state = 'uploading', upload_mode = ?, updated_at = ? "
                "WHERE sha256 = ?",
                (mode, now, sha256),
            )
            cur = db.execute(
                "INSERT INTO attempts (sha256, path, mode, asset_id, started_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (sha256, _b(path), mode, asset_id, now),
            )
            return _must(cur.lastrowid)

        return await self._transaction(tx)

    @_retry_stalled
    async def mark_finishing(self, attempt_id: int) -> None:
        """A direct attempt is about to send its last bytes: from here on the API may hold a
        complete file whose answer a crash would lose (recovery counts it)."""
        await self._write(
            "UPDATE attempts SET outcome = 'finishing' WHERE id = ? AND outcome IS NULL",
            (attempt_id,),
        )

    @_retry_stalled
    async def allocate(
        self, sha256: str, asset_id: str, url: str, expires_at: float, attempt_id: int
    ) -> None:
        """Record a signed-URL asset allocated for ``sha256``, before any byte moves."""
        now = self._clock()

        def tx(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE contents SET state = 'allocated', asset_id = ?, signed_url = ?, "
                "signed_url_expires_at = ?, upload_mode = 'signed_url', remote_status = "
                "'WAITING', updated_at = ? WHERE sha256 = ?",
                (asset_id, url, expires_at, now, sha256),
            )
            db.execute("UPDATE attempts SET asset_id = ? WHERE id = ?", (asset_id, attempt_id))

        await self._transaction(tx)

    @_retry_stalled
    async def mark_sending(self, sha256: str) -> None:
        """A signed-URL content goes from allocated to uploading (bytes start moving)."""
        await self._write(
            "UPDATE contents SET state = 'uploading', updated_at = ? WHERE sha256 = ?",
            (self._clock(), sha256),
        )

    @_retry_stalled
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
        """The API answered with ``asset_id`` for exactly ``sha256``'s bytes: uploaded."""
        now = self._clock()

        def tx(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE contents SET state = 'uploaded', asset_id = ?, remote_status = "
                "COALESCE(remote_status, 'WAITING'), signed_url = NULL, "
                "signed_url_expires_at = NULL, attempts = attempts + 1, last_error = NULL, "
                "uploaded_at = ?, updated_at = ?, next_poll_at = ?, polls = 0 WHERE sha256 = ?",
                (asset_id, now, now, next_poll_at, sha256),
            )
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = 'ok', asset_id = ?, "
                "http_status = ?, bytes_sent = ? WHERE id = ?",
                (now, asset_id, http_status, bytes_sent, attempt_id),
            )

        await self._transaction(tx)

    async def accepted_since(self, mode: str, since: float, other_than: str) -> bool:
        """Whether another content's upload in ``mode`` succeeded after ``since``."""
        rows = await self._read(
            "SELECT EXISTS (SELECT 1 FROM attempts WHERE outcome = 'ok' AND mode = ? "
            "AND sha256 != ? AND ended_at > ?)",
            (mode, other_than, since),
        )
        return bool(rows[0][0])

    async def previous_attempt_end(self, sha256: str, attempt_id: int) -> float | None:
        """When the attempt of ``sha256`` before ``attempt_id`` ended (None if it is the first)."""
        rows = await self._read(
            "SELECT MAX(ended_at) FROM attempts WHERE sha256 = ? AND id < ?", (sha256, attempt_id)
        )
        return rows[0][0] if rows else None

    @_retry_stalled
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
        """Put ``sha256`` back in the queue for ``next_attempt_at``; returns the content.

        ``count_attempt`` is False for interruptions that were not the content's fault (shutdown,
        account-wide throttling); ``keep_allocation`` keeps a signed-URL asset for the next try;
        ``possible_duplicate`` counts a direct upload whose answer was lost after sending.
        """
        now = self._clock()
        state = "allocated" if keep_allocation else "pending"

        def tx(db: sqlite3.Connection) -> Content:
            if not keep_allocation:
                # Never lose track of an asset id: one being dropped is kept as superseded.
                db.execute(
                    "INSERT OR IGNORE INTO superseded_assets (asset_id, sha256, sent_sha256, "
                    "path, reason, at) SELECT asset_id, sha256, NULL, NULL, ?, ? FROM contents "
                    "WHERE sha256 = ? AND asset_id IS NOT NULL",
                    (f"dropped on retry: {error}", now, sha256),
                )
            db.execute(
                "UPDATE contents SET state = ?, attempts = attempts + ?, "
                "throttle_count = throttle_count + ?, possible_duplicates = "
                "possible_duplicates + ?, last_error = ?, next_attempt_at = ?, "
                "updated_at = ?, asset_id = CASE WHEN ? THEN asset_id ELSE NULL END, "
                "remote_status = CASE WHEN ? THEN remote_status ELSE NULL END, "
                "signed_url = CASE WHEN ? THEN signed_url ELSE NULL END, "
                "signed_url_expires_at = CASE WHEN ? THEN signed_url_expires_at ELSE NULL END "
                "WHERE sha256 = ?",
                (
                    state,
                    int(count_attempt),
                    int(count_throttle),
                    int(possible_duplicate),
                    error,
                    next_attempt_at,
                    now,
                    keep_allocation,
                    keep_allocation,
                    keep_allocation,
                    keep_allocation,
                    sha256,
                ),
            )
            if attempt_id is not None:
                _end_attempt(db, now, attempt_id, outcome, error, http_status, bytes_sent)
            row = db.execute(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = ?", (sha256,)
            ).fetchone()
            return _content(_must(row))

        return await self._transaction(tx)

    @_retry_stalled
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
        """Mark ``sha256`` failed (attempts exhausted) or rejected (the API refuses it)."""
        now = self._clock()

        def tx(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE contents SET state = ?, last_error = ?, updated_at = ?, "
                "attempts = attempts + ? WHERE sha256 = ?",
                (state, error, now, int(attempt_id is not None), sha256),
            )
            if attempt_id is not None:
                _end_attempt(db, now, attempt_id, outcome, error, http_status, None)

        await self._transaction(tx)

    @_retry_stalled
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
        """Record ``asset_id`` as not ``sha256``'s asset (wrong bytes, or remote FAILED).

        The content goes back to pending (due now); the asset is kept in ``superseded_assets``
        so no remote asset is ever lost track of.
        """
        now = self._clock()

        def tx(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR IGNORE INTO superseded_assets (asset_id, sha256, sent_sha256, path, "
                "reason, at) VALUES (?, ?, ?, ?, ?, ?)",
                (asset_id, sha256, sent_sha256, None if path is None else _b(path), reason, now),
            )
            db.execute(
                "UPDATE contents SET state = 'pending', asset_id = NULL, remote_status = NULL, "
                "signed_url = NULL, signed_url_expires_at = NULL, last_error = ?, "
                "next_attempt_at = ?, updated_at = ?, next_poll_at = NULL WHERE sha256 = ?",
                (reason, now, now, sha256),
            )
            if attempt_id is not None:
                _end_attempt(db, now, attempt_id, "superseded", reason, None, None)

        await self._transaction(tx)

    # ---------------------------------------------------------------- polling

    async def due_polls(self, limit: int) -> list[Content]:
        """Uploaded contents whose remote status is due to be asked for, oldest due first."""
        rows = await self._read(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE state = 'uploaded' "
            "AND next_poll_at <= ? ORDER BY next_poll_at LIMIT ?",
            (self._clock(), limit),
        )
        return [_content(r) for r in rows]

    async def next_poll_at(self) -> float | None:
        """When the next status poll is due (None if nothing awaits a final status)."""
        rows = await self._read("SELECT MIN(next_poll_at) FROM contents WHERE state = 'uploaded'")
        return rows[0][0] if rows else None

    @_retry_stalled
    async def record_status(
        self, sha256: str, asset_id: str, status: str, *, next_poll_at: float | None
    ) -> None:
        """Record a polled remote status. ``SUCCESS`` makes the content done."""
        now = self._clock()

        def tx(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT remote_status, asset_id, state FROM contents WHERE sha256 = ?", (sha256,)
            ).fetchone()
            if row is None or row[1] != asset_id or row[2] != "uploaded":
                return  # superseded or re-queued meanwhile: this answer is stale
            if row[0] != status:
                db.execute(
                    "INSERT INTO status_changes (sha256, asset_id, remote_status, at) "
                    "VALUES (?, ?, ?, ?)",
                    (sha256, asset_id, status, now),
                )
            if status == "SUCCESS":
                db.execute(
                    "UPDATE contents SET state = 'done', remote_status = 'SUCCESS', done_at = ?, "
                    "updated_at = ?, next_poll_at = NULL, polls = polls + 1, last_error = NULL "
                    "WHERE sha256 = ?",
                    (now, now, sha256),
                )
            else:
                db.execute(
                    "UPDATE contents SET remote_status = ?, updated_at = ?, next_poll_at = ?, "
                    "polls = polls + 1 WHERE sha256 = ?",
                    (status, now, next_poll_at, sha256),
                )

        await self._transaction(tx)

    @_retry_stalled
    async def remote_failed(
        self, sha256: str, asset_id: str, reason: str, *, max_attempts: int
    ) -> ContentState:
        """The asset ended ``FAILED`` (or vanished): re-upload, or fail when attempts ran out.

        Returns the content's new state (``pending`` or ``failed``).
        """
        now = self._clock()

        def tx(db: sqlite3.Connection) -> ContentState:
            row = db.execute(
                "SELECT attempts, asset_id FROM contents WHERE sha256 = ?", (sha256,)
            ).fetchone()
            if row is None or row[1] != asset_id:
                return "pending"
            db.execute(
                "INSERT INTO status_changes (sha256, asset_id, remote_status, at) "
                "VALUES (?, ?, 'FAILED', ?)",
                (sha256, asset_id, now),
            )
            db.execute(
                "INSERT OR IGNORE INTO superseded_assets (asset_id, sha256, sent_sha256, path, "
                "reason, at) VALUES (?, ?, ?, NULL, ?, ?)",
                (asset_id, sha256, sha256, reason, now),
            )
            state: ContentState = "failed" if row[0] >= max_attempts else "pending"
            db.execute(
                "UPDATE contents SET state = ?, remote_status = 'FAILED', asset_id = NULL, "
                "remote_failures = remote_failures + 1, last_error = ?, next_attempt_at = ?, "
                "next_poll_at = NULL, updated_at = ? WHERE sha256 = ?",
                (state, reason, now, now, sha256),
            )
            return state

        return await self._transaction(tx)

    # ---------------------------------------------------------------- recovery and operators

    @_retry_stalled
    async def recover(self) -> RecoveryReport:
        """Startup recovery after any stop, clean or not.

        Direct uploads left ``uploading`` go back to ``pending``; the one whose last bytes were
        being sent when the daemon stopped (see :meth:`mark_finishing`) counts one possible
        remote duplicate, since the API has no idempotency key. Signed-URL uploads go back to
        ``allocated`` on the same asset id; open attempts are closed as interrupted; polls are
        due now.
        """
        now = self._clock()

        def tx(db: sqlite3.Connection) -> RecoveryReport:
            cur = db.execute(
                "UPDATE contents SET state = 'pending', possible_duplicates = "
                "possible_duplicates + EXISTS (SELECT 1 FROM attempts a WHERE "
                "a.sha256 = contents.sha256 AND a.outcome = 'finishing'), "
                "next_attempt_at = ?, updated_at = ?, last_error = "
                "'interrupted during a direct upload' "
                "WHERE state = 'uploading' AND upload_mode = 'direct'",
                (now, now),
            )
            direct = cur.rowcount
            cur = db.execute(
                "UPDATE contents SET state = CASE WHEN asset_id IS NULL THEN 'pending' "
                "ELSE 'allocated' END, next_attempt_at = ?, updated_at = ? "
                "WHERE state = 'uploading'",
                (now, now),
            )
            signed = cur.rowcount
            db.execute(
                "UPDATE attempts SET ended_at = ?, outcome = CASE WHEN outcome = 'finishing' "
                "THEN 'interrupted_possible_duplicate' ELSE 'interrupted' END "
                "WHERE outcome IS NULL OR outcome = 'finishing'",
                (now,),
            )
            cur = db.execute(
                "UPDATE contents SET next_poll_at = ? WHERE state = 'uploaded'", (now,)
            )
            polls = cur.rowcount
            return RecoveryReport(direct, signed, polls)

        return await self._transaction(tx)

    @_retry_stalled
    async def requeue(self, *, states: Sequence[ContentState], sha256s: Sequence[str] = ()) -> int:
        """Operator retry: contents in ``states`` (all, or only ``sha256s``) become due now.

        Attempts and throttle counts restart from zero. Returns how many were re-queued.
        """
        now = self._clock()
        marks = ",".join("?" * len(states))
        sql = (
            "UPDATE contents SET state = CASE WHEN asset_id IS NOT NULL AND signed_url IS NOT "
            "NULL THEN 'allocated' ELSE 'pending' END, attempts = 0, throttle_count = 0, "
            f"next_attempt_at = ?, updated_at = ? WHERE state IN ({marks})"
        )
        params: list[Any] = [now, now, *states]
        if sha256s:
            sql += f" AND sha256 IN ({','.join('?' * len(sha256s))})"
            params.extend(sha256s)
        return await self._write(sql, params)

    async def counts(self) -> dict[str, dict[str, int]]:
        """Counts per content state and per path state, plus backlog bytes."""
        contents: dict[str, int] = {s: 0 for s in CONTENT_STATES}
        for state, n in await self._read("SELECT state, COUNT(*) FROM contents GROUP BY state"):
            contents[state] = n
        paths: dict[str, int] = {s: 0 for s in PATH_STATES}
        for state, n in await self._read("SELECT state, COUNT(*) FROM paths GROUP BY state"):
            paths[state] = n
        rows = await self._read(
            "SELECT COALESCE(SUM(size), 0) FROM contents "
            "WHERE state IN ('pending', 'allocated', 'uploading')"
        )
        return {"contents": contents, "paths": paths, "backlog": {"bytes": rows[0][0]}}

    async def unfinished_count(self) -> int:
        """Contents still on their way to a final state (``sync --once`` waits for these).

        A content parked because no present path holds it any more is not counted: nothing can
        upload it until its bytes appear again.
        """
        rows = await self._read(
            "SELECT COUNT(*) FROM contents WHERE state IN "
            "('pending', 'allocated', 'uploading', 'uploaded') "
            "AND NOT (state IN ('pending', 'allocated') AND last_error LIKE 'no present path%')"
        )
        return int(rows[0][0])

    async def possible_duplicates(self) -> int:
        """Total possible remote duplicates counted by recovery."""
        rows = await self._read("SELECT COALESCE(SUM(possible_duplicates), 0) FROM contents")
        return int(rows[0][0])

    # ---- operator queries
    # Read-only queries behind `syncd show/ls/status` and the local HTTP endpoint. Each one is
    # bounded: listings page by keyset (never OFFSET, never a whole table in memory), one query
    # per page on the read connection, so a daemon's writes carry on between and during pages.

    async def iter_assets(
        self,
        *,
        states: Sequence[str] = (),
        root: str | None = None,
        since: float | None = None,
        page_size: int = 1000,
        on_page: Callable[[int], None] | None = None,
    ) -> AsyncGenerator[tuple[PathRecord, Content | None], None]:
        """Stream every known path with its content (None when it holds none), in path order.

        Given optional filters: ``states`` (content states such as ``failed`` and path states
        such as ``skipped``, mixed freely; a row matches either), ``root`` (a folder: only paths
        below it) and ``since`` (epoch seconds: only rows first seen, changed or gone since
        then). Fetches ``page_size`` rows per query, calling ``on_page(rows)`` after each one.
        Raises :class:`ValueError` for an unknown state, :class:`LedgerError` on SQLite errors.
        """
        unknown = [s for s in states if s not in CONTENT_STATES and s not in PATH_STATES]
        if unknown:
            raise ValueError(f"unknown state {unknown[0]!r}")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        where: list[str] = []
        params: list[Any] = []
        content_states = [s for s in states if s in CONTENT_STATES]
        path_states = [s for s in states if s in PATH_STATES]
        either: list[str] = []
        if content_states:
            either.append(f"c.state IN ({','.join('?' * len(content_states))})")
            params.extend(content_states)
        if path_states:
            either.append(f"p.state IN ({','.join('?' * len(path_states))})")
            params.extend(path_states)
        if either:
            where.append("(" + " OR ".join(either) + ")")
        upper: bytes | None = None
        after: bytes | None = None
        if root is not None:
            prefix = _b(posixpath.normpath(root)).rstrip(b"/") + b"/"
            # Everything under `prefix` sorts between it and the same bytes with the final
            # "/" (0x2f) raised to "0" (0x30): a range the primary key answers directly.
            upper = prefix[:-1] + b"0"
            where.append("p.path >= ? AND p.path < ?")
            params.extend([prefix, upper])
        if since is not None:
            where.append(
                "MAX(p.first_seen, COALESCE(c.updated_at, 0), COALESCE(p.gone_at, 0)) >= ?"
            )
            params.append(since)
        content_cols = ", ".join("c." + c for c in Content.__slots__)
        path_cols = ", ".join("p." + c.strip() for c in _PATH_COLS.split(","))
        base = (
            f"SELECT {path_cols}, {content_cols} FROM paths p "
            "LEFT JOIN contents c ON c.sha256 = p.sha256 WHERE "
        )
        n_path = len(_PATH_COLS.split(","))
        while True:
            keyset = ["p.path > ?"] if after is not None else []
            sql = base + " AND ".join([*keyset, *where] or ["1"]) + " ORDER BY p.path LIMIT ?"
            page = await self._read(
                sql, [*([after] if after is not None else []), *params, page_size]
            )
            if on_page is not None:
                on_page(len(page))
            for row in page:
                content = None if row[n_path] is None else _content(row[n_path:])
                yield _path(row[:n_path]), content
            if len(page) < page_size:
                return
            after = bytes(page[-1][0])

    async def upload_activity(self, since: float) -> dict[str, dict[str, int]]:
        """Upload attempts started at or after ``since`` (epoch seconds), per upload mode.

        Returns ``{mode: {"requests": n, "ok": n, "bytes": n}}``: attempts started (each one
        began with a request to its endpoint), those that got an asset id, and their bytes.
        """
        rows = await self._read(
            "SELECT mode, COUNT(*), COALESCE(SUM(outcome = 'ok'), 0), "
            "COALESCE(SUM(CASE WHEN outcome = 'ok' THEN bytes_sent END), 0) "
            "FROM attempts WHERE started_at >= ? GROUP BY mode",
            (since,),
        )
        return {r[0]: {"requests": r[1], "ok": r[2], "bytes": r[3]} for r in rows}

    async def oldest_waiting_content(self) -> tuple[Content, str | None] | None:
        """The backlog content (pending, allocated or uploading) recorded longest ago, with one
        present path that holds it (None if none does); None when the backlog is empty."""
        rows = await self._read(
            f"SELECT {', '.join('c.' + c for c in Content.__slots__)}, "
            "(SELECT p.path FROM paths p WHERE p.sha256 = c.sha256 AND p.state = 'present' "
            " ORDER BY p.last_seen DESC LIMIT 1) FROM contents c "
            "WHERE c.state IN ('pending', 'allocated', 'uploading') "
            "ORDER BY c.created_at LIMIT 1"
        )
        if not rows:
            return None
        path = rows[0][-1]
        return _content(rows[0][:-1]), None if path is None else _s(path)

    async def oldest_unsettled_path(self) -> PathRecord | None:
        """The path waiting to settle (state ``unsettled``) seen first, or None."""
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE state = 'unsettled' "
            "ORDER BY COALESCE(open_since, first_seen) LIMIT 1"
        )
        return _path(rows[0]) if rows else None

    async def due_count(self, now: float) -> int:
        """How many contents are due for upload at ``now`` (epoch seconds)."""
        rows = await self._read(
            "SELECT COUNT(*) FROM contents WHERE state IN ('pending', 'allocated') "
            "AND next_attempt_at <= ?",
            (now,),
        )
        return int(rows[0][0])

    async def superseded_of(self, sha256: str) -> list[tuple[str, str, float]]:
        """Remote assets once uploaded for ``sha256`` but not its asset (wrong bytes, remote
        FAILED): ``(asset_id, reason, at)``, oldest first."""
        rows = await self._read(
            "SELECT asset_id, reason, at FROM superseded_assets WHERE sha256 = ? ORDER BY at",
            (sha256,),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def get_contents(self, sha256s: Sequence[str]) -> dict[str, Content]:
        """Return the contents among ``sha256s`` that the ledger knows (one query per 900)."""
        found: dict[str, Content] = {}
        unique = list(dict.fromkeys(sha256s))
        for i in range(0, len(unique), _IN_CHUNK):
            chunk = unique[i : i + _IN_CHUNK]
            rows = await self._read(
                f"SELECT {_CONTENT_COLS} FROM contents "
                f"WHERE sha256 IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for row in rows:
                content = _content(row)
                found[content.sha256] = content
        return found

    # ---- dashboard pages
    # The local endpoint's lists, one bounded query per page, each answered from an index.

    async def recent_uploads(
        self, limit: int, before_id: int | None = None
    ) -> list[tuple[Attempt, Content | None]]:
        """The last ``limit`` successful upload attempts (newest first), each with its content,
        before attempt ``before_id`` when given (the next page). Walks the attempts' primary
        key backwards: cheap however long the history is, while uploads succeed."""
        rows = await self._read(
            f"SELECT {', '.join('a.' + c for c in Attempt.__slots__)}, "
            f"{', '.join('c.' + c for c in Content.__slots__)} FROM attempts a "
            "LEFT JOIN contents c ON c.sha256 = a.sha256 "
            "WHERE a.outcome = 'ok' AND a.id < ? ORDER BY a.id DESC LIMIT ?",
            (before_id if before_id is not None else 1 << 62, limit),
        )
        n = len(Attempt.__slots__)
        return [(_attempt(r[:n]), None if r[n] is None else _content(r[n:])) for r in rows]

    async def problem_contents(
        self, limit: int, after: tuple[float, str] | None = None
    ) -> list[tuple[Content, str | None]]:
        """Failed and rejected contents, the most recently changed first, each with one path
        that holds it (a present one if any); ``after`` is the last ``(updated_at, sha256)``
        of the previous page. Found through the state index; only problem rows are sorted."""
        keyset = "AND (c.updated_at, c.sha256) < (?, ?) " if after is not None else ""
        rows = await self._read(
            f"SELECT {', '.join('c.' + c for c in Content.__slots__)}, "
            "(SELECT p.path FROM paths p WHERE p.sha256 = c.sha256 "
            " ORDER BY p.state = 'present' DESC, p.last_seen DESC LIMIT 1) FROM contents c "
            f"WHERE c.state IN ('failed', 'rejected') {keyset}"
            "ORDER BY c.updated_at DESC, c.sha256 DESC LIMIT ?",
            (*(after or ()), limit),
        )
        return [(_content(r[:-1]), None if r[-1] is None else _s(r[-1])) for r in rows]

    async def problem_paths(
        self, roots: Sequence[str], limit: int, after: str | None = None
    ) -> list[PathRecord]:
        """Paths under the given roots (their configured paths) that could not be read or
        never settled (states ``error``, ``unsettled``), in path order after ``after``."""
        if not roots:
            return []
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE root IN ({','.join('?' * len(roots))}) "
            "AND state IN ('error', 'unsettled') AND path > ? ORDER BY path LIMIT ?",
            (*roots, _b(after) if after is not None else b"", limit),
        )
        return [_path(r) for r in rows]

    async def find_paths(self, part: str, limit: int) -> list[PathRecord]:
        """Up to ``limit`` paths that start with ``part`` (when it is absolute: a range of the
        primary key) or else contain it anywhere (a scan in path order, stopped at ``limit``
        matches), in path order."""
        needle = _b(part)
        if part.startswith("/"):
            upper = needle[:-1] + bytes([needle[-1] + 1]) if needle[-1] < 255 else needle + b"\xff"
            sql = f"SELECT {_PATH_COLS} FROM paths WHERE path >= ? AND path < ? "
            params: tuple[Any, ...] = (needle, upper)
        else:
            sql = f"SELECT {_PATH_COLS} FROM paths WHERE instr(path, ?) > 0 "
            params = (needle,)
        rows = await self._read(sql + "ORDER BY path LIMIT ?", (*params, limit))
        return [_path(r) for r in rows]

    async def any_done_asset_id(self) -> str | None:
        """Return the asset id of some content that is done (for a key probe), or None."""
        rows = await self._read(
            "SELECT asset_id FROM contents WHERE state = 'done' AND asset_id IS NOT NULL LIMIT 1"
        )
        return str(rows[0][0]) if rows else None


def _upsert_path(
    db: sqlite3.Connection,
    path: str,
    root: str,
    state: PathState,
    sha256: str | None,
    reason: str | None,
    fp: Fingerprint | None,
    now: float,
    *,
    open_since: float | None = None,
) -> None:
    dev, ino, size, mtime, ctime = fp if fp is not None else (None,) * 5
    gone_at = now if state == "gone" else None
    db.execute(
        "INSERT INTO paths (path, root, state, sha256, reason, dev, ino, size, mtime_ns, "
        "ctime_ns, open_since, first_seen, last_seen, gone_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (path) DO UPDATE SET root = excluded.root, state = excluded.state, "
        "sha256 = excluded.sha256, reason = excluded.reason, dev = excluded.dev, "
        "ino = excluded.ino, size = excluded.size, mtime_ns = excluded.mtime_ns, "
        "ctime_ns = excluded.ctime_ns, open_since = excluded.open_since, "
        "last_seen = excluded.last_seen, gone_at = excluded.gone_at",
        (
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
            now,
            gone_at,
        ),
    )


def _end_attempt(
    db: sqlite3.Connection,
    now: float,
    attempt_id: int,
    outcome: str,
    error: str | None,
    http_status: int | None,
    bytes_sent: int | None,
) -> None:
    db.execute(
        "UPDATE attempts SET ended_at = ?, outcome = ?, error = ?, http_status = ?, "
        "bytes_sent = ? WHERE id = ?",
        (now, outcome, error, http_status, bytes_sent, attempt_id),
    )


def _must(value: _T | None) -> _T:
    """Return ``value``; a None here is a bug in the ledger's own SQL."""
    if value is None:
        raise LedgerError("internal error: a row the ledger just wrote is missing")
    return value


def _uri_path(path: str) -> str:
    return quote(os.path.abspath(path))


_SETTLED = frozenset(("present", "skipped"))


class PathReader:
    """The paths a scan compares a folder's listing with, read in the scan's own thread.

    Given the ledger's path; opens its own read-only connection (WAL lets it read while the
    daemon writes), so the walk never waits for the daemon's connection or its lock. Create,
    use and close it in one thread. Raises ``sqlite3.Error``.
    """

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(
            f"file:{_uri_path(path)}?mode=ro", uri=True, timeout=5.0, isolation_level=None
        )

    def folder(
        self, folder: str
    ) -> tuple[dict[str, tuple[int, int, int, int, int] | None], list[str]]:
        """Given a folder's absolute path, return the tracked (not gone) files directly in it,
        by name, each with the fingerprint tuple it was settled with (it holds a content or
        was skipped) or None (unsettled, in error), and the names of its sub-folders that
        hold tracked files (under any root: the caller sorts out nested roots).

        One primary-key range (``folder/`` up to ``folder0``) read in path order; a
        sub-folder's rows are skipped with a new range starting after them, so each row is
        read once however deep the tree.
        """
        prefix = _b(folder.rstrip("/")) + b"/"
        upper = prefix[:-1] + b"0"
        cut = len(prefix)
        # os.fsdecode, without its per-call overhead
        encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
        files: dict[str, tuple[int, int, int, int, int] | None] = {}
        subdirs: list[str] = []
        low = prefix
        while True:
            # Answered from paths_live alone. A present path always holds a content (only
            # record_content makes one present), so "settled" is present or skipped.
            cur = self._db.execute(
                "SELECT path, dev, ino, size, mtime_ns, ctime_ns, state "
                "FROM paths INDEXED BY paths_live "
                "WHERE path >= ? AND path < ? AND state != 'gone' ORDER BY path",
                (low, upper),
            )
            try:
                for path, dev, ino, size, mtime_ns, ctime_ns, state in cur:
                    rest = path[cut:]
                    slash = rest.find(b"/")
                    if slash < 0:
                        files[rest.decode(encoding, errors)] = (
                            (dev, ino, size, mtime_ns, ctime_ns)
                            if dev is not None and state in _SETTLED
                            else None
                        )
                        continue
                    # "sub/..." sorts below "sub0": go on from there.
                    child = rest[:slash]
                    subdirs.append(child.decode(encoding, errors))
                    low = prefix + child + b"0"
                    break
                else:
                    return files, subdirs
            finally:
                cur.close()

    def close(self) -> None:
        """Close the connection."""
        self._db.close()
