"""The fleet ledger's path rows, this host's only (its :class:`~syncd.ledger.store.PathLedger`
facet), and :class:`PgPathReader`, through which the scan's thread compares a folder's listing
with the paths tracked there.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from syncd.errors import LedgerUnreachable
from syncd.fingerprint import Fingerprint
from syncd.ledger.postgres.base import (
    _CONTENT_COLS,
    _PATH_COLS,
    PgBase,
    _b,
    _content,
    _must,
    _path,
    _pipeline_read,
    _retry_unreachable,
    _rowcount,
)
from syncd.ledger.postgres.statements import _upsert_path
from syncd.ledger.records import Content, HashedPath, PathRecord, PathState

if TYPE_CHECKING:
    from syncd.ledger.postgres_migrations import Db


class PgPathRows(PgBase):
    """This host's path rows of the shared ledger."""

    @_pipeline_read
    async def get_path(self, path: str, *, host: str | None = None) -> PathRecord | None:
        """Return this host's (or ``host``'s) record of ``path``, or None."""
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND path = $2",
            host or self.host,
            _b(path),
        )
        return _path(rows[0]) if rows else None

    @_pipeline_read
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
            await self._record_content(db, path, root, fingerprint, sha256, extension, now)
            row = await db.fetchrow(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = $1", sha256
            )
            return _content(_must(row))

        return await self._tx(tx)

    @_retry_unreachable
    async def record_contents(self, hashed: Sequence[HashedPath]) -> list[Content]:
        """Record each of this host's hashed paths as :meth:`record_content` does, in one
        transaction, with one query for the contents at the end. Returns each one's content as
        it stands after the transaction, in order."""
        if not hashed:
            return []
        now = self._clock()

        async def tx(db: Db) -> list[Content]:
            for h in hashed:
                await self._record_content(
                    db, h.path, h.root, h.fingerprint, h.sha256, h.extension, now
                )
            rows = await db.fetch(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = ANY($1::text[])",
                list(dict.fromkeys(h.sha256 for h in hashed)),
            )
            found = {content.sha256: content for content in map(_content, rows)}
            return [_must(found.get(h.sha256)) for h in hashed]

        return await self._tx(tx)

    async def _record_content(
        self,
        db: Db,
        path: str,
        root: str,
        fingerprint: Fingerprint,
        sha256: str,
        extension: str,
        now: float,
    ) -> None:
        """Inside a transaction: record that this host's ``path`` holds ``sha256``."""
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

    @_pipeline_read
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


class PgPathReader:
    """The paths a scan compares a folder's listing with, asked from the scan's own thread.

    The walker runs in a thread; each :meth:`folder` call hands the query to the store's
    event loop and waits for it (the loop stays free meanwhile). Raises :class:`LedgerError`
    (the walk then stops comparing and hands every file on).
    """

    def __init__(self, store: PgPathRows, timeout_s: float = 60.0) -> None:
        self._store = store
        self._timeout_s = timeout_s

    def folder(
        self, folder: str
    ) -> tuple[dict[str, tuple[int, int, int, int, int] | None], list[str]]:
        """See :meth:`PgPathRows.known_in_folder`."""
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
