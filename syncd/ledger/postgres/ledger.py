"""The shared ledger of a fleet: one PostgreSQL database for every host of an account.

The same concepts and methods as the SQLite ledger (:mod:`syncd.ledger.sqlite`), with what a
fleet needs on top (``docs/fleet-ledger.md``):

- **Contents are fleet-wide**: the sha256 is the primary key, so a content another host has
  already uploaded is only given this host's path and shares its asset id.
- **Paths are per host** (``host``, the configured ``fleet.host_name``): every path method
  reads and writes this host's rows only, so a rescan here never marks another host's files
  gone.
- **Work is claimed with a lease.** :meth:`PostgresLedger.due_jobs` takes due contents with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` and stamps them ``claimed_by`` + ``lease_until`` (on
  the database server's clock), renewed in the background at a third of the lease. Just
  before bytes leave, the move to ``uploading`` (:meth:`begin_attempt`, :meth:`mark_sending`)
  and the last bytes of a direct upload (:meth:`mark_finishing`) check that this host still
  holds the claim, else :class:`~syncd.errors.ClaimLost` is raised and the send abandoned.
- **An expired claim is taken over, never simply re-sent.** A content found ``uploading``
  with an expired lease is what a crash leaves: a direct upload goes back to ``pending`` and
  counts one possible remote duplicate if its last bytes had left; a signed-URL upload goes
  back to ``allocated`` on the same asset id (its status is asked before any resend). A late
  answer to the host that lost the claim is kept as a superseded asset, never lost.

The driver is asyncpg (one wheel with no libpq to install) with its connection pool. When the
server is down or restarting, reads raise :class:`~syncd.errors.LedgerUnreachable` and writes
wait and retry (logging one line), so nothing a caller meant to record is lost.

This module holds :class:`PostgresLedger`, the one owner of the pool, the lifecycle and
recovery; its sections (paths, claims, uploads, polling, operator queries, dashboard pages)
are modules of this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from syncd.errors import LedgerError, LedgerUnreachable
from syncd.ledger.postgres.after import PgAfterJobs
from syncd.ledger.postgres.base import (
    _FREE,
    _NOW,
    _UNREACHABLE,
    DEFAULT_LEASE_S,
    _one_line,
    _pipeline_read,
    _retry_unreachable,
    _rowcount,
    _unreachable_text,
    default_host_name,
    display_url,
)
from syncd.ledger.postgres.claims import PgClaims
from syncd.ledger.postgres.pages import PgPages
from syncd.ledger.postgres.paths import PgPathRows
from syncd.ledger.postgres.polling import PgPolling
from syncd.ledger.postgres.queries import PgQueries
from syncd.ledger.postgres.uploads import PgUploads
from syncd.ledger.postgres_migrations import MIGRATIONS, applied, migrate
from syncd.ledger.records import RecoveryReport

if TYPE_CHECKING:
    from syncd.ledger.postgres_migrations import Db

log = logging.getLogger(__name__)


class PostgresLedger(PgPathRows, PgClaims, PgUploads, PgPolling, PgQueries, PgPages, PgAfterJobs):
    """Async access to the shared ledger, as one host of a fleet. Use :meth:`open`.

    The one owner of the pool, the lifecycle (open and migrate, lease renewal, close) and
    recovery; its methods are those of the sections it is made of, one module each (paths,
    claims, uploads, polling, queries, pages; see :class:`~syncd.ledger.postgres.base.PgBase`
    for how each runs). It implements :class:`~syncd.ledger.store.LedgerStore`.
    """

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        host: str | None = None,
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
        lease_s: float = DEFAULT_LEASE_S,
        renew_every_s: float | None = None,
        pool_size: int = 4,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 60.0,
        wait_out_outages: bool = False,
    ) -> PostgresLedger:
        """Connect to the ledger at ``url`` (``postgresql://...``) and migrate its schema.

        Given the URL, this host's name (default: the machine's host name), whether to open
        for reading only (no migration, no lease renewal), the clock, the lease length and
        how often claims are renewed (default: a third of the lease), and whether the reads the
        daemon's stages make wait out an outage as writes do (the daemon) or raise at once (the
        operator's commands). Returns the open store;
        raises :class:`LedgerUnreachable` when the server cannot be reached and
        :class:`LedgerError` for anything else (bad URL, unknown database, refused login).
        """
        shown = display_url(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=connect_timeout_s,
                command_timeout=command_timeout_s,
                server_settings={
                    "application_name": f"syncd {host or default_host_name()}",
                    # A host frozen (SIGSTOP) inside a transaction would hold its row locks,
                    # and SKIP LOCKED would hide those rows from every other host for as long
                    # as it stays frozen: the server ends such a session well within a lease.
                    # No transaction of syncd waits on anything but its own statements.
                    "idle_in_transaction_session_timeout": str(
                        int(1000 * max(1.0, min(lease_s / 4, 30.0)))
                    ),
                },
            )
        except _UNREACHABLE as exc:
            raise LedgerUnreachable(_unreachable_text(shown, exc)) from None
        except (asyncpg.PostgresError, ValueError) as exc:
            raise LedgerError(f"ledger {shown}: {_one_line(exc)}") from None
        store = cls(
            pool,
            url,
            host=host or default_host_name(),
            clock=clock,
            lease_s=lease_s,
            renew_every_s=renew_every_s,
            wait_out_outages=wait_out_outages,
        )
        try:
            if not readonly:
                async with pool.acquire() as conn:
                    await migrate(conn, clock())
                store._renewer = asyncio.create_task(
                    store._renew_claims(), name="syncd-ledger-leases"
                )
        except _UNREACHABLE as exc:
            await pool.close()
            raise LedgerUnreachable(_unreachable_text(shown, exc)) from None
        except asyncpg.PostgresError as exc:
            await pool.close()
            raise LedgerError(f"ledger {shown}: {_one_line(exc)}") from None
        return store

    async def close(self) -> None:
        """Stop renewing claims and close the pool. Idempotent.

        Claims are not released here: a graceful stop releases each one as its upload ends;
        those left expire, as after a crash, and :meth:`recover` clears them at the next start.
        """
        if self._closed:
            return
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._pool.close()

    def terminate(self) -> None:
        """Drop every connection at once, as a killed process would (for tests)."""
        self._closed = True
        if self._renewer is not None:
            self._renewer.cancel()
        self._pool.terminate()

    async def integrity_problems(self, *, quick: bool = False) -> list[str]:
        """PostgreSQL checks its own storage; this returns the migrations this version knows
        that the database lacks (empty when the schema is complete)."""
        async with self._conn() as conn:
            done = set(await applied(conn))
        return [f"migration {m.name} not applied" for m in MIGRATIONS if m.name not in done]

    async def backup(self, dest: str) -> None:
        """Not done by syncd for a shared ledger: raises :class:`LedgerError` naming
        ``pg_dump``, the tool that makes a consistent copy of a live PostgreSQL database."""
        raise LedgerError(
            f"syncd does not back up a PostgreSQL ledger; use pg_dump (e.g. pg_dump -Fc -f "
            f"{dest} '{self.path}')"
        )

    async def _renew_claims(self) -> None:
        """Extend this host's claims on contents it works on, every ``renew_every_s``."""
        while True:
            await asyncio.sleep(self.renew_every_s)
            try:
                async with self._conn() as conn:
                    await conn.execute(
                        f"UPDATE contents SET lease_until = {_NOW} + $2 WHERE claimed_by = $1 "
                        "AND state IN ('pending', 'allocated', 'uploading')",
                        self.host,
                        self.lease_s,
                    )
            except LedgerUnreachable:
                continue  # the writers say so; the next turn tries again
            except LedgerError:
                log.exception("renewing the claims of host %s failed", self.host)

    # ---------------------------------------------------------------- key/value

    @_pipeline_read
    async def get_kv(self, key: str) -> Any:
        """Return the JSON value this host stored under ``key``, or None."""
        rows = await self._read("SELECT value FROM kv WHERE host = $1 AND key = $2", self.host, key)
        return json.loads(rows[0][0]) if rows else None

    @_retry_unreachable
    async def set_kv(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key`` for this host."""
        await self._write(
            "INSERT INTO kv (host, key, value) VALUES ($1, $2, $3) "
            "ON CONFLICT (host, key) DO UPDATE SET value = excluded.value",
            self.host,
            key,
            json.dumps(value),
        )

    # ---------------------------------------------------------------- recovery and operators

    @_retry_unreachable
    async def recover(self) -> RecoveryReport:
        """Startup recovery of this host's own work (the rest of the fleet carries on).

        Contents this host left ``uploading`` are recovered as in the SQLite ledger (direct:
        back to ``pending``, one possible remote duplicate if its last bytes had left;
        signed-URL: back to ``allocated`` on the same asset id), this host's open attempts are
        closed as interrupted, its claims are released, and polls are due now.
        """
        now = self._clock()

        async def tx(db: Db) -> RecoveryReport:
            direct = _rowcount(
                await db.execute(
                    "UPDATE contents c SET state = 'pending', possible_duplicates = "
                    "possible_duplicates + CASE WHEN EXISTS (SELECT 1 FROM attempts a WHERE "
                    "a.sha256 = c.sha256 AND a.host = $1 AND a.ended_at IS NULL AND "
                    "a.outcome = 'finishing') THEN 1 ELSE 0 END, next_attempt_at = $2, "
                    "updated_at = $2, last_error = 'interrupted during a direct upload' "
                    "WHERE c.state = 'uploading' AND c.upload_mode = 'direct' "
                    "AND c.claimed_by = $1",
                    self.host,
                    now,
                )
            )
            signed = _rowcount(
                await db.execute(
                    "UPDATE contents SET state = CASE WHEN asset_id IS NULL THEN 'pending' "
                    "ELSE 'allocated' END, next_attempt_at = $2, updated_at = $2 "
                    "WHERE state = 'uploading' AND claimed_by = $1",
                    self.host,
                    now,
                )
            )
            await db.execute(
                "UPDATE attempts SET ended_at = $2, outcome = CASE WHEN outcome = 'finishing' "
                "THEN 'interrupted_possible_duplicate' ELSE 'interrupted' END "
                "WHERE host = $1 AND ended_at IS NULL",
                self.host,
                now,
            )
            await db.execute(
                "UPDATE contents SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = $1",
                self.host,
            )
            polls = _rowcount(
                await db.execute(
                    f"UPDATE contents c SET next_poll_at = $2 WHERE c.state = 'uploaded' "
                    f"AND {_FREE}",
                    self.host,
                    now,
                )
            )
            return RecoveryReport(direct, signed, polls)

        return await self._tx(tx)
