"""The ledger: one SQLite file (WAL) mapping content hashes to remote assets, and paths to contents.

The ledger is the queue: contents due for upload or polling are rows, not objects in memory.
Every state change is one committed transaction, written before the step that depends on it.
One daemon owns a ledger at a time (an ``flock`` on ``<ledger>.lock`` holding its pid); command
line tools open it read-only, or write through short transactions of their own.

Paths are ``str`` in Python (``os.fsdecode``, so undecodable bytes survive as surrogates) and
stored as BLOBs of the exact on-disk bytes. Times are wall-clock epoch seconds (``time.time``).
The schema, states and transitions are documented in ``docs/ledger.md``.

This module holds :class:`Ledger`, the one owner of the connections, the lifecycle and
recovery; its sections (paths, uploads, polling, operator queries, dashboard pages) are
modules of this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from syncd.errors import LedgerCorrupt, LedgerError, LedgerUnwritable
from syncd.ledger.records import RecoveryReport
from syncd.ledger.sqlite.after import AfterJobs
from syncd.ledger.sqlite.base import _retry_stalled, classify_sqlite_error
from syncd.ledger.sqlite.connection import _connect, _Connection, _fetch, _prepare, _uri_path
from syncd.ledger.sqlite.lock import prepare_ledger_dir
from syncd.ledger.sqlite.pages import Pages
from syncd.ledger.sqlite.paths import PathRows
from syncd.ledger.sqlite.polling import Polling
from syncd.ledger.sqlite.queries import Queries
from syncd.ledger.sqlite.uploads import Uploads


class Ledger(PathRows, Uploads, Polling, Queries, Pages, AfterJobs):
    """Async access to the ledger: one owner of the connections, the lifecycle and recovery.

    Use :meth:`open`. The methods are those of the sections it is made of, one module each
    (paths, uploads, polling, queries, pages, the work after a final status; see
    :class:`~syncd.ledger.sqlite.base.LedgerBase` for how each runs); this class adds
    opening, closing, checking and backing up the file, the key/value rows and startup
    recovery. It implements
    :class:`~syncd.ledger.store.LedgerStore`.
    """

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

    # ---------------------------------------------------------------- recovery

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
