"""The fleet ledger's statements shared by its sections: each an ``async`` function of one open
transaction (``db``), never a transaction of its own: upserting a path, taking over expired
claims, checking a claim or an attempt is still this host's, keeping a superseded asset, a
late answer, closing an attempt.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from syncd.errors import ClaimLost
from syncd.fingerprint import Fingerprint
from syncd.ledger.postgres.base import _NOW, _b
from syncd.ledger.records import PathState

if TYPE_CHECKING:
    from syncd.ledger.postgres_migrations import Db

log = logging.getLogger(__name__)


async def _upsert_path(
    db: Db,
    host: str,
    path: str,
    root: str,
    state: PathState,
    sha256: str | None,
    reason: str | None,
    fp: Fingerprint | None,
    now: float,
    open_since: float | None = None,
) -> None:
    dev, ino, size, mtime, ctime = fp if fp is not None else (None,) * 5
    await db.execute(
        "INSERT INTO paths (host, path, root, state, sha256, reason, dev, ino, size, mtime_ns, "
        "ctime_ns, open_since, first_seen, last_seen, gone_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14) "
        "ON CONFLICT (host, path) DO UPDATE SET root = excluded.root, state = excluded.state, "
        "sha256 = excluded.sha256, reason = excluded.reason, dev = excluded.dev, "
        "ino = excluded.ino, size = excluded.size, mtime_ns = excluded.mtime_ns, "
        "ctime_ns = excluded.ctime_ns, open_since = excluded.open_since, "
        "last_seen = excluded.last_seen, gone_at = excluded.gone_at",
        host,
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
        now if state == "gone" else None,
    )


async def _take_over_expired(db: Db, host: str, now: float) -> None:
    """Contents left ``uploading`` by a host whose lease expired (killed, frozen, cut off):
    close its attempts and put them back as its own restart would (direct: ``pending``, one
    possible remote duplicate when its last bytes had left; signed-URL: ``allocated`` on the
    same asset id). Never re-sent blindly: the next claim starts from that state."""
    rows = await db.fetch(
        "SELECT sha256, claimed_by FROM contents WHERE state = 'uploading' "
        f"AND claimed_by IS DISTINCT FROM $1 AND COALESCE(lease_until, 0) < {_NOW} "
        "ORDER BY sha256 LIMIT 100 FOR UPDATE SKIP LOCKED",
        host,
    )
    for sha256, holder in rows:
        closed = await db.fetch(
            "UPDATE attempts SET ended_at = $2, error = $3, outcome = CASE WHEN outcome = "
            "'finishing' THEN 'interrupted_possible_duplicate' ELSE 'interrupted' END "
            "WHERE sha256 = $1 AND ended_at IS NULL "
            "RETURNING outcome = 'interrupted_possible_duplicate'",
            sha256,
            now,
            f"lease of host {holder} expired; taken over by host {host}",
        )
        finishing = any(r[0] for r in closed)
        await db.execute(
            "UPDATE contents SET state = CASE WHEN upload_mode = 'direct' OR asset_id IS NULL "
            "THEN 'pending' ELSE 'allocated' END, possible_duplicates = possible_duplicates + "
            "CASE WHEN upload_mode = 'direct' AND $2 THEN 1 ELSE 0 END, next_attempt_at = $3, "
            "updated_at = $3, last_error = $4, claimed_by = NULL, lease_until = NULL "
            "WHERE sha256 = $1",
            sha256,
            bool(finishing),
            now,
            f"lease of host {holder} expired during an upload",
        )
        log.warning(
            "%s: the lease of host %s expired during its upload; taken over%s",
            sha256[:12],
            holder,
            " (counted as a possible remote duplicate)" if finishing else "",
        )


async def _attempt_live(db: Db, host: str, attempt_id: int) -> bool:
    """Whether ``attempt_id`` is this host's and still open (no takeover closed it); locks
    its content's row for the rest of the transaction."""
    row = await db.fetchrow(
        "SELECT a.ended_at IS NULL AND a.host = $1 AND c.claimed_by IS NOT DISTINCT FROM $1 "
        "FROM attempts a JOIN contents c ON c.sha256 = a.sha256 WHERE a.id = $2 "
        "FOR UPDATE OF c",
        host,
        attempt_id,
    )
    return bool(row is not None and row[0])


async def _claim_lost(db: Db, host: str, sha256: str) -> ClaimLost:
    row = await db.fetchrow(
        f"SELECT state, claimed_by, lease_until - {_NOW} FROM contents WHERE sha256 = $1",
        sha256,
    )
    if row is None:
        return ClaimLost(f"{sha256[:12]}: not in the ledger")
    state, holder, left = row
    if holder is not None and holder != host:
        why = f"claimed by host {holder} (lease {max(0.0, left or 0.0):.0f} s left)"
    else:
        why = f"now {state}"
    return ClaimLost(f"{sha256[:12]}: host {host} lost its claim ({why}); not sending")


async def _keep_superseded(
    db: Db,
    asset_id: str,
    sha256: str,
    sent_sha256: str | None,
    host: str,
    path: str | None,
    reason: str,
    now: float,
) -> None:
    await db.execute(
        "INSERT INTO superseded_assets (asset_id, sha256, sent_sha256, host, path, reason, at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (asset_id) DO NOTHING",
        asset_id,
        sha256,
        sent_sha256,
        host,
        None if path is None else _b(path),
        reason,
        now,
    )


async def _late_answer(
    db: Db, host: str, sha256: str, attempt_id: int, asset_id: str, now: float
) -> None:
    """The API answered ``asset_id`` to an attempt this host had lost: the bytes left, so
    the asset exists. Keep it (superseded) and count the duplicate, unless the takeover
    counted it already or it is the content's own asset (a signed URL resent)."""
    row = await db.fetchrow(
        "SELECT a.outcome, c.asset_id FROM attempts a JOIN contents c ON c.sha256 = a.sha256 "
        "WHERE a.id = $1",
        attempt_id,
    )
    if row is None or row[1] == asset_id:
        return
    counted = row[0] == "interrupted_possible_duplicate"
    await _keep_superseded(
        db, asset_id, sha256, sha256, host, None,
        f"remote duplicate: answered to host {host} after its claim was lost", now,
    )  # fmt: skip
    if not counted:
        await db.execute(
            "UPDATE contents SET possible_duplicates = possible_duplicates + 1 WHERE sha256 = $1",
            sha256,
        )
    await db.execute(
        "UPDATE attempts SET outcome = 'late_duplicate', asset_id = $2 WHERE id = $1",
        attempt_id,
        asset_id,
    )
    log.warning(
        "%s: asset %s was answered to host %s after its claim was lost: kept as a remote duplicate",
        sha256[:12],
        asset_id,
        host,
    )


async def _end_attempt(
    db: Db,
    now: float,
    attempt_id: int,
    outcome: str,
    error: str | None,
    http_status: int | None,
    bytes_sent: int | None,
    host: str,
) -> None:
    """Close this host's ``attempt_id`` (one a takeover closed already keeps its outcome)."""
    await db.execute(
        "UPDATE attempts SET ended_at = $1, outcome = $2, error = $3, http_status = $4, "
        "bytes_sent = $5 WHERE id = $6 AND host = $7 AND ended_at IS NULL",
        now,
        outcome,
        error,
        http_status,
        bytes_sent,
        attempt_id,
        host,
    )
