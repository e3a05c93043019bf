"""The fleet ledger's queue of work after a final status (its
:class:`~syncd.ledger.store.AfterLedger` facet): the SQLite store's
(:mod:`syncd.ledger.sqlite.after`), per host. Status changes and failures are the fleet's;
each host turns them into jobs for its own present paths, past its own watermarks (``kv``),
and runs its own jobs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from syncd.ledger.postgres.base import (
    _N_PATH,
    _P_PATH_COLS,
    PgBase,
    _b,
    _path,
    _pipeline_read,
    _retry_unreachable,
    _s,
)
from syncd.ledger.records import (
    AFTER_WATERMARK_KEY,
    AfterJob,
    AfterJobState,
    Failure,
    NewAfterJob,
    PathRecord,
    StatusChange,
)

if TYPE_CHECKING:
    from syncd.ledger.postgres_migrations import Db

WATERMARK_KEY = AFTER_WATERMARK_KEY
_JOB_COLS = (
    "id, change_id, kind, path, root, sha256, asset_id, status, at, state, attempts, next_at, "
    "outcome, intent"
)


def _job(row: Sequence[Any]) -> AfterJob:
    values = list(row)
    values[3] = _s(values[3])
    return AfterJob(*values)


class PgAfterJobs(PgBase):
    """This host's queue of work after a final status."""

    @_pipeline_read
    async def after_watermark(self, key: str = WATERMARK_KEY) -> int | None:
        """The id of the last status change (or failure, by ``key``) this host turned into
        jobs (None: never set)."""
        rows = await self._read("SELECT value FROM kv WHERE host = $1 AND key = $2", self.host, key)
        return int(json.loads(rows[0][0])) if rows else None

    @_pipeline_read
    async def latest_status_change(self) -> int:
        """The id of the last status change recorded (0: none)."""
        rows = await self._read("SELECT MAX(id) FROM status_changes")
        return int(rows[0][0] or 0)

    @_pipeline_read
    async def latest_failure(self) -> int:
        """The id of the last failure recorded (0: none)."""
        rows = await self._read("SELECT MAX(id) FROM failures")
        return int(rows[0][0] or 0)

    @_pipeline_read
    async def status_changes_after(self, change_id: int, limit: int) -> list[StatusChange]:
        """Up to ``limit`` status changes after ``change_id``, oldest first."""
        rows = await self._read(
            "SELECT id, sha256, asset_id, remote_status, at FROM status_changes "
            "WHERE id > $1 ORDER BY id LIMIT $2",
            change_id,
            limit,
        )
        return [StatusChange(*r) for r in rows]

    @_pipeline_read
    async def failures_after(self, failure_id: int, limit: int) -> list[Failure]:
        """Up to ``limit`` failures after ``failure_id``, oldest first."""
        rows = await self._read(
            "SELECT id, sha256, state, asset_id, reason, at FROM failures "
            "WHERE id > $1 ORDER BY id LIMIT $2",
            failure_id,
            limit,
        )
        return [Failure(*r) for r in rows]

    @_pipeline_read
    async def present_paths_of(self, sha256: str) -> list[PathRecord]:
        """This host's present paths recorded as holding ``sha256`` now or before."""
        rows = await self._read(
            f"SELECT {_P_PATH_COLS} FROM holdings h JOIN paths p ON p.host = h.host "
            "AND p.path = h.path WHERE h.host = $1 AND h.sha256 = $2 AND p.state = 'present' "
            "ORDER BY p.path",
            self.host,
            sha256,
        )
        return [_path(list(r)[:_N_PATH]) for r in rows]

    @_retry_unreachable
    async def add_after_jobs(
        self, jobs: Iterable[NewAfterJob], watermark: int, key: str = WATERMARK_KEY
    ) -> None:
        """Queue ``jobs`` for this host (one already queued stays as it is) and move its
        watermark under ``key``, in one transaction."""
        now = self._clock()
        rows = [
            (
                self.host,
                j.change_id,
                j.kind,
                _b(j.path),
                j.root,
                j.sha256,
                j.asset_id,
                j.status,
                j.at,
                now,
                now,
            )
            for j in jobs
        ]

        async def tx(db: Db) -> None:
            if rows:
                await db.executemany(
                    "INSERT INTO after_jobs (host, change_id, kind, path, root, sha256, "
                    "asset_id, status, at, next_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, "
                    "$7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
                    rows,
                )
            await db.execute(
                "INSERT INTO kv (host, key, value) VALUES ($1, $2, $3) "
                "ON CONFLICT (host, key) DO UPDATE SET value = excluded.value",
                self.host,
                key,
                json.dumps(watermark),
            )

        await self._tx(tx)

    @_pipeline_read
    async def due_after_jobs(self, limit: int, exclude: Iterable[int] = ()) -> list[AfterJob]:
        """This host's pending jobs due now, oldest first, except ``exclude``; a clean-up
        waits for the sidecar of its path."""
        rows = await self._read(
            f"SELECT {_JOB_COLS} FROM after_jobs j WHERE host = $1 AND state = 'pending' "
            "AND next_at <= $2 AND NOT (id = ANY($3::bigint[])) "
            "AND NOT (kind = 'cleanup' AND EXISTS (SELECT 1 FROM after_jobs s WHERE "
            "s.host = j.host AND s.change_id = j.change_id AND s.path = j.path "
            "AND s.kind = 'sidecar' AND s.state IN ('pending', 'acting'))) "
            "ORDER BY next_at, id LIMIT $4",
            self.host,
            self._clock(),
            list(exclude),
            limit,
        )
        return [_job(list(r)) for r in rows]

    @_pipeline_read
    async def next_after_job_at(self) -> float | None:
        """When this host's earliest pending job is due, or None."""
        rows = await self._read(
            "SELECT MIN(next_at) FROM after_jobs WHERE host = $1 AND state = 'pending'", self.host
        )
        return rows[0][0] if rows else None

    @_pipeline_read
    async def acting_after_jobs(self) -> list[AfterJob]:
        """This host's clean-ups whose intent is committed but whose outcome is not."""
        rows = await self._read(
            f"SELECT {_JOB_COLS} FROM after_jobs WHERE host = $1 AND state = 'acting' ORDER BY id",
            self.host,
        )
        return [_job(list(r)) for r in rows]

    @_retry_unreachable
    async def after_job_acting(self, job_id: int, intent: str) -> None:
        """Commit that a clean-up is about to act, with its JSON intent."""
        await self._write(
            "UPDATE after_jobs SET state = 'acting', intent = $1, updated_at = $2 WHERE id = $3",
            intent,
            self._clock(),
            job_id,
        )

    @_retry_unreachable
    async def finish_after_job(
        self,
        job_id: int,
        state: AfterJobState,
        *,
        outcome: str,
        next_at: float | None = None,
        exit_status: int | None = None,
        stderr_tail: str | None = None,
        count_attempt: bool = True,
    ) -> None:
        """Record one attempt of a job: its new state and what happened."""
        await self._write(
            "UPDATE after_jobs SET state = $1, attempts = attempts + $2, next_at = COALESCE($3, "
            "next_at), outcome = $4, exit_status = $5, stderr_tail = $6, updated_at = $7 "
            "WHERE id = $8",
            state,
            int(count_attempt),
            next_at,
            outcome,
            exit_status,
            stderr_tail,
            self._clock(),
            job_id,
        )

    async def after_counts(self) -> dict[str, dict[str, int]]:
        """This host's jobs by kind and state; clean-ups done by what they did."""
        out: dict[str, dict[str, int]] = {}
        for kind, state, n in await self._read(
            "SELECT kind, state, COUNT(*) FROM after_jobs WHERE host = $1 GROUP BY kind, state",
            self.host,
        ):
            out.setdefault(kind, {})[state] = n
        cleaned: dict[str, int] = {}
        for word, n in await self._read(
            "SELECT split_part(outcome, ' ', 1), COUNT(*) FROM after_jobs WHERE host = $1 "
            "AND kind = 'cleanup' AND state = 'done' GROUP BY 1",
            self.host,
        ):
            cleaned[word.rstrip(":")] = n
        out["cleaned"] = cleaned
        return out
