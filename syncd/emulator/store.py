"""The emulator's storage: content-addressed blobs plus a small SQLite file of asset records.

Layout of the data directory::

    blobs/ab/abcdef...   the bytes of every received file, named by their SHA-256
    tmp/                 files being received (hashed while written, renamed when complete)
    emulator.db          SQLite: one row per live asset, and the signing secret

Blobs are shared: the same bytes uploaded twice are stored once and referenced by two assets
(the service itself does no dedup: each upload still gets its own asset id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosqlite

UploadStatus = Literal["WAITING", "UPLOADING", "SUCCESS", "FAILED"]
UPLOAD_STATUSES: tuple[UploadStatus, ...] = ("WAITING", "UPLOADING", "SUCCESS", "FAILED")
UploadMode = Literal["direct", "signed_url"]

# Bytes gathered in memory before one write+hash step runs in a thread: large enough that the
# thread hand-off costs little, small enough that memory stays flat.
WRITE_BUFFER_BYTES = 1024 * 1024


@dataclass
class AssetRecord:
    """One asset as the emulator knows it. Times are epoch seconds.

    ``sha256``/``size`` describe the bytes received (None while a signed-URL asset still waits
    for them). ``outcome`` is where processing will end (decided when the asset is created);
    ``waiting_s``/``uploading_s`` are the processing delays in force when the bytes arrived.
    """

    asset_id: str
    account: str
    original_filename: str  # without its extension, as the API reports it
    extension: str  # lower case, no dot ('' when the name had none)
    mode: UploadMode
    create_time_s: float
    outcome: UploadStatus
    waiting_s: float
    uploading_s: float
    sha256: str | None = None
    size: int | None = None
    received_at_s: float | None = None
    expires_at_s: float | None = None
    forced_status: UploadStatus | None = None
    forced_at_s: float | None = None

    @property
    def filename(self) -> str:
        """The original file name with its extension."""
        return (
            f"{self.original_filename}.{self.extension}"
            if self.extension
            else (self.original_filename)
        )

    def status_at(self, now_s: float) -> tuple[UploadStatus, float]:
        """Given the time, return ``(upload_status, time of the last status change)``."""
        if self.forced_status is not None and self.forced_at_s is not None:
            return self.forced_status, self.forced_at_s
        if self.received_at_s is None:
            # A signed-URL asset whose bytes never came: it fails when its URL expires.
            if self.expires_at_s is not None and now_s >= self.expires_at_s:
                return "FAILED", self.expires_at_s
            return "WAITING", self.create_time_s
        uploading_at_s = self.received_at_s + self.waiting_s
        done_at_s = uploading_at_s + self.uploading_s
        if now_s < uploading_at_s:
            return "WAITING", self.received_at_s
        if now_s < done_at_s:
            return "UPLOADING", uploading_at_s
        return self.outcome, done_at_s


_COLUMNS = tuple(f.name for f in dataclasses.fields(AssetRecord))

# Column names below are this module's constants, never input (hence the S608 waivers).
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM assets ORDER BY create_time_s, asset_id"  # noqa: S608
_UPSERT = (
    f"INSERT OR REPLACE INTO assets ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS assets (
    asset_id TEXT PRIMARY KEY,
    {", ".join(c + " ANY" for c in _COLUMNS if c != "asset_id")}
) STRICT;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
"""


