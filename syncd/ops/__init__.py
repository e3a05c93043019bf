"""The operator's side: what people and scripts ask of syncd.

Owns the read-only reports over the ledger (``show``, ``ls``, ``status``), the operator's
writes through the ledger API (``retry``, ``forget``), ``plan`` and ``doctor``, the running
daemon's snapshot and its renderings (``live.py``: summary line, heartbeat record, dashboard
view), and the local HTTP endpoint (``/v1/*``, ``/metrics``, ``/healthz``) with its dashboard
(``dashboard.py``; the plot's request rates in ``rates.py``). It may import the
foundation modules, the ledger, ``syncd.ingest`` for the checks ``plan`` and ``doctor`` run on
the machine, and the stages' value types (``syncd.ingest.stage.Counters``,
``syncd.upload.uploader.Pause``); it is imported only by ``syncd.daemon`` (the endpoint, the
snapshot) and ``syncd.cli`` (the commands).
"""
