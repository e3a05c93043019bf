"""``syncd ledger migrate``: copy one host's SQLite ledger into a fleet's PostgreSQL ledger.

Idempotent and resumable: every row is copied with ``ON CONFLICT`` rules, in batches of one
transaction each, so a run that was interrupted is finished by running it again, and a second
run copies nothing twice. Every asset id of the source is kept: a content the fleet already
knows keeps the fleet's asset, and the source's other asset id goes to ``superseded_assets``
(or the other way round when the source's row is further along). The SQLite file is only
read; no daemon may own it meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from syncd.errors import LedgerError, LedgerLocked
from syncd.ledger.postgres import PostgresLedger
from syncd.ledger.sqlite import holder_pid

if TYPE_CHECKING:
    from syncd.ledger.postgres_migrations import Db

BATCH = 1000
# How far along a content is: a row further along wins a merge.
_RANK = {"done": 6, "uploaded": 5, "allocated": 3, "pending": 2, "failed": 1, "rejected": 1}
_CONTENT_COLS = (
    "sha256, size, extension, state, asset_id, remote_status, upload_mode, signed_url, "
    "signed_url_expires_at, attempts, throttle_count, remote_failures, possible_duplicates, "
    "last_error, next_attempt_at, next_poll_at, polls, created_at, updated_at, uploaded_at, "
    "done_at"
)
_PATH_COLS = (
    "path, root, state, sha256, reason, dev, ino, size, mtime_ns, ctime_ns, open_since, "
    "first_seen, last_seen, gone_at"
)


@dataclass
class MigrateReport:
    """What a run copied (rows already in the fleet ledger are not counted)."""

    contents_new: int = 0
    contents_merged: int = 0
    paths: int = 0
    attempts: int = 0
    asset_ids: int = 0  # asset ids of the source, all present in the target afterwards


def _read_source(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row worth copying from the SQLite ledger at ``path`` (read-only).

    Contents left ``uploading`` are read as startup recovery would leave them (direct:
    ``pending``, with a possible duplicate when its last bytes had left; signed-URL:
    ``allocated`` on its asset id), and open attempts as interrupted.
    """
    db = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=10)
    try:
        contents = db.execute(
            f"SELECT {_CONTENT_COLS}, EXISTS (SELECT 1 FROM attempts a WHERE a.sha256 = "
            "contents.sha256 AND a.outcome = 'finishing') FROM contents ORDER BY sha256"
        ).fetchall()
        fixed: list[tuple[Any, ...]] = []
        for row in contents:
            values = list(row[:-1])
            if values[3] == "uploading":
                direct = values[6] == "direct" or values[4] is None
                values[3] = "pending" if direct else "allocated"
                if values[6] == "direct" and row[-1]:
                    values[12] += 1
            fixed.append(tuple(values))
        return {
            "contents": fixed,
            "paths": db.execute(f"SELECT {_PATH_COLS} FROM paths ORDER BY path").fetchall(),
            "holdings": db.execute(
                "SELECT sha256, path, first_seen, last_seen FROM holdings"
            ).fetchall(),
            "attempts": db.execute(
                "SELECT id, sha256, path, mode, asset_id, started_at, ended_at, CASE WHEN "
                "outcome IS NULL THEN 'interrupted' WHEN outcome = 'finishing' THEN "
                "'interrupted_possible_duplicate' ELSE outcome END, http_status, bytes_sent, "
                "error FROM attempts ORDER BY id"
            ).fetchall(),
            "superseded": db.execute(
                "SELECT asset_id, sha256, sent_sha256, path, reason, at FROM superseded_assets"
            ).fetchall(),
            "status_changes": db.execute(
                "SELECT sha256, asset_id, remote_status, at FROM status_changes ORDER BY id"
            ).fetchall(),
            "kv": db.execute("SELECT key, value FROM kv WHERE key = 'pacer'").fetchall(),
        }
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the SQLite ledger {path}: {exc}") from None
    finally:
        db.close()


def _batches(rows: Sequence[tuple[Any, ...]]) -> list[Sequence[tuple[Any, ...]]]:
    return [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]


