"""Upload workers: take due contents from the ledger, send them, record the answer.

A dispatcher claims due contents from the ledger into a small bounded queue; ``workers`` tasks
upload them, each request start passing through the shared pacer. Every outcome is recorded in
the ledger before anything depends on it: the asset id is committed only after the API answered
with it for exactly the content's bytes (hashed as they streamed, the file stat-ed around the
upload). The client only classifies; the dispatcher (``dispatcher.py``) claims; the retry
policy (backoff, the ambiguous 400, auth and credit pauses) is decided by ``policy.py`` and
written, with every other outcome, by ``outcomes.py``. This module sends: the two upload modes
(direct, and signed URL with its resume rules) and the workers' lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable

from syncd import events
from syncd.chunksums import ChunkSums, ChunkSumsCache
from syncd.config import Config
from syncd.display import display_path
from syncd.errors import (
    ApiAlreadyStored,
    ApiError,
    ApiNotFound,
    ClaimLost,
    SignedUrlExpired,
)
from syncd.failpoints import failpoint
from syncd.fingerprint import Fingerprint
from syncd.ledger.records import Content, Job
from syncd.ledger.store import UploadLedger
from syncd.metrics import Metrics
from syncd.upload.client import BytesChanged, MaviClient, UploadResult
from syncd.upload.dispatcher import Dispatcher, UploaderState
from syncd.upload.outcomes import Outcomes, Resettle
from syncd.upload.pacer import Pacer
from syncd.upload.policy import RetryLater

log = logging.getLogger(__name__)


class _Finisher:
    """Holds the uploader's finish lock from an upload's last bytes until its commit."""

    def __init__(self, lock: asyncio.Lock, ledger: UploadLedger, attempt_id: int) -> None:
        self._lock = lock
        self._ledger = ledger
        self._attempt_id = attempt_id
        self.entered = False
        self.lost: ClaimLost | None = None

    async def enter(self) -> None:
        await self._lock.acquire()
        self.entered = True
        try:
            await self._ledger.mark_finishing(self._attempt_id)
        except ClaimLost as exc:
            # The last bytes must not leave: raising here aborts the body mid-way, so the
            # service never holds a complete file. Kept for the caller, whatever the HTTP
            # client makes of the exception.
            self.entered = False
            self._lock.release()
            self.lost = exc
            raise

    def leave(self) -> None:
        if self.entered:
            self.entered = False
            self._lock.release()


class Uploader:
    """The dispatcher plus ``cfg.upload.workers`` worker tasks, and the two upload modes.

    Given the config, the open ledger, the client, the shared pacer and metrics, plus
    ``resettle`` (where a file whose bytes changed under an upload goes back to settling, and
    how long that takes at least) and ``on_uploaded()`` (called after an asset id is committed:
    the daemon points it at the poller), and optionally where the ingest stage keeps the
    per-chunk checksums of the contents it hashed (``chunk_sums``): an upload that finds its
    content's there checks every chunk it sends against them instead of hashing the body with
    SHA-256 again.
    """

    def __init__(
        self,
        cfg: Config,
        ledger: UploadLedger,
        client: MaviClient,
        pacer: Pacer,
        metrics: Metrics,
        *,
        resettle: Resettle,
        on_uploaded: Callable[[], None] = lambda: None,
        chunk_sums: ChunkSumsCache | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.client = client
        self.pacer = pacer
        self.metrics = metrics
        self.resettle = resettle
        self.on_uploaded = on_uploaded
        self.chunk_sums = chunk_sums
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.clock = clock
        self.state = UploaderState()
        self.dispatcher = Dispatcher(
            ledger, self.state, slots=cfg.upload.workers, clock=clock, order=cfg.upload.order
        )
        self.outcomes = Outcomes(
            cfg,
            ledger,
            pacer,
            metrics,
            self.state,
            resettle=resettle,
            on_uploaded=on_uploaded,
            chunk_sums=chunk_sums,
            rng=self.rng,
            clock=clock,
        )
        self.stats = self.outcomes.stats
        # Uploads past their first ledger write (a request is about to start or running):
        # shutdown waits for these; workers still waiting for the pacer are simply cancelled.
        self._active: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()  # set whenever no upload is in flight
        self._idle.set()
        self._finish_lock = asyncio.Lock()  # see _upload_direct: one finisher at a time

    # ------------------------------------------------------------ dispatcher

    def wake(self) -> None:
        """Something became due (a new content, an operator retry): look at the ledger now."""
        self.dispatcher.wake()

    def stop_intake(self) -> None:
        """Shutdown step one: claim nothing new."""
        self.dispatcher.stop_intake()

    def queue_depth(self) -> int:
        """Contents claimed but not yet started."""
        return self.dispatcher.queue_depth()

    async def dispatch(self) -> None:
        """Claim due contents into the bounded queue until intake stops."""
        await self.dispatcher.run()

    # ------------------------------------------------------------ workers

    async def work(self) -> None:
        """One worker: upload queued contents until cancelled or told to drain."""
        while True:
            job = await self.dispatcher.get()
            try:
                await self.upload(job)
            finally:
                self.dispatcher.finished(job)

    async def drain(self, grace_s: float, workers: list[asyncio.Task[None]]) -> int:
        """Shutdown: drop queued (not started) jobs, wait ``grace_s`` for in-flight uploads.

        Returns how many uploads were still running and had to be cancelled.
        """
        self.dispatcher.drop_queued()
        pending = len(self._active)
        if pending:
            log.info("waiting up to %.0f s for %d in-flight upload(s)", grace_s, pending)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
            pending = len(self._active)
        for t in workers:
            t.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        return pending

    async def upload(self, job: Job) -> None:
        """Upload one content and record the outcome; never raises except cancellation."""
        task = asyncio.current_task()
        try:
            await self._upload(job)
        except asyncio.CancelledError:
            raise
        except ClaimLost as exc:
            # Fleet ledger: another host took this content over while this one waited (frozen,
            # cut off from the ledger past its lease). Nothing more is sent; it is theirs now.
            log.warning("%s", exc)
        except Exception:
            # A bug, not an API answer: keep the daemon alive, retry the content later.
            log.exception("internal error uploading %s", _short(job.content.sha256))
            await self.outcomes.apply(
                job.content.sha256,
                None,
                RetryLater(
                    "internal_error",
                    "internal error (see the daemon log)",
                    self.cfg.upload.backoff_max_s,
                ),
            )
        finally:
            events.publish("upload_ended", path=job.path, sha256=job.content.sha256)
            if task is not None:
                self._active.discard(task)
                if not self._active:
                    self._idle.set()

    def _in_flight(self) -> None:
        """The current task's upload has begun: shutdown lets it finish within the grace."""
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
            self._idle.clear()

    def _mode_for(self, content: Content) -> str:
        mode = self.cfg.api.upload_mode
        if content.state == "allocated" and content.asset_id:
            return "signed_url"
        if mode == "auto":
            return "signed_url" if content.size >= self.cfg.api.signed_url_min_bytes else "direct"
        return mode

    async def _upload(self, job: Job) -> None:
        content = job.content
        path = job.path
        if path is None:
            return
        # The file must still be what was hashed: otherwise it goes back to settling.
        try:
            now_fp = await asyncio.to_thread(Fingerprint.stat, path)
        except OSError as exc:
            error = f"{display_path(path)}: {exc.strerror or exc}"
            await self.outcomes.file_unavailable(path, exc, again=content.last_error == error)
            await self.outcomes.apply(
                content.sha256,
                None,
                RetryLater(
                    "file_error",
                    error,
                    self.cfg.upload.backoff_initial_s,
                    count_attempt=False,
                    keep_allocation=content.state == "allocated",
                ),
            )
            return
        if job.fingerprint is not None and now_fp != job.fingerprint:
            log.info("%s changed since it was hashed; settling it again", display_path(path))
            await self.outcomes.apply(
                content.sha256,
                None,
                RetryLater(
                    "changed",
                    "file changed since it was hashed",
                    self.resettle.settle_delay_s,
                    count_attempt=False,
                    keep_allocation=content.state == "allocated",
                ),
            )
            await self.resettle.resettle(path)
            return
        pause = self.state.pause
        if pause is not None and pause.probe != content.sha256:
            # Claimed before the pause began: put it back untouched, send nothing.
            await self.outcomes.apply(
                content.sha256,
                None,
                RetryLater(
                    "paused",
                    pause.reason,
                    pause.until - self.clock(),
                    count_attempt=False,
                    keep_allocation=content.state == "allocated",
                ),
            )
            return
        shaper = self.client.shaper
        if shaper is not None:
            # A zero-rate window of upload.schedule: no upload starts until it ends.
            await shaper.wait_open()
        mode = self._mode_for(content)
        verify = (
            self.chunk_sums.get(content.sha256, now_fp) if self.chunk_sums is not None else None
        )
        if mode == "signed_url":
            await self._upload_signed(content, path, now_fp, verify)
        else:
            await self._upload_direct(content, path, now_fp, verify)

    async def _upload_direct(
        self, content: Content, path: str, before: Fingerprint, verify: ChunkSums | None
    ) -> None:
        await self.pacer.acquire("upload")
        self._in_flight()
        attempt = await self.ledger.begin_attempt(content.sha256, path, "direct")
        failpoint("attempt_started")
        t0 = time.monotonic()
        # One finisher at a time: bodies stream concurrently, but only one upload at a time
        # sends its last bytes and holds the window until its outcome is committed. A crash
        # can then leave at most one complete body without a recorded answer: at most one
        # remote duplicate per crash, the bound the API's lack of idempotency allows.
        finisher = _Finisher(self._finish_lock, self.ledger, attempt)
        try:
            try:
                result = await self.client.upload(
                    path,
                    filename=os.path.basename(path),
                    expected=before,
                    verify=verify,
                    before_last_bytes=finisher.enter,
                    # The API counts arrivals: keep the spacing from when the request left.
                    on_headers_sent=lambda: self.pacer.sent("upload"),
                )
            except asyncio.CancelledError:
                # A body that was complete may have reached the API and its answer been lost.
                await self.outcomes.interrupted(
                    content.sha256,
                    attempt,
                    keep_allocation=False,
                    possible_duplicate=finisher.entered,
                )
                raise
            except ApiError as exc:
                if finisher.lost is not None:
                    raise finisher.lost from None
                self.metrics.inc("syncd_requests_total", endpoint="upload", status=_status(exc))
                await self.outcomes.api_failure(content, attempt, "upload", "direct", exc)
                return
            except BytesChanged as exc:
                await self.outcomes.changed_during_upload(content, attempt, path, exc)
                return
            except OSError as exc:
                if finisher.lost is not None:
                    raise finisher.lost from None
                await self.outcomes.unreadable_during_upload(content, attempt, path, exc)
                return
            failpoint("answered")
            self.metrics.inc(
                "syncd_requests_total", endpoint="upload", status=str(result.http_status)
            )
            self.pacer.succeeded("upload")
            # The window ends as soon as the outcome is committed, not after the log line
            # and the metrics that follow it.
            await self.outcomes.uploaded(
                content,
                attempt,
                path,
                before,
                result,
                time.monotonic() - t0,
                "upload",
                recorded=finisher.leave,
            )
        finally:
            finisher.leave()

    async def _upload_signed(
        self, content: Content, path: str, before: Fingerprint, verify: ChunkSums | None
    ) -> None:
        now = self.clock()
        asset_id, url = content.asset_id, content.signed_url
        expires = content.signed_url_expires_at or 0.0
        resuming = bool(asset_id and url and expires > now + 60)
        if resuming and asset_id is not None:
            # An earlier send to this URL may have landed before a crash: ask before resending.
            status = await self._peek_status(asset_id)
            if status is not None and status != "WAITING":
                self._in_flight()
                attempt = await self.ledger.begin_attempt(
                    content.sha256, path, "signed_url", asset_id
                )
                await self.ledger.finish_upload(
                    content.sha256,
                    attempt,
                    asset_id,
                    bytes_sent=0,
                    http_status=None,
                    next_poll_at=self.clock(),
                )
                self.on_uploaded()
                log.info(
                    "%s: asset %s already received its bytes", _short(content.sha256), asset_id
                )
                return
            self._in_flight()
            attempt = await self.ledger.begin_attempt(content.sha256, path, "signed_url", asset_id)
        else:
            if asset_id is not None:
                # The URL expired unused: that asset never gets bytes (the service fails it).
                await self.ledger.supersede(
                    content.sha256,
                    None,
                    asset_id,
                    sent_sha256=None,
                    path=None,
                    reason="signed URL expired before the upload",
                )
            await self.pacer.acquire("signed_url")
            self._in_flight()
            attempt = await self.ledger.begin_attempt(content.sha256, path, "signed_url")
            self.pacer.sent("signed_url")  # spacing from the request, not from the grant
            try:
                signed = await self.client.allocate_signed_url(os.path.basename(path))
            except asyncio.CancelledError:
                await self.outcomes.interrupted(
                    content.sha256, attempt, keep_allocation=False, possible_duplicate=False
                )
                raise
            except ApiError as exc:
                self.metrics.inc("syncd_requests_total", endpoint="signed_url", status=_status(exc))
                await self.outcomes.api_failure(content, attempt, "signed_url", "signed_url", exc)
                return
            failpoint("allocated")
            self.metrics.inc("syncd_requests_total", endpoint="signed_url", status="200")
            self.pacer.succeeded("signed_url")
            # Committed before any byte moves: a crash can never leave an untracked asset.
            await self.ledger.allocate(
                content.sha256, signed.asset_id, signed.url, signed.expires_at, attempt
            )
            asset_id, url = signed.asset_id, signed.url
        assert asset_id is not None and url is not None  # noqa: S101 - set on both branches
        await self.ledger.mark_sending(content.sha256)
        t0 = time.monotonic()
        try:
            result = await self.client.upload_to_signed_url(
                url, path, filename=os.path.basename(path), expected=before, verify=verify
            )
        except asyncio.CancelledError:
            await self.outcomes.interrupted(
                content.sha256, attempt, keep_allocation=True, possible_duplicate=False
            )
            raise
        except SignedUrlExpired as exc:
            await self.ledger.supersede(
                content.sha256,
                attempt,
                asset_id,
                sent_sha256=None,
                path=path,
                reason=f"signed URL refused as expired: {exc}",
            )
            self.wake()
            return
        except ApiAlreadyStored as exc:
            self.metrics.inc("syncd_requests_total", endpoint="storage", status=_status(exc))
            # An earlier send (before a crash, or one whose answer was lost) delivered the
            # bytes. The poller confirms the asset's final status.
            await self.ledger.finish_upload(
                content.sha256,
                attempt,
                asset_id,
                bytes_sent=0,
                http_status=exc.status,
                next_poll_at=self.clock(),
            )
            self.on_uploaded()
            log.info("%s: asset %s already had its bytes", _short(content.sha256), asset_id)
            return
        except ApiError as exc:
            self.metrics.inc("syncd_requests_total", endpoint="storage", status=_status(exc))
            await self.outcomes.api_failure(
                content, attempt, "storage", "signed_url", exc, keep_allocation=True
            )
            return
        except BytesChanged as exc:
            await self.outcomes.changed_during_upload(
                content, attempt, path, exc, keep_allocation=True
            )
            return
        except OSError as exc:
            await self.outcomes.unreadable_during_upload(
                content, attempt, path, exc, keep_allocation=True
            )
            return
        failpoint("stored")
        self.metrics.inc("syncd_requests_total", endpoint="storage", status=str(result.http_status))
        result = UploadResult(asset_id, result.sha256, result.bytes_sent, result.http_status)
        await self.outcomes.uploaded(
            content, attempt, path, before, result, time.monotonic() - t0, "storage"
        )

    async def _peek_status(self, asset_id: str) -> str | None:
        await self.pacer.acquire("metadata")
        try:
            status = await self.client.metadata(asset_id)
        except ApiNotFound:
            return None
        except ApiError as exc:
            log.info("cannot check asset %s before resuming (%s); resending", asset_id, exc)
            return None
        self.pacer.succeeded("metadata")
        return status.upload_status


def _status(exc: ApiError) -> str:
    return str(exc.status) if exc.status is not None else "error"


def _short(sha256: str) -> str:
    return sha256[:12]
