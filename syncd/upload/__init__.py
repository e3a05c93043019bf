"""Upload: a due content in, an asset id and its remote status out.

Owns the MAVI v2 client (one request per call, every answer classified once), the pacer (the
rate budget per endpoint and the shared cool-down; the fleet's on Redis in ``fleet_pacer.py``,
with its keys, scripts and the fleet's view in ``fleet_redis.py``), the upload workers, their
retry policy (``policy.py``: a pure decision per failure, written in one place by
``outcomes.py``), and the status poller. It may import the foundation modules and the ledger's
protocols; never ``syncd.ingest``, ``syncd.ops`` or ``syncd.daemon``.
"""
