"""The SQLite ledger's upload half of the content state machine (``docs/ledger.md``): due
contents, attempts, allocations, the answer, retries, giving up and superseded assets (its
:class:`~syncd.ledger.store.UploadLedger` facet).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Literal

from syncd.fingerprint import Fingerprint
from syncd.ledger.records import Content, Job, UploadOrder
from syncd.ledger.sqlite.base import (
    _CONTENT_COLS,
    LedgerBase,
    _b,
    _content,
    _must,
    _retry_stalled,
    _s,
)

# ``upload.order`` as ORDER BY terms over the contents table aliased ``t``; ties go to the
# content due first.
_ORDER_SQL: dict[UploadOrder, str] = {
    "oldest": "{t}.next_attempt_at",
    "newest": "{t}.created_at DESC, {t}.next_attempt_at",
    "smallest": "{t}.size, {t}.next_attempt_at",
    "largest": "{t}.size DESC, {t}.next_attempt_at",
    "path": "(SELECT MIN(o.path) FROM paths o WHERE o.sha256 = {t}.sha256 "
    "AND o.state = 'present'), {t}.next_attempt_at",
}


class Uploads(LedgerBase):
    """The upload transitions of the ledger: pending → uploading (→ allocated) → uploaded, or
    back to pending, failed, rejected. Bigger than the other sections because it is the state
    machine's core: every method is one arrow of ``docs/ledger.md``, kept side by side."""

    @_retry_stalled
    async def due_jobs(
        self, limit: int, exclude: Iterable[str] = (), order: UploadOrder = "oldest"
    ) -> list[Job]:
        """Return up to ``limit`` contents due for upload now, in ``order`` (``oldest``: due
        first, the index's own order; see :data:`~syncd.ledger.records.UploadOrder`).

        ``exclude`` names contents already in flight. A due content with no present path is
        parked (``last_error`` says why) until a path holding it appears again.
        """
        now = self._clock()
        skip = set(exclude)
        n_content = len(Content.__slots__)
        by = _ORDER_SQL[order]
        # The content with its most recently seen present path and that path's fingerprint,
        # in one query. The due contents are limited first: joined before the LIMIT, the path
        # lookup ran for every due content, so each call cost time in the backlog's size
        # (3.3 ms at 2,000 pending, against 0.07 ms). Orders other than the default sort
        # every due content once per call.
        rows = await self._read(
            f"SELECT {', '.join('c.' + c for c in Content.__slots__)}, "
            "p.path, p.dev, p.ino, p.size, p.mtime_ns, p.ctime_ns "
            "FROM (SELECT * FROM contents AS d WHERE state IN ('pending', 'allocated') "
            f"AND next_attempt_at <= ? ORDER BY {by.format(t='d')} LIMIT ?) AS c "
            "LEFT JOIN paths p ON p.path = "
            "(SELECT p2.path FROM paths p2 WHERE p2.sha256 = c.sha256 AND p2.state = 'present' "
            " ORDER BY p2.last_seen DESC LIMIT 1) "
            f"ORDER BY {by.format(t='c')}",
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
            # The source of hooks.on_failed, in the same transaction as the verdict.
            db.execute(
                "INSERT INTO failures (sha256, state, asset_id, reason, at) "
                "SELECT sha256, state, asset_id, ?, ? FROM contents WHERE sha256 = ?",
                (error, now, sha256),
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