async def migrate_sqlite(
    source: str,
    target: PostgresLedger,
    *,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> MigrateReport:
    """Copy the SQLite ledger at ``source`` into ``target`` under ``target.host``.

    Given the SQLite file and the open fleet store (as the host the source belonged to);
    calls ``on_progress(table, done, total)`` after each batch. Returns what was copied.
    Raises :class:`LedgerLocked` when a daemon owns the source, :class:`LedgerError` when it
    cannot be read, or when an asset id of the source is missing from the target afterwards.
    """
    if not await asyncio.to_thread(os.path.exists, source):
        raise LedgerError(f"no SQLite ledger at {source}")
    pid = await asyncio.to_thread(holder_pid, source + ".lock")
    if pid is not None:
        raise LedgerLocked(source, pid)
    rows = await asyncio.to_thread(_read_source, source)
    report = MigrateReport()
    host = target.host

    def progress(table: str, done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(table, done, total)

    contents = rows["contents"]
    for i, batch in enumerate(_batches(contents)):

        async def copy_contents(db: Db, batch: Sequence[tuple[Any, ...]] = batch) -> None:
            for row in batch:
                await _merge_content(db, host, row, report)

        await target._tx(copy_contents)
        progress("contents", min(len(contents), (i + 1) * BATCH), len(contents))

    for i, batch in enumerate(_batches(rows["paths"])):

        async def copy_paths(db: Db, batch: Sequence[tuple[Any, ...]] = batch) -> None:
            before = await db.fetchval("SELECT count(*) FROM paths WHERE host = $1", host)
            await db.executemany(
                "INSERT INTO paths (host, path, root, state, sha256, reason, dev, ino, size, "
                "mtime_ns, ctime_ns, open_since, first_seen, last_seen, gone_at) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
                "ON CONFLICT (host, path) DO NOTHING",
                [(host, bytes(r[0]), *r[1:]) for r in batch],
            )
            after = await db.fetchval("SELECT count(*) FROM paths WHERE host = $1", host)
            report.paths += int(after) - int(before)

        await target._tx(copy_paths)
        progress("paths", min(len(rows["paths"]), (i + 1) * BATCH), len(rows["paths"]))

    async def copy_rest(db: Db) -> None:
        await db.executemany(
            "INSERT INTO holdings (sha256, host, path, first_seen, last_seen) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sha256, host, path) DO NOTHING",
            [(r[0], host, bytes(r[1]), r[2], r[3]) for r in rows["holdings"]],
        )
        await db.executemany(
            "INSERT INTO superseded_assets (asset_id, sha256, sent_sha256, host, path, reason, "
            "at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (asset_id) DO NOTHING",
            [
                (r[0], r[1], r[2], host, None if r[3] is None else bytes(r[3]), *r[4:])
                for r in rows["superseded"]
            ],
        )
        await db.executemany(
            "INSERT INTO status_changes (sha256, asset_id, remote_status, at) "
            "SELECT $1::text, $2::text, $3::text, $4::float8 WHERE NOT EXISTS "
            "(SELECT 1 FROM status_changes WHERE sha256 = $1 AND asset_id = $2 "
            "AND remote_status = $3 AND at = $4)",
            rows["status_changes"],
        )
        await db.executemany(
            "INSERT INTO kv (host, key, value) VALUES ($1, $2, $3) "
            "ON CONFLICT (host, key) DO NOTHING",
            [(host, r[0], r[1]) for r in rows["kv"]],
        )

    await target._tx(copy_rest)

    attempts = rows["attempts"]
    for i, batch in enumerate(_batches(attempts)):

        async def copy_attempts(db: Db, batch: Sequence[tuple[Any, ...]] = batch) -> None:
            before = await db.fetchval("SELECT count(*) FROM attempts WHERE host = $1", host)
            await db.executemany(
                "INSERT INTO attempts (sha256, host, path, mode, asset_id, started_at, "
                "ended_at, outcome, http_status, bytes_sent, error, imported_from) VALUES "
                "($1, $2, $3, $4, $5, $6::float8, COALESCE($7::float8, $6::float8), $8, $9, "
                "$10, $11, $12) "
                "ON CONFLICT (host, imported_from) WHERE imported_from IS NOT NULL DO NOTHING",
                [
                    (r[1], host, None if r[2] is None else bytes(r[2]), *r[3:], f"sqlite:{r[0]}")
                    for r in batch
                ],
            )
            after = await db.fetchval("SELECT count(*) FROM attempts WHERE host = $1", host)
            report.attempts += int(after) - int(before)

        await target._tx(copy_attempts)
        progress("attempts", min(len(attempts), (i + 1) * BATCH), len(attempts))

    wanted = {r[4] for r in contents if r[4]} | {r[0] for r in rows["superseded"]}
    wanted |= {r[4] for r in attempts if r[4] and r[7] == "ok"}
    report.asset_ids = len(wanted)
    found = await target._read(
        "SELECT asset_id FROM contents WHERE asset_id = ANY($1::text[]) UNION "
        "SELECT asset_id FROM superseded_assets WHERE asset_id = ANY($1::text[])",
        sorted(wanted),
    )
    missing = wanted - {r[0] for r in found}
    if missing:
        raise LedgerError(
            f"{len(missing)} asset id(s) of {source} are not in the fleet ledger after the copy "
            f"(e.g. {sorted(missing)[0]}); nothing was lost from {source}: run it again"
        )
    return report


async def _merge_content(db: Db, host: str, row: tuple[Any, ...], report: MigrateReport) -> None:
    """Insert one source content, or merge it with the fleet's row of the same sha256.

    The row further along (done, then uploaded, ...) stays the content's; an asset id of the
    other one is kept in ``superseded_assets``. Runs again as a no-op.
    """
    sha256, state, asset_id = row[0], row[3], row[4]
    now = row[18]
    inserted = await db.fetchval(
        f"INSERT INTO contents ({_CONTENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
        "$10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) "
        "ON CONFLICT (sha256) DO NOTHING RETURNING 1",
        *row,
    )
    if inserted:
        report.contents_new += 1
        return
    theirs = await db.fetchrow(
        "SELECT state, asset_id FROM contents WHERE sha256 = $1 FOR UPDATE", sha256
    )
    if theirs is None or theirs["asset_id"] == asset_id:
        return
    ours_wins = _RANK.get(state, 0) > _RANK.get(theirs["state"], 0) and asset_id is not None
    loser = theirs["asset_id"] if ours_wins else asset_id
    if loser is not None:
        await db.execute(
            "INSERT INTO superseded_assets (asset_id, sha256, sent_sha256, host, path, reason, "
            "at) VALUES ($1, $2, $2, $3, NULL, $4, $5) ON CONFLICT (asset_id) DO NOTHING",
            loser,
            sha256,
            host,
            f"another asset of the same content when host {host}'s ledger was merged",
            now,
        )
    if ours_wins:
        cols = [c.strip() for c in _CONTENT_COLS.split(",")][1:]
        sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(cols))
        await db.execute(
            f"UPDATE contents SET {sets}, claimed_by = NULL, lease_until = NULL WHERE sha256 = $1",
            *row,
        )
    report.contents_merged += 1
