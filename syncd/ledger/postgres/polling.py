"""The fleet ledger's polling half of the state machine: uploaded contents, their remote
status, and a remote failure (its :class:`~syncd.ledger.store.PollLedger` facet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from syncd.ledger.postgres.base import (
    _CONTENT_COLS,
    _FREE,
    _NOW,
    PgBase,
    _content,
    _pipeline_read,
    _retry_unreachable,
)
from syncd.ledger.postgres.statements import _keep_superseded
from syncd.ledger.records import Content, ContentState

if TYPE_CHECKING:
    from syncd.ledger.postgres_migrations import Db


class PgPolling(PgBase):
    """The poller's transitions: uploaded → done, or back to pending (or failed)."""

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

    @_pipeline_read
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
            if state == "failed":
                # The source of hooks.on_failed, in the same transaction as the verdict.
                await db.execute(
                    "INSERT INTO failures (sha256, state, asset_id, reason, at) "
                    "VALUES ($1, 'failed', $2, $3, $4)",
                    sha256,
                    asset_id,
                    reason,
                    now,
                )
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
