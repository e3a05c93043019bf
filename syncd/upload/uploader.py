"""Upload workers: take due contents from the ledger, send them, record the answer.

A dispatcher claims due contents from the ledger into a small bounded queue; ``workers`` tasks
upload them, each request start passing through the shared pacer. Every outcome is recorded in
the ledger before anything depends on it: the asset id is committed only after the API answered
with it for exactly the content's bytes (hashed as they streamed, the file stat-ed around the
upload). The retry policy (backoff, the ambiguous 400, auth and credit pauses) lives here; the
client only classifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from syncd import events
from syncd.config import Config
from syncd.errors import (
    ApiAuthError,
    ApiError,
    ApiNoCredits,
    ApiNotFound,
    ApiPermanent,
    ApiRetryable,
    ApiThrottled,
    ClaimLost,
    SignedUrlExpired,
)
from syncd.failpoints import failpoint
from syncd.fingerprint import Fingerprint
from syncd.ledger.records import Content, Job
from syncd.ledger.store import UploadLedger
from syncd.metrics import Metrics
from syncd.upload.client import MaviClient, UploadResult
from syncd.upload.pacer import Pacer

log = logging.getLogger(__name__)


@dataclass
class UploadStats:
    """Counters for the shutdown summary and ``syncd status``."""

    uploaded: int = 0
    retried: int = 0
    throttled: int = 0
    rejected: int = 0
    failed: int = 0
    superseded: int = 0
    interrupted: int = 0
    bytes_sent: int = 0


@dataclass
class Pause:
    """An account-wide stop on uploads (bad key, no credits), probed slowly.

    When ``until`` passes, the dispatcher hands out exactly one content (the probe); its
    success lifts the pause, its failure doubles it.
    """

    reason: str = ""
    until: float = 0.0
    delay_s: float = 0.0
    kind: str = ""
    probe: str | None = None  # sha256 of the content probing now


@dataclass
class UploaderState:
    """What other parts of the daemon may read: health and in-flight work."""

    in_flight: set[str] = field(default_factory=set)
    pause: Pause | None = None
    healthy: bool = True
    reason: str = ""


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


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter in its upper half: attempt 1 waits ~initial_s."""
    base = min(max_s, initial_s * 2.0 ** max(0, attempt - 1))
    return min(max_s, base * (0.5 + rng.random() * 0.5))


