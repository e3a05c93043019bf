"""Ingest: a path in, a hashed content out.

Owns everything between the filesystem and the ledger's path and content rows: the intake
(``intake.py``, ``scans.py``, ``roots.py``: the roots, their events and scans), the stage that
hashes and records a settled path (``stage.py``), the watchers (inotify or polling) per root
(what a root is and whether it still is, in ``rootcheck.py``), the scanner's walks, the settler
that decides a file is complete (one tracked path's state in ``tracks.py``, its timers in
``deadlines.py``), the writer checks (``/proc``, open-for-writing), the name filter, the media
pre-flight and the hasher's thread pool. It may import the foundation modules
(``syncd.config``, ``syncd.errors``, ``syncd.fingerprint``, ``syncd.failpoints``,
``syncd.metrics``, ``syncd.display``, ``syncd.files``) and the ledger's protocols; never
``syncd.upload``, ``syncd.ops`` or ``syncd.daemon``.
"""
