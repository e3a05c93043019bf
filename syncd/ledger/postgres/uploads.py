"""The fleet ledger's upload half of the content state machine (its
:class:`~syncd.ledger.store.UploadLedger` facet with :mod:`.claims`): attempts, allocations,
the answer, retries, giving up and superseded assets, each fenced by this host's claim where
bytes are about to leave.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from syncd.errors import ClaimLost
from syncd.ledger.postgres.base import (
    _CONTENT_COLS,
    _FREE,
    _NOW,
    PgBase,
    _b,
    _content,
    _must,
    _pipeline_read,
    _retry_unreachable,
)
from syncd.ledger.postgres.statements import (
    _attempt_live,
    _claim_lost,
    _end_attempt,
    _keep_superseded,
    _late_answer,
)
from syncd.ledger.records import Content

if TYPE_CHECKING:
    from syncd.ledger.postgres_migrations import Db


class PgUploads(PgBase):
    """The upload transitions of the shared ledger. Bigger than the other sections because it
    is the state machine's core with its fences: every method is one arrow of
    ``docs/ledger.md`` plus the claim check of ``docs/fleet-ledger.md``, kept side by side."""

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

    @_pipeline_read
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

    @_pipeline_read
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
                # The source of hooks.on_failed, in the same transaction as the verdict.
                await db.execute(
                    "INSERT INTO failures (sha256, state, asset_id, reason, at) "
                    "SELECT sha256, state, asset_id, $1, $2 FROM contents WHERE sha256 = $3",
                    error,
                    now,
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
