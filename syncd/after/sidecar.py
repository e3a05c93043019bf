"""The sidecar file: ``NAME.mavi.json`` next to an uploaded file, for other tools to read.

It holds the asset id, the SHA-256, the remote status and when the upload was accepted, as
one JSON object. It is written atomically: to a temporary dot name in the same folder
(``.NAME.mavi.json.syncd-tmp``, which the watcher ignores like any dot name), flushed to
disk, then renamed over the final name, so a reader sees the old file or the new one, never
half of one. The temporary name is the same on every try, so a write a crash interrupted is
overwritten and finished by the next, and leaves nothing behind. The watcher never takes a
``*.mavi.json`` file for upload (:data:`syncd.config.SIDECAR_SUFFIX`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os

from syncd.config import SIDECAR_SUFFIX


def sidecar_path(path: str) -> str:
    """Given an uploaded file's path, return its sidecar's path."""
    return path + SIDECAR_SUFFIX


def sidecar_document(
    *, asset_id: str, sha256: str, status: str, uploaded_at: float | None
) -> bytes:
    """Given the asset id, content hash, remote status and upload time (seconds since the
    epoch, or ``None``), return the sidecar's bytes: indented JSON, ``uploaded_at`` in
    ISO 8601 UTC, a final line break."""
    when = (
        None
        if uploaded_at is None
        else dt.datetime.fromtimestamp(uploaded_at, dt.UTC).isoformat().replace("+00:00", "Z")
    )
    doc = {"asset_id": asset_id, "sha256": sha256, "status": status, "uploaded_at": when}
    return (json.dumps(doc, indent=2) + "\n").encode()


def write_sidecar(path: str, document: bytes) -> str:
    """Write ``document`` as the sidecar of ``path``, atomically; return the sidecar's path.

    Blocking (run it in a thread). Raises ``OSError`` (the folder is read-only or gone, the
    name too long, ...); no temporary file is left behind then.
    """
    target = sidecar_path(path)
    folder, name = os.path.split(target)
    temp = os.path.join(folder, f".{name}.syncd-tmp")
    # O_NOFOLLOW: a symbolic link planted at the temporary name is refused, never written
    # through.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(document)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    # The rename is durable only once the folder is.
    dir_fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target
