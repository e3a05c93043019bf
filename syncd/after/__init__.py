"""After the upload: what happens to a file once its remote status is final.

Owns the notifications (a command per outcome, a signed webhook, drained from a queue with
retries), the sidecar file written next to an uploaded file, and the source clean-up rules
(keep, delete or move once the asset is SUCCESS and the file is still the one hashed). It may
import the foundation modules and the ledger; never ``syncd.ingest``, ``syncd.upload``,
``syncd.ops`` or ``syncd.daemon``.
"""