class Uploader:
    """Dispatcher plus ``cfg.upload.workers`` worker tasks.

    Given the config, the open ledger, the client, the shared pacer and metrics, plus
    ``on_changed(path)``: called when a file's bytes changed under an upload, so the daemon can
    send it back to settling.
    """

    def __init__(
        self,
        cfg: Config,
        ledger: UploadLedger,
        client: MaviClient,
        pacer: Pacer,
        metrics: Metrics,
        *,
        on_changed: Callable[[str], Awaitable[None]],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.client = client
        self.pacer = pacer
        self.metrics = metrics
        self.on_changed = on_changed
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.clock = clock
        self.stats = UploadStats()
        self.state = UploaderState()
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=cfg.upload.workers)
        self._wake = asyncio.Event()
        self._intake_open = True
        # Uploads past their first ledger write (a request is about to start or running):
        # shutdown waits for these; workers still waiting for the pacer are simply cancelled.
        self._active: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()  # set whenever no upload is in flight
        self._idle.set()
        self._finish_lock = asyncio.Lock()  # see _upload_direct: one finisher at a time
        # Called after an asset id is committed (the daemon points it at the poller).
        self.on_uploaded: Callable[[], None] = lambda: None

    # ------------------------------------------------------------ dispatcher

    def wake(self) -> None:
        """Something became due (a new content, an operator retry): look at the ledger now."""
        self._wake.set()

    def stop_intake(self) -> None:
        """Shutdown step one: claim nothing new."""
        self._intake_open = False
        self._wake.set()

    def queue_depth(self) -> int:
        """Contents claimed but not yet started."""
        return self._queue.qsize()

    async def dispatch(self) -> None:
        """Claim due contents into the bounded queue until intake stops."""
        while self._intake_open:
            pause = self.state.pause
            now = self.clock()
            if pause is not None:
                if now < pause.until:
                    await self._sleep_or_wake(pause.until - now)
                elif pause.probe is None:
                    probes = await self.ledger.due_jobs(
                        1, exclude=self.state.in_flight, order=self.cfg.upload.order
                    )
                    if not probes:
                        await self._sleep_or_wake(1.0)
                        continue
                    probe = probes[0]
                    pause.probe = probe.content.sha256
                    self.state.in_flight.add(probe.content.sha256)
                    log.info("probing the API with one upload (%s)", pause.reason)
                    await self._queue.put(probe)
                else:
                    await self._sleep_or_wake(1.0)
                continue
            free = self._queue.maxsize - self._queue.qsize()
            jobs: list[Job] = []
            if free > 0:
                jobs = await self.ledger.due_jobs(
                    free, exclude=self.state.in_flight, order=self.cfg.upload.order
                )
            for job in jobs:
                self.state.in_flight.add(job.content.sha256)
                await self._queue.put(job)
            if jobs and free > len(jobs):
                continue
            if free <= 0 or jobs:
                await self._sleep_or_wake(1.0)  # the queue is full: a worker will wake us
                continue
            next_due = await self.ledger.next_due_at()
            # Re-check at least every 30 s: an operator may re-queue rows from another process.
            delay = 30.0 if next_due is None else min(30.0, max(0.05, next_due - self.clock()))
            await self._sleep_or_wake(delay)

    async def _sleep_or_wake(self, delay_s: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay_s)

    # ------------------------------------------------------------ workers

    async def work(self) -> None:
        """One worker: upload queued contents until cancelled or told to drain."""
        while True:
            job = await self._queue.get()
            try:
                await self.upload(job)
            finally:
                pause = self.state.pause
                if pause is not None and pause.probe == job.content.sha256:
                    pause.probe = None  # the probe is over, whatever its outcome
                self.state.in_flight.discard(job.content.sha256)
                self._queue.task_done()
                self._wake.set()

    async def drain(self, grace_s: float, workers: list[asyncio.Task[None]]) -> int:
        """Shutdown: drop queued (not started) jobs, wait ``grace_s`` for in-flight uploads.

        Returns how many uploads were still running and had to be cancelled.
        """
        while not self._queue.empty():
            job = self._queue.get_nowait()
            self.state.in_flight.discard(job.content.sha256)
            self._queue.task_done()
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
            await self.ledger.retry_later(
                job.content.sha256,
                None,
                outcome="internal_error",
                error="internal error (see the daemon log)",
                next_attempt_at=self.clock() + self.cfg.upload.backoff_max_s,
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
            error = f"{_display(path)}: {exc.strerror or exc}"
            await self._file_unavailable(path, exc, again=content.last_error == error)
            await self.ledger.retry_later(
                content.sha256,
                None,
                outcome="file_error",
                error=error,
                next_attempt_at=self.clock() + self.cfg.upload.backoff_initial_s,
                count_attempt=False,
                keep_allocation=content.state == "allocated",
            )
            return
        if job.fingerprint is not None and now_fp != job.fingerprint:
            log.info("%s changed since it was hashed; settling it again", _display(path))
            await self.ledger.retry_later(
                content.sha256,
                None,
                outcome="changed",
                error="file changed since it was hashed",
                next_attempt_at=self.clock() + self.cfg.settle.quiet_s + 1,
                count_attempt=False,
                keep_allocation=content.state == "allocated",
            )
            await self.on_changed(path)
            return
        pause = self.state.pause
        if pause is not None and pause.probe != content.sha256:
            # Claimed before the pause began: put it back untouched, send nothing.
            await self.ledger.retry_later(
                content.sha256,
                None,
                outcome="paused",
                error=pause.reason,
                next_attempt_at=pause.until,
                count_attempt=False,
                keep_allocation=content.state == "allocated",
            )
            return
        shaper = self.client.shaper
        if shaper is not None:
            # A zero-rate window of upload.schedule: no upload starts until it ends.
            await shaper.wait_open()
        mode = self._mode_for(content)
        if mode == "signed_url":
            await self._upload_signed(content, path, now_fp)
        else:
            await self._upload_direct(content, path, now_fp)

    async def _upload_direct(self, content: Content, path: str, before: Fingerprint) -> None:
        await self.pacer.acquire("upload")
        started = self.clock()
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
                    before_last_bytes=finisher.enter,
                    # The API counts arrivals: keep the spacing from when the request left.
                    on_headers_sent=lambda: self.pacer.sent("upload"),
                )
            except asyncio.CancelledError:
                # A body that was complete may have reached the API and its answer been lost.
                await self._interrupted(
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
                await self._api_failure(content, attempt, "upload", "direct", exc, started)
                return
            except OSError as exc:
                if finisher.lost is not None:
                    raise finisher.lost from None
                await self._unreadable_during_upload(content, attempt, path, exc)
                return
            failpoint("answered")
            self.metrics.inc(
                "syncd_requests_total", endpoint="upload", status=str(result.http_status)
            )
            self.pacer.succeeded("upload")
            await self._uploaded(
                content, attempt, path, before, result, time.monotonic() - t0, "upload"
            )
        finally:
            finisher.leave()

    async def _upload_signed(self, content: Content, path: str, before: Fingerprint) -> None:
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
                await self._interrupted(
                    content.sha256, attempt, keep_allocation=False, possible_duplicate=False
                )
                raise
            except ApiError as exc:
                self.metrics.inc("syncd_requests_total", endpoint="signed_url", status=_status(exc))
                await self._api_failure(content, attempt, "signed_url", "signed_url", exc, now)
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
                url, path, filename=os.path.basename(path), expected=before
            )
        except asyncio.CancelledError:
            await self._interrupted(
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
        except ApiPermanent as exc:
            self.metrics.inc("syncd_requests_total", endpoint="storage", status=_status(exc))
            if exc.status != 409:
                await self._api_failure(
                    content, attempt, "storage", "signed_url", exc, now, keep_allocation=True
                )
                return
            # 409: the asset is past WAITING, so an earlier send (before a crash, or one whose
            # answer was lost) delivered the bytes. The poller confirms its final status.
            await self.ledger.finish_upload(
                content.sha256,
                attempt,
                asset_id,
                bytes_sent=0,
                http_status=409,
                next_poll_at=self.clock(),
            )
            self.on_uploaded()
            log.info("%s: asset %s already had its bytes", _short(content.sha256), asset_id)
            return
        except ApiError as exc:
            self.metrics.inc("syncd_requests_total", endpoint="storage", status=_status(exc))
            await self._api_failure(
                content, attempt, "storage", "signed_url", exc, now, keep_allocation=True
            )
            return
        except OSError as exc:
            await self._unreadable_during_upload(content, attempt, path, exc, keep_allocation=True)
            return
        failpoint("stored")
        self.metrics.inc("syncd_requests_total", endpoint="storage", status=str(result.http_status))
        result = UploadResult(asset_id, result.sha256, result.bytes_sent, result.http_status)
        await self._uploaded(
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

    async def _uploaded(
        self,
        content: Content,
        attempt: int,
        path: str,
        before: Fingerprint,
        result: UploadResult,
        duration_s: float,
        via: str,
    ) -> None:
        asset_id = result.asset_id
        assert asset_id is not None  # noqa: S101 - the client never returns success without one
        try:
            after: Fingerprint | None = await asyncio.to_thread(Fingerprint.stat, path)
        except OSError:
            after = None
        if result.sha256 != content.sha256 or after != before:
            why = (
                "the bytes sent do not hash to the content"
                if result.sha256 != content.sha256
                else "the file changed during the upload"
            )
            log.warning(
                "%s: %s; asset %s kept as superseded, settling the file again",
                _display(path),
                why,
                asset_id,
            )
            await self.ledger.supersede(
                content.sha256,
                attempt,
                asset_id,
                sent_sha256=result.sha256,
                path=path,
                reason=why,
            )
            self.stats.superseded += 1
            self.metrics.inc("syncd_uploads_total", outcome="superseded")
            await self.on_changed(path)
            return
        await self.ledger.finish_upload(
            content.sha256,
            attempt,
            asset_id,
            bytes_sent=result.bytes_sent,
            http_status=result.http_status,
            next_poll_at=self.clock() + self.cfg.poll.initial_s,
        )
        self.on_uploaded()
        events.publish(
            "upload_finished",
            path=path,
            sha256=content.sha256,
            asset_id=asset_id,
            bytes_sent=result.bytes_sent,
        )
        self.stats.uploaded += 1
        self.stats.bytes_sent += result.bytes_sent
        self.metrics.inc("syncd_uploads_total", outcome="ok")
        self.metrics.inc("syncd_bytes_uploaded_total", result.bytes_sent)
        self.metrics.observe("syncd_upload_duration_seconds", duration_s)
        self._resume_if_paused()
        log.info(
            "uploaded %s sha256=%s asset=%s attempt=%d %.2fs %d bytes via %s",
            _display(path),
            _short(content.sha256),
            asset_id,
            content.attempts + 1,
            duration_s,
            result.bytes_sent,
            via,
        )

    def _resume_if_paused(self) -> None:
        if self.state.pause is not None:
            log.info("uploads resumed: %s is resolved", self.state.pause.kind)
            self.state.pause = None
            self.state.healthy = True
            self.state.reason = ""

    def _set_pause(self, kind: str, reason: str) -> tuple[float, bool]:
        """Pause all uploads; returns (seconds until the probe, whether this is news).

        One probe after the pause; the pause doubles per failed probe up to the cap, so a
        broken key or an empty account costs a request every few minutes, not a storm.
        """
        pause = self.state.pause
        cfg = self.cfg.upload
        if pause is not None and self.clock() < pause.until:
            # Another worker's answer to the same problem, already reported.
            return pause.until - self.clock(), False
        delay = cfg.pause_initial_s if pause is None else min(cfg.pause_max_s, pause.delay_s * 2)
        self.state.pause = Pause(reason, self.clock() + delay, delay, kind)
        self.state.healthy = kind != "auth"
        self.state.reason = reason
        return delay, True

    async def _api_failure(
        self,
        content: Content,
        attempt: int,
        endpoint: str,
        mode: str,
        exc: ApiError,
        started: float,
        *,
        keep_allocation: bool = False,
    ) -> None:
        cfg = self.cfg.upload
        sha = content.sha256
        now = self.clock()
        if isinstance(exc, ApiThrottled):
            self.stats.throttled += 1
            self.metrics.inc("syncd_throttle_events_total", endpoint=endpoint)
            pacer_endpoint = "upload" if endpoint == "storage" else endpoint
            cool_s = self.pacer.throttled(pacer_endpoint)
            # The ambiguous 400: it counts against this file only if the API accepted other
            # files since this file's previous attempt; otherwise the whole account is being
            # throttled. A file's first 400 counts (it alone never reaches reject_after).
            previous_end = await self.ledger.previous_attempt_end(sha, attempt)
            counted = previous_end is None or await self.ledger.accepted_since(
                mode, previous_end, sha
            )
            if counted and content.throttle_count + 1 >= cfg.reject_after:
                reason = (
                    f"API answered HTTP {exc.status} {content.throttle_count + 1} times while "
                    f"other uploads succeeded: rejected ({exc})"
                )
                await self._give_up(sha, attempt, "rejected", reason, exc.status)
                return
            delay = max(
                cool_s, backoff_s(content.throttle_count + 1, cool_s, cfg.backoff_max_s, self.rng)
            )
            await self.ledger.retry_later(
                sha,
                attempt,
                outcome="throttled",
                error=str(exc),
                http_status=exc.status,
                next_attempt_at=now + delay,
                count_attempt=False,
                count_throttle=counted,
                keep_allocation=keep_allocation,
            )
            self.stats.retried += 1
            log.info(
                "retry %s in %.1fs: HTTP %s on %s (%s; cool-down %.1fs)",
                _short(sha),
                delay,
                exc.status,
                endpoint,
                "counted against the file" if counted else "account throttled",
                cool_s,
            )
            return
        if isinstance(exc, ApiAuthError | ApiNoCredits):
            kind = "auth" if isinstance(exc, ApiAuthError) else "credits"
            what = (
                "the API refused the key (HTTP %s): check MAVI_API_KEY / api.key_file"
                if kind == "auth"
                else "the account is out of credits (HTTP %s): recharge it"
            ) % exc.status
            delay, news = self._set_pause(kind, what)
            if news:
                log.error("uploads paused: %s; probing again in %.0f s", what, delay)
                events.publish("problem", kind=kind, reason=what)
            await self.ledger.retry_later(
                sha,
                attempt,
                outcome=kind,
                error=what,
                http_status=exc.status,
                next_attempt_at=now + delay,
                count_attempt=False,
                keep_allocation=keep_allocation,
            )
            return
        if isinstance(exc, ApiPermanent) and not isinstance(exc, ApiNotFound):
            await self._give_up(
                sha, attempt, "rejected", f"the API refused this file: {exc}", exc.status
            )
            return
        # Retryable (5xx, transport, timeouts, malformed answers) and anything unforeseen.
        attempts = content.attempts + 1
        if attempts >= cfg.max_attempts:
            reason = f"{attempts} attempts failed; the last: {exc}"
            await self._give_up(sha, attempt, "failed", reason, exc.status)
            return
        delay = backoff_s(attempts, cfg.backoff_initial_s, cfg.backoff_max_s, self.rng)
        # A 2xx that names no usable asset (malformed, no or a wrong asset id, too long) came
        # from a service that took the body: it may hold an asset nobody can name.
        duplicate = mode == "direct" and exc.status is not None and 200 <= exc.status < 300
        if duplicate:
            self.metrics.inc("syncd_possible_duplicates_total")
        await self.ledger.retry_later(
            sha,
            attempt,
            outcome="retryable" if isinstance(exc, ApiRetryable) else "error",
            error=str(exc),
            http_status=exc.status,
            next_attempt_at=now + delay,
            keep_allocation=keep_allocation,
            possible_duplicate=duplicate,
        )
        self.stats.retried += 1
        log.info("retry %s in %.1fs (attempt %d): %s", _short(sha), delay, attempts, exc)

    async def _give_up(
        self,
        sha256: str,
        attempt: int,
        state: Literal["failed", "rejected"],
        reason: str,
        http_status: int | None,
    ) -> None:
        await self.ledger.give_up(
            sha256, attempt, state=state, outcome=state, error=reason, http_status=http_status
        )
        if state == "failed":
            self.stats.failed += 1
        else:
            self.stats.rejected += 1
        self.metrics.inc("syncd_uploads_total", outcome=state)
        events.publish("problem", kind=state, sha256=sha256, reason=reason)
        log.warning("gave up on %s: %s", _short(sha256), reason)

    async def _interrupted(
        self, sha256: str, attempt: int, *, keep_allocation: bool, possible_duplicate: bool
    ) -> None:
        """Shutdown cancelled an attempt: back to the queue, not counted against the file."""
        await self.ledger.retry_later(
            sha256,
            attempt,
            outcome="interrupted",
            error="interrupted by shutdown",
            next_attempt_at=self.clock(),
            count_attempt=False,
            keep_allocation=keep_allocation,
            possible_duplicate=possible_duplicate,
        )
        if possible_duplicate:
            self.metrics.inc("syncd_possible_duplicates_total")
        self.stats.interrupted += 1

    async def _unreadable_during_upload(
        self,
        content: Content,
        attempt: int,
        path: str,
        exc: OSError,
        *,
        keep_allocation: bool = False,
    ) -> None:
        """The file could not be read while its body was sent: retry soon without counting an
        attempt (the API never saw the file), keeping a signed-URL allocation if asked."""
        await self.ledger.retry_later(
            content.sha256,
            attempt,
            outcome="file_error",
            error=f"cannot read {_display(path)}: {exc.strerror or exc}",
            next_attempt_at=self.clock() + self.cfg.upload.backoff_initial_s,
            count_attempt=False,
            keep_allocation=keep_allocation,
        )
        await self._file_unavailable(path, exc)

    async def _file_unavailable(self, path: str, exc: OSError, *, again: bool = False) -> None:
        # ``again``: the content's last error is this very one, already reported; retries
        # of an unreadable file (every backoff_initial_s) are not worth a warning each.
        if isinstance(exc, FileNotFoundError):
            await self.ledger.mark_gone(path)
            log.info("%s vanished before or during its upload", _display(path))
        elif again:
            log.debug("still cannot read %s: %s", _display(path), exc.strerror or exc)
        else:
            log.warning("cannot read %s: %s", _display(path), exc.strerror or exc)


def _status(exc: ApiError) -> str:
    return str(exc.status) if exc.status is not None else "error"


def _short(sha256: str) -> str:
    return sha256[:12]


def _display(path: str) -> str:
    # Undecodable bytes as \xNN; a name with a newline or another control character is quoted
    # and escaped, so it cannot split or forge a log line.
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return text if text.isprintable() else repr(text)
