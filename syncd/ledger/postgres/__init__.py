"""The shared ledger of a fleet on PostgreSQL (``docs/fleet-ledger.md``).

:class:`PostgresLedger` implements :class:`~syncd.ledger.store.LedgerStore`. This package
re-exports what callers use, so they import from ``syncd.ledger.postgres`` whatever module of
the package holds it.
"""

from __future__ import annotations

from syncd.ledger.postgres.base import DEFAULT_LEASE_S as DEFAULT_LEASE_S
from syncd.ledger.postgres.base import RETRY_MAX_S as RETRY_MAX_S
from syncd.ledger.postgres.base import default_host_name as default_host_name
from syncd.ledger.postgres.base import display_url as display_url
from syncd.ledger.postgres.ledger import PostgresLedger as PostgresLedger
from syncd.ledger.postgres.paths import PgPathReader as PgPathReader
