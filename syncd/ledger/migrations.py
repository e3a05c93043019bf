"""Named, ordered, transactional schema migrations for the ledger.

Each migration is applied once, inside one transaction together with the row that records it in
``_migrations``; a failure rolls back both. Never edit a released migration: append a new one.
The schema, states and transitions are documented in ``docs/ledger.md``.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple


class Migration(NamedTuple):
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_initial",
        """
        CREATE TABLE contents (
            sha256 TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            extension TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL CHECK (state IN
                ('pending', 'allocated', 'uploading', 'uploaded', 'done', 'failed', 'rejected')),
            asset_id TEXT,
            remote_status TEXT,
            upload_mode TEXT,
            signed_url TEXT,
            signed_url_expires_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            throttle_count INTEGER NOT NULL DEFAULT 0,
            remote_failures INTEGER NOT NULL DEFAULT 0,
            possible_duplicates INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            next_poll_at REAL,
            polls INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            uploaded_at REAL,
            done_at REAL
        );
        CREATE INDEX contents_due ON contents (state, next_attempt_at);
        CREATE INDEX contents_poll ON contents (state, next_poll_at);
        CREATE INDEX contents_asset ON contents (asset_id);

        CREATE TABLE paths (
            path BLOB PRIMARY KEY,
            root TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('present', 'gone', 'skipped', 'unsettled', 'error')),
            sha256 TEXT REFERENCES contents (sha256),
            reason TEXT,
            dev INTEGER,
            ino INTEGER,
            size INTEGER,
            mtime_ns INTEGER,
            ctime_ns INTEGER,
            open_since REAL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            gone_at REAL
        );
        CREATE INDEX paths_sha256 ON paths (sha256);
        CREATE INDEX paths_root_state ON paths (root, state);

        CREATE TABLE holdings (
            sha256 TEXT NOT NULL REFERENCES contents (sha256),
            path BLOB NOT NULL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            PRIMARY KEY (sha256, path)
        ) WITHOUT ROWID;

        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL,
            path BLOB,
            mode TEXT NOT NULL,
            asset_id TEXT,
            started_at REAL NOT NULL,
            ended_at REAL,
            outcome TEXT,
            http_status INTEGER,
            bytes_sent INTEGER,
            error TEXT
        );
        CREATE INDEX attempts_sha256 ON attempts (sha256, id);
        CREATE INDEX attempts_started ON attempts (started_at);

        CREATE TABLE superseded_assets (
            asset_id TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            sent_sha256 TEXT,
            path BLOB,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        );

        CREATE TABLE status_changes (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL,
            asset_id TEXT NOT NULL,
            remote_status TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX status_changes_sha256 ON status_changes (sha256, id);

        CREATE TABLE kv (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );

        -- The stable view for users of `sqlite3`: one row per path, with its content.
        CREATE VIEW assets AS
        SELECT
            CAST(p.path AS TEXT) AS path,
            p.root AS root,
            p.state AS path_state,
            p.reason AS path_reason,
            c.sha256 AS sha256,
            c.size AS size,
            c.asset_id AS asset_id,
            c.remote_status AS remote_status,
            c.state AS state,
            c.attempts AS attempts,
            c.last_error AS last_error,
            datetime(p.first_seen, 'unixepoch') AS first_seen,
            datetime(c.updated_at, 'unixepoch') AS updated
        FROM paths AS p LEFT JOIN contents AS c ON c.sha256 = p.sha256;
        """,
    ),
    # The scan compares each folder with the paths the ledger tracks there: one range query per
    # folder answered from this index alone (it holds what the comparison needs), leaving out
    # the gone paths (the history of a long-lived library, often most of the table).
    Migration(
        "0002_paths_live",
        """
        CREATE INDEX paths_live ON paths (path, dev, ino, size, mtime_ns, ctime_ns, state)
            WHERE state != 'gone';
        """,
    ),
    # What follows a final status (hooks, the sidecar, the clean-up): one row per path and
    # kind of work, made from a status_changes row, so a restart loses none of it. The
    # watermark (the last status change turned into jobs) is in kv, written in the same
    # transaction as the jobs.
    Migration(
        "0003_after_jobs",
        """
        CREATE TABLE after_jobs (
            id INTEGER PRIMARY KEY,
            change_id INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN
                ('on_success', 'on_failed', 'webhook', 'sidecar', 'cleanup')),
            path BLOB NOT NULL,
            root TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            asset_id TEXT,
            status TEXT NOT NULL,
            at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN
                ('pending', 'acting', 'done', 'given_up')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,
            outcome TEXT,
            exit_status INTEGER,
            stderr_tail TEXT,
            intent TEXT,
            updated_at REAL NOT NULL,
            UNIQUE (change_id, kind, path)
        );
        CREATE INDEX after_jobs_due ON after_jobs (state, next_at);
        """,
    ),
    # Contents syncd gave up on (attempts exhausted, rejected, or FAILED remotely with no
    # attempt left): the source of hooks.on_failed, as status_changes is of the SUCCESS work.
    # Their after_jobs rows carry minus the failure's id as change_id.
    Migration(
        "0004_failures",
        """
        CREATE TABLE failures (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('failed', 'rejected')),
            asset_id TEXT,
            reason TEXT,
            at REAL NOT NULL
        );
        """,
    ),
)


def current_version(db: sqlite3.Connection) -> list[str]:
    """Given an open connection; return the names of the migrations already applied."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY name")]


def migrate(db: sqlite3.Connection, now: float) -> list[str]:
    """Apply every pending migration, each in its own transaction.

    Given a connection in autocommit mode (``isolation_level=None``) and the current time;
    returns the names applied; raises ``sqlite3.Error`` (after rolling back) if one fails.
    """
    done = set(current_version(db))
    applied: list[str] = []
    for migration in MIGRATIONS:
        if migration.name in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(migration.sql):
                db.execute(statement)
            db.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (migration.name, now)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(migration.name)
    return applied


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit implicitly)."""
    statements: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        if line.strip().startswith("--") and not buf.strip():
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements
