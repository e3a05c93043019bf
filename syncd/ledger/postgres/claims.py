"""The fleet ledger's claims: due contents taken with ``SELECT ... FOR UPDATE SKIP LOCKED`` and
stamped with this host's lease, expired claims taken over, claims released
(``docs/fleet-ledger.md``, "Claims, leases and the fenced send").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from syncd.fingerprint import Fingerprint
from syncd.ledger.postgres.base import (
    _CONTENT_COLS,
    _FREE,
    _NOW,
    _PARK_S,
    _WORKABLE,
    PgBase,
    _content,
    _pipeline_read,
    _retry_unreachable,
    _s,
)
from syncd.ledger.postgres.statements import _take_over_expired
from syncd.ledger.records import Job, UploadOrder

if TYPE_CHECKING:
    from syncd.ledger.postgres_migrations import Db


# ``upload.order`` as ORDER BY terms over the contents table ``c`` ($1 is this host); ties
# go to the content due first.
_ORDER_SQL: dict[UploadOrder, str] = {
    "oldest": "c.next_attempt_at",
    "newest": "c.created_at DESC, c.next_attempt_at",
    "smallest": "c.size, c.next_attempt_at",
    "largest": "c.size DESC, c.next_attempt_at",
    "path": "(SELECT o.path FROM paths o WHERE o.sha256 = c.sha256 AND o.host = $1 "
    "AND o.state = 'present' ORDER BY o.path LIMIT 1), c.next_attempt_at",
}


class PgClaims(PgBase):
    """Which host works on which content: claiming, asking and releasing."""

    @_retry_unreachable
    async def due_jobs(
        self, limit: int, exclude: Iterable[str] = (), order: UploadOrder = "oldest"
    ) -> list[Job]:
        """Claim up to ``limit`` contents due for upload now that a present path of this host
        holds, in ``order`` (``upload.order``); returns them with that path.

        ``exclude`` names contents already in flight here. Contents claimed by another host
        whose lease is live are skipped (``FOR UPDATE SKIP LOCKED`` keeps two hosts from
        claiming one row at once); expired ``uploading`` claims are taken over first (see the
        module docstring). A due content that no host holds a present path for is parked
        until one appears.
        """
        now = self._clock()
        skip = list(set(exclude))

        async def tx(db: Db) -> list[Job]:
            await _take_over_expired(db, self.host, now)
            rows = await db.fetch(
                "SELECT c.sha256, EXISTS (SELECT 1 FROM paths p WHERE p.sha256 = c.sha256 "
                "AND p.host = $1 AND p.state = 'present') FROM contents c "
                "WHERE c.state IN ('pending', 'allocated') AND c.next_attempt_at <= $2 "
                f"AND NOT (c.sha256 = ANY($3::text[])) AND {_FREE} AND {_WORKABLE} "
                f"ORDER BY {_ORDER_SQL[order]} LIMIT $4 FOR UPDATE OF c SKIP LOCKED",
                self.host,
                now,
                skip,
                limit,
            )
            mine = [r[0] for r in rows if r[1]]
            orphans = [r[0] for r in rows if not r[1]]
            if orphans:
                await db.execute(
                    "UPDATE contents SET next_attempt_at = $1, last_error = "
                    "'no present path holds this content', claimed_by = NULL, "
                    "lease_until = NULL WHERE sha256 = ANY($2::text[])",
                    now + _PARK_S,
                    orphans,
                )
            if not mine:
                return []
            claimed = await db.fetch(
                f"UPDATE contents SET claimed_by = $1, lease_until = {_NOW} + $2 "
                f"WHERE sha256 = ANY($3::text[]) RETURNING {_CONTENT_COLS}",
                self.host,
                self.lease_s,
                mine,
            )
            # A host whose claim expired between its steps (a signed URL allocated, not yet
            # sent) keeps no open attempt on what is now this host's.
            await db.execute(
                "UPDATE attempts SET ended_at = $1, outcome = 'interrupted', error = "
                "'lease of host ' || host || ' expired; taken over by host ' || $2 "
                "WHERE sha256 = ANY($3::text[]) AND ended_at IS NULL AND host <> $2",
                now,
                self.host,
                mine,
            )
            paths = await db.fetch(
                "SELECT DISTINCT ON (sha256) sha256, path, dev, ino, size, mtime_ns, ctime_ns "
                "FROM paths WHERE host = $1 AND state = 'present' AND sha256 = ANY($2::text[]) "
                "ORDER BY sha256, last_seen DESC",
                self.host,
                mine,
            )
            where = {r[0]: r for r in paths}
            jobs: list[Job] = []
            # In the order the claim query chose them (``mine`` keeps it).
            rank = {sha: i for i, sha in enumerate(mine)}
            for row in sorted(claimed, key=lambda r: rank[r["sha256"]]):
                content = _content(row)
                p = where[content.sha256]
                fp = None if p[2] is None else Fingerprint(p[2], p[3], p[4], p[5], p[6])
                jobs.append(Job(content, _s(p[1]), fp))
            return jobs

        return await self._tx(tx)

    @_pipeline_read
    async def next_due_at(self) -> float | None:
        """When the next content this host could claim becomes due (None if none waits):
        a content another host claims counts from when that claim expires (converted from
        the server's clock to this host's), so a host wakes to take over a dead host's work."""
        rows = await self._read(
            "SELECT MIN(CASE WHEN c.claimed_by IS NOT NULL AND c.claimed_by <> $1 "
            f"AND c.lease_until >= {_NOW} THEN GREATEST(c.next_attempt_at, "
            f"c.lease_until - {_NOW} + $2) ELSE c.next_attempt_at END) FROM contents c "
            "WHERE (c.state IN ('pending', 'allocated') OR (c.state = 'uploading' "
            f"AND c.claimed_by IS DISTINCT FROM $1)) AND {_WORKABLE}",
            self.host,
            self._clock(),
        )
        return rows[0][0] if rows else None

    @_pipeline_read
    async def claimed_by(self, sha256: str) -> tuple[str | None, float | None]:
        """Who claims ``sha256`` and for how many more seconds (negative once expired)."""
        rows = await self._read(
            f"SELECT claimed_by, lease_until - {_NOW} FROM contents WHERE sha256 = $1", sha256
        )
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    async def release_claims(self) -> int:
        """Release every claim of this host on contents not being sent (graceful stop).
        Not retried: a stop must not wait for the server; leases expire anyway."""
        return await self._write(
            "UPDATE contents SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = $1 "
            "AND state IN ('pending', 'allocated', 'uploaded')",
            self.host,
        )
