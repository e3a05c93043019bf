"""The SQLite ledger's queue of work after a final status: hooks, sidecars and clean-ups
(its :class:`~syncd.ledger.store.AfterLedger` facet).

Jobs are made from ``status_changes`` rows, the poller's record of each remote status: the
jobs of one change and the watermark past it are one transaction, and a job is unique per
change, kind and path, so making them twice makes them once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from syncd.ledger.records import (
    AFTER_WATERMARK_KEY,
    AfterJob,
    AfterJobState,
    Failure,
    NewAfterJob,
    PathRecord,
    StatusChange,
)
from syncd.ledger.sqlite.base import _PATH_COLS, LedgerBase, _b, _path, _retry_stalled, _s

WATERMARK_KEY = AFTER_WATERMARK_KEY
_JOB_COLS = (
    "id, change_id, kind, path, root, sha256, asset_id, status, at, state, attempts, next_at, "
    "outcome, intent"
)


def _job(row: Sequence[Any]) -> AfterJob:
    values = list(row)
    values[3] = _s(values[3])
    return AfterJob(*values)


class AfterJobs(LedgerBase):
    """The queue of work after a final status."""

    async def after_watermark(self, key: str = WATERMARK_KEY) -> int | None:
        """The id of the last status change (or, with ``key``
        :data:`~syncd.ledger.records.FAILURES_WATERMARK_KEY`, the last failure) already turned
        into jobs (None: never set)."""
        rows = await self._read("SELECT value FROM kv WHERE key = ?", (key,))
        return int(rows[0][0]) if rows else None

    async def present_paths_of(self, sha256: str) -> list[PathRecord]:
        """The present paths recorded as holding ``sha256`` now or before."""
        rows = await self._read(
            f"SELECT {', '.join('p.' + c.strip() for c in _PATH_COLS.split(','))} "
            "FROM holdings h JOIN paths p ON p.path = h.path "
            "WHERE h.sha256 = ? AND p.state = 'present' ORDER BY p.path",
            (sha256,),
        )
        return [_path(r) for r in rows]

    async def latest_failure(self) -> int:
        """The id of the last failure recorded (0: none)."""
        rows = await self._read("SELECT MAX(id) FROM failures")
        return int(rows[0][0] or 0)

    async def failures_after(self, failure_id: int, limit: int) -> list[Failure]:
        """Given a watermark, return up to ``limit`` later failures, oldest first."""
        rows = await self._read(
            "SELECT id, sha256, state, asset_id, reason, at FROM failures "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (failure_id, limit),
        )
        return [Failure(*r) for r in rows]

    async def latest_status_change(self) -> int:
        """The id of the last status change recorded (0: none)."""
        rows = await self._read("SELECT MAX(id) FROM status_changes")
        return int(rows[0][0] or 0)

    async def status_changes_after(self, change_id: int, limit: int) -> list[StatusChange]:
        """Given a watermark, return up to ``limit`` later status changes, oldest first."""
        rows = await self._read(
            "SELECT id, sha256, asset_id, remote_status, at FROM status_changes "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (change_id, limit),
        )
        return [StatusChange(*r) for r in rows]

    @_retry_stalled
    async def add_after_jobs(
        self, jobs: Iterable[NewAfterJob], watermark: int, key: str = WATERMARK_KEY
    ) -> None:
        """Queue ``jobs`` (due now; one already queued is kept as it is) and move the
        watermark under ``key`` to ``watermark``, in one transaction."""
        now = self._clock()
        rows = [
            (
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

        def tx(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO after_jobs (change_id, kind, path, root, sha256, asset_id, "
                "status, at, next_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, str(watermark)),
            )

        await self._transaction(tx)

    async def due_after_jobs(self, limit: int, exclude: Iterable[int] = ()) -> list[AfterJob]:
        """Pending jobs due now, oldest due first, except ``exclude`` (running). A clean-up
        waits for the sidecar of the same path and change, which it may have to carry."""
        skip = set(exclude)
        rows = await self._read(
            f"SELECT {_JOB_COLS} FROM after_jobs j WHERE state = 'pending' AND next_at <= ? "
            "AND NOT (kind = 'cleanup' AND EXISTS (SELECT 1 FROM after_jobs s WHERE "
            "s.change_id = j.change_id AND s.path = j.path AND s.kind = 'sidecar' "
            "AND s.state IN ('pending', 'acting'))) ORDER BY next_at, id LIMIT ?",
            (self._clock(), limit + len(skip)),
        )
        return [job for job in map(_job, rows) if job.id not in skip][:limit]

    async def next_after_job_at(self) -> float | None:
        """When the earliest pending job is due (None: none is pending)."""
        rows = await self._read("SELECT MIN(next_at) FROM after_jobs WHERE state = 'pending'")
        return rows[0][0] if rows else None

    async def acting_after_jobs(self) -> list[AfterJob]:
        """Clean-ups that committed their intent and were not finished (a crash came)."""
        rows = await self._read(
            f"SELECT {_JOB_COLS} FROM after_jobs WHERE state = 'acting' ORDER BY id"
        )
        return [_job(r) for r in rows]

    @_retry_stalled
    async def after_job_acting(self, job_id: int, intent: str) -> None:
        """Commit that the clean-up ``job_id`` is about to act, with its JSON ``intent``."""
        await self._write(
            "UPDATE after_jobs SET state = 'acting', intent = ?, updated_at = ? WHERE id = ?",
            (intent, self._clock(), job_id),
        )

    @_retry_stalled
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
        """Record one attempt of ``job_id``: its new state (``pending`` again with
        ``next_at``, ``done`` or ``given_up``) and what happened."""
        now = self._clock()
        await self._write(
            "UPDATE after_jobs SET state = ?, attempts = attempts + ?, next_at = COALESCE(?, "
            "next_at), outcome = ?, exit_status = ?, stderr_tail = ?, updated_at = ? "
            "WHERE id = ?",
            (state, int(count_attempt), next_at, outcome, exit_status, stderr_tail, now, job_id),
        )

    async def after_counts(self) -> dict[str, dict[str, int]]:
        """Jobs by kind and state, and clean-ups by what they did (``deleted``, ``moved``,
        ``kept``, ``would``: a dry run)."""
        out: dict[str, dict[str, int]] = {}
        for kind, state, n in await self._read(
            "SELECT kind, state, COUNT(*) FROM after_jobs GROUP BY kind, state"
        ):
            out.setdefault(kind, {})[state] = n
        cleaned: dict[str, int] = {}
        for word, n in await self._read(
            "SELECT substr(outcome, 1, instr(outcome || ' ', ' ') - 1), COUNT(*) FROM after_jobs "
            "WHERE kind = 'cleanup' AND state = 'done' GROUP BY 1"
        ):
            cleaned[word.rstrip(":")] = n
        out["cleaned"] = cleaned
        return out