class BlobWriter:
    """Receives one file's bytes in chunks: hashed and written to a temp file off the loop.

    Use :meth:`write` for each chunk, then :meth:`commit` (returns the SHA-256 and size, with
    the blob in place) or :meth:`abort` (removes the temp file). Exactly one of them must run.
    """

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.size = 0
        self._fd: int | None = None
        self._tmp_path: str | None = None

    async def open(self) -> None:
        """Create the temp file; raises OSError."""
        self._fd, self._tmp_path = await asyncio.to_thread(
            tempfile.mkstemp, suffix=".part", dir=self._store.tmp_dir
        )

    async def write(self, chunk: bytes) -> None:
        """Add a chunk; flushed to disk (and hashed) in a thread once a megabyte is gathered."""
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        self.size += len(chunk)
        if self._pending_bytes >= WRITE_BUFFER_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        await asyncio.to_thread(self._write_sync, data)

    def _write_sync(self, data: bytes) -> None:
        if self._fd is None:
            raise RuntimeError("BlobWriter.open() was not awaited")
        self._hash.update(data)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    async def commit(self) -> tuple[str, int]:
        """Finish: returns ``(sha256 hex, size)`` with the blob stored; raises OSError."""
        await self._flush()
        digest = self._hash.hexdigest()
        await asyncio.to_thread(self._commit_sync, digest)
        return digest, self.size

    def _commit_sync(self, digest: str) -> None:
        if self._fd is None or self._tmp_path is None:
            raise RuntimeError("BlobWriter.open() was not awaited")
        os.close(self._fd)
        self._fd = None
        final = self._store.blob_path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a reader sees either no blob or the whole one. Same bytes already stored:
        # replacing them with identical bytes is harmless.
        os.replace(self._tmp_path, final)
        self._tmp_path = None

    async def abort(self) -> None:
        """Drop what was received; never raises for a missing temp file."""
        self._pending.clear()
        await asyncio.to_thread(self._abort_sync)

    def _abort_sync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp_path is not None:
            try:
                os.unlink(self._tmp_path)
            except FileNotFoundError:
                pass
            self._tmp_path = None


class BlobStore:
    """Content-addressed files under ``root``. Given the data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.tmp_dir = root / "tmp"

    def prepare_sync(self) -> None:
        """Create the directories and drop temp files left by a killed emulator (blocking)."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir()

    def blob_path(self, sha256: str) -> Path:
        """Given a SHA-256 hex digest, return where its blob lives."""
        return self.blobs_dir / sha256[:2] / sha256

    def writer(self) -> BlobWriter:
        """Return a new :class:`BlobWriter`; call its ``open()`` first."""
        return BlobWriter(self)

    async def remove(self, sha256: str) -> None:
        """Delete a blob (the caller checked no asset references it); missing is fine."""

        def unlink() -> None:
            try:
                self.blob_path(sha256).unlink()
            except FileNotFoundError:
                pass

        await asyncio.to_thread(unlink)


class AssetDB:
    """Asset records persisted in SQLite. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        """Open (creating if needed) the database; raises sqlite3.Error or OSError."""
        self._db = await aiosqlite.connect(self.path)
        try:
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=NORMAL")
            await self._db.executescript(_SCHEMA)
            await self._db.commit()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the database; safe to call twice."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("asset database is not open")
        return self._db

    async def load(self) -> list[AssetRecord]:
        """Return every stored asset record, oldest first."""
        async with self._conn().execute(_SELECT) as cursor:
            rows = await cursor.fetchall()
        return [AssetRecord(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    async def save(self, record: AssetRecord) -> None:
        """Insert or replace one record, committed before returning."""
        values = dataclasses.astuple(record)
        await self._conn().execute(_UPSERT, values)
        await self._conn().commit()

    async def delete(self, asset_id: str) -> None:
        """Remove one record, committed before returning."""
        await self._conn().execute("DELETE FROM assets WHERE asset_id = ?", (asset_id,))
        await self._conn().commit()

    async def secret(self) -> bytes:
        """Return the secret that signs storage URLs, created once and kept across restarts."""
        async with self._conn().execute("SELECT value FROM meta WHERE key = 'secret'") as cursor:
            row = await cursor.fetchone()
        if row is not None:
            return bytes.fromhex(str(row[0]))
        value = secrets.token_bytes(32)
        await self._conn().execute(
            "INSERT INTO meta (key, value) VALUES ('secret', ?)", (value.hex(),)
        )
        await self._conn().commit()
        return value
