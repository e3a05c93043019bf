"""The SQLite ledger of one host: one file (WAL) mapping content hashes to remote assets.

:class:`Ledger` implements :class:`~syncd.ledger.store.LedgerStore` (see ``docs/ledger.md``).
This package re-exports what callers use, so they import from ``syncd.ledger.sqlite`` whatever
module of the package holds it.
"""

from __future__ import annotations

from syncd.ledger.records import CONTENT_STATES as CONTENT_STATES
from syncd.ledger.records import PATH_STATES as PATH_STATES
from syncd.ledger.records import Attempt as Attempt
from syncd.ledger.records import Content as Content
from syncd.ledger.records import ContentState as ContentState
from syncd.ledger.records import Job as Job
from syncd.ledger.records import PathRecord as PathRecord
from syncd.ledger.records import PathState as PathState
from syncd.ledger.records import RecoveryReport as RecoveryReport
from syncd.ledger.sqlite.base import STALL_RETRY_MAX_S as STALL_RETRY_MAX_S
from syncd.ledger.sqlite.base import LedgerStalled as LedgerStalled
from syncd.ledger.sqlite.base import classify_sqlite_error as classify_sqlite_error
from syncd.ledger.sqlite.ledger import Ledger as Ledger
from syncd.ledger.sqlite.lock import LedgerLock as LedgerLock
from syncd.ledger.sqlite.lock import holder_pid as holder_pid
from syncd.ledger.sqlite.lock import prepare_ledger_dir as prepare_ledger_dir
from syncd.ledger.sqlite.paths import PathReader as PathReader
