"""The SQLite ledger's polling half of the state machine: uploaded contents, their remote
status, and a remote failure (its :class:`~syncd.ledger.store.PollLedger` facet).
"""

from __future__ import annotations

import sqlite3

from syncd.ledger.records import Content, ContentState
from syncd.ledger.sqlite.base import _CONTENT_COLS, LedgerBase, _content, _retry_stalled


class Polling(LedgerBase):
    """The poller's transitions: uploaded → done, or back to pending (or failed)."""

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
            if state == "failed":
                # The source of hooks.on_failed, in the same transaction as the verdict.
                db.execute(
                    "INSERT INTO failures (sha256, state, asset_id, reason, at) "
                    "VALUES (?, 'failed', ?, ?, ?)",
                    (sha256, asset_id, reason, now),
                )
            db.execute(
                "UPDATE contents SET state = ?, remote_status = 'FAILED', asset_id = NULL, "
                "remote_failures = remote_failures + 1, last_error = ?, next_attempt_at = ?, "
                "next_poll_at = NULL, updated_at = ? WHERE sha256 = ?",
                (state, reason, now, now, sha256),
            )
            return state

        return await self._transaction(tx)
