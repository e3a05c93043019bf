"""Outcomes: what an upload attempt's end writes to the ledger, counts and logs.

Given the decisions of ``policy.py`` (or the uploader's own: the file changed, shutdown, an
unreadable file), :meth:`Outcomes.apply` is the one caller of the ledger's ``retry_later`` and
``give_up``; :meth:`Outcomes.uploaded` commits an asset id once its bytes are known to be the
content's (or keeps it as superseded); :meth:`Outcomes.set_pause` starts or extends the
account-wide pause that the dispatcher probes. The statistics the daemon reports
(:class:`UploadStats`) are counted here, where the outcomes are written.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from syncd import events
from syncd.chunksums import ChunkSumsCache
from syncd.config import Config
from syncd.display import display_path
from syncd.errors import ApiError, ApiThrottled
from syncd.fingerprint import Fingerprint
from syncd.ledger.records import Content
from syncd.ledger.store import UploadLedger
from syncd.metrics import Metrics
from syncd.upload.client import BytesChanged, UploadResult
from syncd.upload.dispatcher import Pause, UploaderState
from syncd.upload.pacer import Pacer
from syncd.upload.policy import Decision, GiveUp, PauseAll, RetryLater, Throttle, decide

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


class Resettle(Protocol):
    """Where a file whose bytes changed under an upload goes back: the ingest stage."""

    @property
    def settle_delay_s(self) -> float:
        """The soonest a path handed back now can be hashed again, in seconds."""
        ...

    async def resettle(self, path: str) -> None:
        """Settle, hash and record ``path`` again."""


class Outcomes:
    """Writes what became of each attempt. Given the config, the open ledger, the pacer, the
    metrics, the uploader's shared ``state``, ``resettle``, ``on_uploaded()``, a random source
    for the jitter and a clock."""

    def __init__(
        self,
        cfg: Config,
        ledger: UploadLedger,
        pacer: Pacer,
        metrics: Metrics,
        state: UploaderState,
        *,
        resettle: Resettle,
        on_uploaded: Callable[[], None],
        rng: random.Random,
        chunk_sums: ChunkSumsCache | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.pacer = pacer
        self.metrics = metrics
        self.state = state
        self.resettle = resettle
        self.on_uploaded = on_uploaded
        self.chunk_sums = chunk_sums
        self.rng = rng
        self.clock = clock
        self.stats = UploadStats()

    async def uploaded(
        self,
        content: Content,
        attempt: int,
        path: str,
        before: Fingerprint,
        result: UploadResult,
        duration_s: float,
        via: str,
        recorded: Callable[[], None] | None = None,
    ) -> None:
        """Record a successful answer: the asset id, or, if the bytes sent or the file's
        stat do not match the content, the asset as superseded (and the file settles again).
        ``recorded()``, when given, is called as soon as that is committed, before the
        bookkeeping that follows (the uploader ends its finish window there)."""
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
                display_path(path),
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
            if recorded is not None:
                recorded()
            self.stats.superseded += 1
            self.metrics.inc("syncd_uploads_total", outcome="superseded")
            await self.resettle.resettle(path)
            return
        await self.ledger.finish_upload(
            content.sha256,
            attempt,
            asset_id,
            bytes_sent=result.bytes_sent,
            http_status=result.http_status,
            next_poll_at=self.clock() + self.cfg.poll.initial_s,
        )
        if recorded is not None:
            recorded()
        if self.chunk_sums is not None:
            self.chunk_sums.discard(content.sha256)  # its bytes are sent: no longer needed
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
        self.resume_if_paused()
        log.info(
            "uploaded %s sha256=%s asset=%s attempt=%d %.2fs %d bytes via %s",
            display_path(path),
            _short(content.sha256),
            asset_id,
            content.attempts + 1,
            duration_s,
            result.bytes_sent,
            via,
        )

    def resume_if_paused(self) -> None:
        if self.state.pause is not None:
            log.info("uploads resumed: %s is resolved", self.state.pause.kind)
            self.state.pause = None
            self.state.healthy = True
            self.state.reason = ""

    def set_pause(self, kind: str, reason: str) -> tuple[float, bool]:
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

    async def api_failure(
        self,
        content: Content,
        attempt: int,
        endpoint: str,
        mode: str,
        exc: ApiError,
        *,
        keep_allocation: bool = False,
    ) -> None:
        """An attempt failed at the API: gather the evidence, decide, write the decision."""
        throttle = None
        if isinstance(exc, ApiThrottled):
            self.stats.throttled += 1
            self.metrics.inc("syncd_throttle_events_total", endpoint=endpoint)
            cool_s = self.pacer.throttled("upload" if endpoint == "storage" else endpoint)
            previous_end = await self.ledger.previous_attempt_end(content.sha256, attempt)
            others = previous_end is not None and await self.ledger.accepted_since(
                mode, previous_end, content.sha256
            )
            throttle = Throttle(cool_s, previous_end is not None, others)
        decision = decide(
            exc,
            attempts=content.attempts,
            throttle_count=content.throttle_count,
            mode=mode,
            endpoint=endpoint,
            cfg=self.cfg.upload,
            rng=self.rng,
            throttle=throttle,
            keep_allocation=keep_allocation,
        )
        await self.apply(content.sha256, attempt, decision)

    async def apply(self, sha256: str, attempt: int | None, decision: Decision) -> None:
        """Write a decision: the one caller of the ledger's ``retry_later`` and ``give_up``,
        and the one place that counts, logs and publishes what became of a content."""
        if isinstance(decision, GiveUp):
            assert attempt is not None  # noqa: S101 - only an attempt can end a content
            state, reason = decision.state, decision.reason
            await self.ledger.give_up(
                sha256,
                attempt,
                state=state,
                outcome=state,
                error=reason,
                http_status=decision.http_status,
            )
            if state == "failed":
                self.stats.failed += 1
            else:
                self.stats.rejected += 1
            self.metrics.inc("syncd_uploads_total", outcome=state)
            events.publish("problem", kind=state, sha256=sha256, reason=reason)
            log.warning("gave up on %s: %s", _short(sha256), reason)
            return
        if isinstance(decision, PauseAll):
            delay, news = self.set_pause(decision.kind, decision.reason)
            if news:
                log.error("uploads paused: %s; probing again in %.0f s", decision.reason, delay)
                events.publish("problem", kind=decision.kind, reason=decision.reason)
            decision = RetryLater(
                decision.kind,
                decision.reason,
                delay,
                http_status=decision.http_status,
                count_attempt=False,
                keep_allocation=decision.keep_allocation,
            )
        if decision.possible_duplicate:
            self.metrics.inc("syncd_possible_duplicates_total")
        await self.ledger.retry_later(
            sha256,
            attempt,
            outcome=decision.outcome,
            error=decision.error,
            http_status=decision.http_status,
            next_attempt_at=self.clock() + decision.delay_s,
            count_attempt=decision.count_attempt,
            count_throttle=decision.count_throttle,
            keep_allocation=decision.keep_allocation,
            possible_duplicate=decision.possible_duplicate,
        )
        if decision.note:
            self.stats.retried += 1
            log.info("retry %s in %.1fs%s", _short(sha256), decision.delay_s, decision.note)

    async def interrupted(
        self, sha256: str, attempt: int, *, keep_allocation: bool, possible_duplicate: bool
    ) -> None:
        """Shutdown cancelled an attempt: back to the queue, not counted against the file."""
        await self.apply(
            sha256,
            attempt,
            RetryLater(
                "interrupted",
                "interrupted by shutdown",
                0.0,
                count_attempt=False,
                keep_allocation=keep_allocation,
                possible_duplicate=possible_duplicate,
            ),
        )
        self.stats.interrupted += 1

    async def changed_during_upload(
        self,
        content: Content,
        attempt: int,
        path: str,
        exc: BytesChanged,
        *,
        keep_allocation: bool = False,
    ) -> None:
        """A chunk read for sending differed from the chunk hashed: the body was stopped before
        its end (the service holds no complete file), the file goes back to settling, and the
        content waits, without counting an attempt, for bytes that hash to it."""
        log.info("%s; settling it again", exc)
        if self.chunk_sums is not None:
            self.chunk_sums.discard(content.sha256)
        await self.apply(
            content.sha256,
            attempt,
            RetryLater(
                "changed",
                "file changed during the upload",
                self.resettle.settle_delay_s,
                count_attempt=False,
                keep_allocation=keep_allocation,
            ),
        )
        await self.resettle.resettle(path)

    async def unreadable_during_upload(
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
        await self.apply(
            content.sha256,
            attempt,
            RetryLater(
                "file_error",
                f"cannot read {display_path(path)}: {exc.strerror or exc}",
                self.cfg.upload.backoff_initial_s,
                count_attempt=False,
                keep_allocation=keep_allocation,
            ),
        )
        await self.file_unavailable(path, exc)

    async def file_unavailable(self, path: str, exc: OSError, *, again: bool = False) -> None:
        # ``again``: the content's last error is this very one, already reported; retries
        # of an unreadable file (every backoff_initial_s) are not worth a warning each.
        if isinstance(exc, FileNotFoundError):
            await self.ledger.mark_gone(path)
            log.info("%s vanished before or during its upload", display_path(path))
        elif again:
            log.debug("still cannot read %s: %s", display_path(path), exc.strerror or exc)
        else:
            log.warning("cannot read %s: %s", display_path(path), exc.strerror or exc)


def _short(sha256: str) -> str:
    return sha256[:12]
