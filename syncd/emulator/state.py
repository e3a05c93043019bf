"""The emulator's live state: accounts, assets, blobs, limits, faults and the request log."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import random
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.emulator.clock import Clock, MonotonicWallClock
from syncd.emulator.faults import Fault, FaultState
from syncd.emulator.ratelimit import RateLimiter
from syncd.emulator.settings import EmulatorSettings
from syncd.emulator.store import (
    AssetDB,
    AssetRecord,
    BlobStore,
    UploadMode,
    UploadStatus,
)

# Asset ids are snowflake-like: milliseconds since this epoch, shifted left by 22 bits, plus a
# sequence number. That gives 18 digits until about 2031, like the ids the service hands out.
_ID_EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
_ID_DIGITS = 18


def key_fingerprint(key: str | None) -> str | None:
    """Given an API key (None when absent), return a non-secret label for logs: its last 4."""
    if key is None:
        return None
    if len(key) < 12:
        # Too short to be a real key: showing 4 characters of it would show most of it.
        return "*" * len(key)
    return "..." + key[-4:]


@dataclass
class RequestLogEntry:
    """One request, appended when it arrives and completed when it is answered.

    ``status`` is None while the request is in flight and when no answer was ever sent (the
    connection was reset or hung up). ``body_complete`` (uploads only) says whether the whole
    multipart body arrived; an asset is only ever created from a complete body.
    """

    seq: int
    time_s: float
    method: str
    path: str
    endpoint: str
    account: str | None
    key: str | None
    status: int | None = None
    filename: str | None = None
    body_complete: bool | None = None
    bytes_received: int | None = None
    asset_id: str | None = None
    fault: str | None = None
    throttled: bool = False  # answered the throttle status (rate limiter or throttle_for_s)
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        """Return the entry as plain data."""
        return dict(self.__dict__)


class EmulatorState:
    """Everything the running emulator knows. Given the settings and an optional clock.

    Call :meth:`start` before use and :meth:`close` at the end (the app factory does both).
    Tests may read ``assets`` and ``requests`` directly, and change ``settings`` through
    :meth:`update_settings`.
    """

    def __init__(self, settings: EmulatorSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock if clock is not None else MonotonicWallClock()
        # Not for secrets: a seedable generator makes random faults replayable.
        self.rng = random.Random(settings.seed)  # noqa: S311
        self.limiter = RateLimiter(self.clock)
        self.faults = FaultState(
            credits_remaining=settings.credits, reject_filenames=set(settings.reject_filenames)
        )
        self.assets: dict[str, AssetRecord] = {}
        self.requests: deque[RequestLogEntry] = deque(maxlen=settings.request_log_limit)
        self.shutting_down = asyncio.Event()
        self._request_seq = 0
        self._last_id = 0
        self._owned_tmp: str | None = None
        self.data_dir: Path | None = None
        self.blobs: BlobStore | None = None
        self._db: AssetDB | None = None
        self._secret = b""

    # ---------------------------------------------------------------------------------------
    # Life cycle

    async def start(self) -> None:
        """Open (or create) the data directory and load its assets; raises OSError/sqlite3."""
        if self.settings.data_dir is None:
            self._owned_tmp = await asyncio.to_thread(tempfile.mkdtemp, prefix="syncd-emulator-")
            self.data_dir = Path(self._owned_tmp)
        else:
            self.data_dir = Path(self.settings.data_dir)
        self.blobs = BlobStore(self.data_dir)
        await asyncio.to_thread(self.blobs.prepare_sync)
        self._db = AssetDB(self.data_dir / "emulator.db")
        await self._db.open()
        for record in await self._db.load():
            self.assets[record.asset_id] = record
            self._last_id = max(self._last_id, int(record.asset_id[3:]))
        self._secret = await self._db.secret()

    async def close(self) -> None:
        """Close the database; remove the data directory if it was a temporary one."""
        self.shutting_down.set()
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()
        if self._owned_tmp is not None:
            await asyncio.to_thread(shutil.rmtree, self._owned_tmp, True)
            self._owned_tmp = None

    def _store(self) -> tuple[BlobStore, AssetDB]:
        if self.blobs is None or self._db is None:
            raise RuntimeError("the emulator state is not started")
        return self.blobs, self._db

    # ---------------------------------------------------------------------------------------
    # Settings, accounts, request log

    def update_settings(self, **changes: Any) -> EmulatorSettings:
        """Change settings while running; returns the new settings; raises ConfigError.

        A partial ``rates`` mapping changes only the endpoints it names. Processing delays
        apply to assets whose bytes arrive afterwards.
        """
        if "rates" in changes:
            changes["rates"] = {**self.settings.rates, **changes["rates"]}
        self.settings = self.settings.replace(**changes)
        if "seed" in changes:
            self.rng.seed(self.settings.seed)
        if "credits" in changes:
            self.faults.credits_remaining = self.settings.credits
        if "reject_filenames" in changes:
            self.faults.reject_filenames = set(self.settings.reject_filenames)
        return self.settings

    def account_for(self, key: str | None) -> str | None:
        """Given the Authorization header value, return its account, or None if not valid."""
        if key is None:
            return None
        return self.settings.keys.get(key)

    def log_request(
        self, method: str, path: str, endpoint: str, key: str | None
    ) -> RequestLogEntry:
        """Append a log entry for a request that just arrived and return it."""
        self._request_seq += 1
        entry = RequestLogEntry(
            seq=self._request_seq,
            time_s=self.clock(),
            method=method,
            path=path,
            endpoint=endpoint,
            account=self.account_for(key),
            key=key_fingerprint(key),
        )
        self.requests.append(entry)
        return entry

    def random_fault(self) -> tuple[Fault | None, float]:
        """Draw this request's probabilistic fault and added latency (seconds).

        Always draws the same number of random values per request, so a seeded run replays
        exactly for the same sequence of requests.
        """
        s = self.settings
        draws = [self.rng.random() for _ in range(4)]
        latency_s = s.latency_s if draws[3] < s.latency_rate else 0.0
        if draws[0] < s.error_rate:
            return Fault("status", "random", status=s.error_status), latency_s
        if draws[1] < s.reset_rate:
            return Fault("reset", "random"), latency_s
        if draws[2] < s.hang_rate:
            return Fault("hang", "random"), latency_s
        return None, latency_s

    # ---------------------------------------------------------------------------------------
    # Assets

    def new_asset_id(self) -> str:
        """Return a fresh ``re_`` + 18 digit asset id, never handed out before by this store."""
        now_ms = max(0, int(self.clock() * 1000) - _ID_EPOCH_MS)
        candidate = (now_ms << 22) % (10**_ID_DIGITS)
        self._last_id = max(candidate, self._last_id + 1)
        return f"re_{self._last_id:0{_ID_DIGITS}d}"

    def _decide_outcome(self) -> UploadStatus:
        # Both draws always happen, so the random sequence does not depend on the counter.
        failed_by_chance = self.rng.random() < self.settings.fail_fraction
        if self.faults.take_fail_processing() or failed_by_chance:
            return "FAILED"
        return "SUCCESS"

    def _new_record(self, account: str, filename: str, mode: UploadMode) -> AssetRecord:
        stem, dot, ext = filename.rpartition(".")
        if not dot or not stem:
            stem, ext = filename, ""
        now_s = self.clock()
        return AssetRecord(
            asset_id=self.new_asset_id(),
            account=account,
            original_filename=stem,
            extension=ext.lower(),
            mode=mode,
            create_time_s=now_s,
            outcome=self._decide_outcome(),
            waiting_s=self.settings.waiting_s,
            uploading_s=self.settings.uploading_s,
        )

    async def create_direct_asset(
        self, account: str, filename: str, sha256: str, size: int
    ) -> AssetRecord:
        """Record a direct upload whose bytes are stored; returns the new asset (persisted)."""
        _, db = self._store()
        record = self._new_record(account, filename, "direct")
        record.sha256, record.size, record.received_at_s = sha256, size, record.create_time_s
        self.assets[record.asset_id] = record
        await db.save(record)
        return record

    async def allocate_signed(self, account: str, filename: str) -> AssetRecord:
        """Allocate a signed-URL asset (WAITING for its bytes); returns it (persisted)."""
        _, db = self._store()
        record = self._new_record(account, filename, "signed_url")
        # Whole seconds: the URL carries the expiry as an integer, like storage URLs do.
        record.expires_at_s = float(
            math.floor(record.create_time_s + self.settings.signed_url_ttl_s)
        )
        self.assets[record.asset_id] = record
        await db.save(record)
        return record

    async def receive_signed(self, record: AssetRecord, sha256: str, size: int) -> None:
        """Attach received bytes to a signed-URL asset; its processing starts now."""
        _, db = self._store()
        old_sha = record.sha256
        record.sha256, record.size, record.received_at_s = sha256, size, self.clock()
        record.waiting_s, record.uploading_s = self.settings.waiting_s, self.settings.uploading_s
        await db.save(record)
        if old_sha is not None and old_sha != sha256:
            await self._drop_blob_if_unused(old_sha)

    def visible_asset(self, asset_id: str, account: str) -> AssetRecord | None:
        """Return the asset if it exists and this account may see it, else None."""
        record = self.assets.get(asset_id)
        if record is None:
            return None
        if record.account != account and not self.settings.share_assets_across_accounts:
            return None
        return record

    async def delete_asset(self, record: AssetRecord) -> None:
        """Delete an asset and, if no other asset has the same bytes, its blob."""
        _, db = self._store()
        self.assets.pop(record.asset_id, None)
        await db.delete(record.asset_id)
        if record.sha256 is not None:
            await self._drop_blob_if_unused(record.sha256)

    async def _drop_blob_if_unused(self, sha256: str) -> None:
        blobs, _ = self._store()
        if not any(a.sha256 == sha256 for a in self.assets.values()):
            await blobs.remove(sha256)

    async def force_status(self, record: AssetRecord, status: UploadStatus | None) -> None:
        """Pin an asset's status (None lets it follow its normal course again)."""
        _, db = self._store()
        record.forced_status = status
        record.forced_at_s = None if status is None else self.clock()
        await db.save(record)

    def blob_path(self, record: AssetRecord) -> Path | None:
        """Return the path of the asset's bytes, or None if none were received."""
        blobs, _ = self._store()
        return None if record.sha256 is None else blobs.blob_path(record.sha256)

    def asset_json(self, record: AssetRecord) -> dict[str, Any]:
        """Return the inspection view of one asset (``/_emulator/assets``)."""
        status, modified_s = record.status_at(self.clock())
        return {
            "asset_id": record.asset_id,
            "account": record.account,
            "sha256": record.sha256,
            "size": record.size,
            "filename": record.filename,
            "original_filename": record.original_filename,
            "extension": record.extension,
            "mode": record.mode,
            "upload_status": status,
            "create_time_s": record.create_time_s,
            "modify_time_s": modified_s,
            "received_at_s": record.received_at_s,
            "expires_at_s": record.expires_at_s,
            "forced_status": record.forced_status,
        }

    def metadata_json(self, record: AssetRecord) -> dict[str, Any]:
        """Return the asset as ``GET /{asset_id}/metadata`` reports it (strings for numbers)."""
        status, modified_s = record.status_at(self.clock())
        return {
            "extension": record.extension,
            "asset_id": record.asset_id,
            "original_filename": record.original_filename,
            "file_size": str(record.size or 0),
            "upload_status": status,
            "create_time": str(int(record.create_time_s * 1000)),
            "modify_time": str(int(modified_s * 1000)),
        }

    # ---------------------------------------------------------------------------------------
    # Signed storage URLs

    def sign(self, asset_id: str, expires_s: int) -> str:
        """Return the HMAC signature of a storage URL for this asset and expiry."""
        message = f"{asset_id}:{expires_s}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signature_ok(self, asset_id: str, expires_s: int, sig: str) -> bool:
        """Return True when ``sig`` is the signature of this asset id and expiry."""
        return hmac.compare_digest(self.sign(asset_id, expires_s), sig)
