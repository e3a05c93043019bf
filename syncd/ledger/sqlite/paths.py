"""The SQLite ledger's path rows: what the daemon's ingest records as it watches, scans and
hashes (:class:`~syncd.ledger.store.PathLedger`), and :class:`PathReader`, the scan's own
read connection that compares a folder's listing with the paths tracked there.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from syncd.fingerprint import Fingerprint
from syncd.ledger.records import Content, HashedPath, PathRecord, PathState
from syncd.ledger.sqlite.base import (
    _CONTENT_COLS,
    _IN_CHUNK,
    _PATH_COLS,
    LedgerBase,
    _b,
    _content,
    _must,
    _path,
    _retry_stalled,
)
from syncd.ledger.sqlite.connection import _uri_path


class PathRows(LedgerBase):
    """The path rows of the ledger (its :class:`~syncd.ledger.store.PathLedger` facet)."""

    async def get_path(self, path: str, *, host: str | None = None) -> PathRecord | None:
        """Return the ledger's record of ``path``, or None. Raises :class:`ValueError` for any
        ``host``: a SQLite ledger holds this host's paths only."""
        if host is not None:
            raise ValueError(f"host {host!r}: a SQLite ledger holds this host's paths only")
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
        content as it now stands. (A batch of one: :meth:`record_contents` holds the SQL.)
        """
        batch = [HashedPath(path, root, fingerprint, sha256, extension)]
        return (await self.record_contents(batch))[0]

    @_retry_stalled
    async def record_contents(self, hashed: Sequence[HashedPath]) -> list[Content]:
        """Record each hashed path as :meth:`record_content` does, in one transaction (one
        function on the writer's thread, one query for the contents at the end). Returns each
        one's content as it stands after the transaction, in order."""
        if not hashed:
            return []
        now = self._clock()

        def tx(db: sqlite3.Connection) -> list[Content]:
            # Each statement runs once per chunk of the batch with many rows (multi-row
            # VALUES, an IN list) instead of four statements per path: at 20,000
            # new files this cut the writer thread's CPU by about a third and its WAL writes
            # (pwrite calls) from ~540,000 to ~340,000, and each statement is one hand-back
            # of the GIL, not one per row. Contents go first, so the paths and holdings
            # that reference them find them; a content new here has next_attempt_at = now,
            # which the UPDATE leaves alone, as it did path by path; the rows of one
            # statement apply in order, as the statements did.
            shas = list(dict.fromkeys(h.sha256 for h in hashed))
            _insert_rows(
                db,
                "INSERT INTO contents (sha256, size, extension, state, next_attempt_at, "
                "created_at, updated_at) VALUES {} ON CONFLICT (sha256) DO NOTHING",
                "(?, ?, ?, 'pending', ?, ?, ?)",
                [(h.sha256, h.fingerprint.size, h.extension, now, now, now) for h in hashed],
            )
            for i in range(0, len(shas), _IN_CHUNK):
                chunk = shas[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                db.execute(  # ?1 is now; the marks that follow it number on from 2
                    "UPDATE contents SET next_attempt_at = ?1, updated_at = ?1 "
                    f"WHERE sha256 IN ({marks}) AND state IN ('pending', 'allocated') "
                    "AND next_attempt_at > ?1 AND last_error LIKE 'no present path%'",
                    (now, *chunk),
                )
            _insert_rows(
                db,
                _UPSERT_PATHS,
                _PATH_MARKS,
                [
                    _path_row(h.path, h.root, "present", h.sha256, None, h.fingerprint, now)
                    for h in hashed
                ],
            )
            _insert_rows(
                db,
                "INSERT INTO holdings (sha256, path, first_seen, last_seen) VALUES {} "
                "ON CONFLICT (sha256, path) DO UPDATE SET last_seen = excluded.last_seen",
                "(?, ?, ?, ?)",
                [(h.sha256, _b(h.path), now, now) for h in hashed],
            )
            found: dict[str, Content] = {}
            for i in range(0, len(shas), _IN_CHUNK):
                chunk = shas[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in db.execute(
                    f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 IN ({marks})", chunk
                ):
                    content = _content(row)
                    found[content.sha256] = content
            return [_must(found.get(h.sha256)) for h in hashed]

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
    db.execute(
        _UPSERT_PATH, _path_row(path, root, state, sha256, reason, fp, now, open_since=open_since)
    )


def _path_row(
    path: str,
    root: str,
    state: PathState,
    sha256: str | None,
    reason: str | None,
    fp: Fingerprint | None,
    now: float,
    *,
    open_since: float | None = None,
) -> tuple[Any, ...]:
    """Return one path's parameters for :data:`_UPSERT_PATHS`."""
    dev, ino, size, mtime, ctime = fp if fp is not None else (None,) * 5
    gone_at = now if state == "gone" else None
    return (
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
    )


# The upsert of path rows; ``{}`` is where the VALUES rows go.
_UPSERT_PATHS = (
    "INSERT INTO paths (path, root, state, sha256, reason, dev, ino, size, mtime_ns, "
    "ctime_ns, open_since, first_seen, last_seen, gone_at) VALUES {} "
    "ON CONFLICT (path) DO UPDATE SET root = excluded.root, state = excluded.state, "
    "sha256 = excluded.sha256, reason = excluded.reason, dev = excluded.dev, "
    "ino = excluded.ino, size = excluded.size, mtime_ns = excluded.mtime_ns, "
    "ctime_ns = excluded.ctime_ns, open_since = excluded.open_since, "
    "last_seen = excluded.last_seen, gone_at = excluded.gone_at"
)
_PATH_MARKS = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_PATH = _UPSERT_PATHS.format(_PATH_MARKS)


def _insert_rows(
    db: sqlite3.Connection, sql: str, row_marks: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Run ``sql`` (an INSERT whose ``{}`` is where its VALUES rows go) for ``rows``, as
    many rows a statement as keep it under ``_IN_CHUNK`` parameters (``row_marks`` is one
    row's placeholders)."""
    if not rows:
        return
    per = max(1, _IN_CHUNK // len(rows[0]))
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        db.execute(
            sql.format(",".join([row_marks] * len(chunk))),
            [value for row in chunk for value in row],
        )


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
