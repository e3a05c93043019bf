"""The ledger: the store that maps each content's SHA-256 to its asset id and state.

Owns the schema and its migrations, the content state machine (``docs/ledger.md``), the path
rows, the attempts, the persisted cool-downs, recovery after a crash, the ownership lock and
backups. It is the queue of the pipeline. Callers use it through the ``LedgerStore`` protocol
(``store.py``) and its facets, in the records of ``records.py``; two stores implement it, the
SQLite ``Ledger`` (``sqlite/``) and the fleet's ``PostgresLedger`` (``postgres/``). It may
import only the foundation modules (``syncd.errors``, ``syncd.fingerprint``,
``syncd.failpoints``); never ``syncd.ingest``, ``syncd.upload``, ``syncd.ops`` or
``syncd.daemon``.
"""
