"""The operator's side: what people and scripts ask of syncd.

Owns the read-only reports over the ledger (``show``, ``ls``, ``status``), the operator's
writes through the ledger API (``retry``, ``forget``), ``plan`` and ``doctor``, and the local
HTTP endpoint (``/v1/*``, ``/metrics``, ``/healthz``). It may import the foundation modules, the
ledger, and ``syncd.ingest`` for the checks ``plan`` and ``doctor`` run on the machine; it is
imported only by ``syncd.daemon`` (the endpoint) and ``syncd.cli`` (the commands).
"""
