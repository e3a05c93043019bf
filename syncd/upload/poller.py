"""Status polling: ask the API about uploaded assets until they are SUCCESS or FAILED.

Polls are rows in the ledger (``next_poll_at``), spent from the metadata endpoint's own pacer
budget. Fresh assets are asked about often, old ones rarely: the gap doubles per poll from
``poll.initial_s`` up to ``poll.max_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from syncd import events
from syncd.config import Config
from syncd.errors import ApiAuthError, ApiError, ApiNotFound, ApiThrottled
from syncd.ledger.records import Content
from syncd.ledger.store import PollLedger
from syncd.metrics import Metrics
from syncd.upload.client import MaviClient
from syncd.upload.pacer import Pacer
from syncd.upload.wake import Wake

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"SUCCESS", "FAILED"})

RECORD_WITHIN_S = 0.2
"""How long a polled answer may wait to be committed with the ones after it (a crash before
the commit only means asking again)."""


def poll_gap_s(polls: int, initial_s: float, max_s: float) -> float:
    """Seconds until the next poll of an asset already polled ``polls`` times."""
    return float(min(max_s, initial_s * (2 ** min(polls, 30))))


@dataclass(frozen=True, slots=True)
class _Answer:
    """A status to record: the asset's answer (``answered``), or, when the API gave none,
    the status the ledger had, kept until ``next_poll_at``."""

    content: Content
    asset_id: str
    status: str
    next_poll_at: float
    answered: bool


class Poller:
    """One task that polls due assets, one request at a time through the metadata pacer.

    Given ``on_requeued``: called when a FAILED asset puts its content back in the upload queue.
    """

    def __init__(
        self,
        cfg: Config,
        ledger: PollLedger,
        client: MaviClient,
        pacer: Pacer,
        metrics: Metrics,
        *,
        on_requeued: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.client = client
        self.pacer = pacer
        self.metrics = metrics
        self.on_requeued = on_requeued
        self.clock = clock
        self._wake = Wake()
        self.done = 0
        self.remote_failed = 0

    def wake(self) -> None:
        """A new asset was uploaded: look at the ledger now."""
        self._wake.set()

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            due = await self.ledger.due_polls(16)
            if due:
                await self.poll_batch(due)
                continue
            next_at = await self.ledger.next_poll_at()
            delay = 30.0 if next_at is None else min(30.0, max(0.05, next_at - self.clock()))
            await self._wake.sleep(delay)

    async def poll_batch(self, contents: list[Content]) -> None:
        """Ask for each asset's status in turn, each through the metadata pacer, and record
        the answers a few at a time: queued together, the ledger commits them as one group
        instead of one COMMIT and one writer-thread hop per asset (the uploads' commits queue
        behind those). An answer waits at most until the next one arrives after it is
        :data:`RECORD_WITHIN_S` old, or the end of the batch. A FAILED or vanished asset is
        recorded at once (its content goes back to the upload queue)."""
        answers: list[_Answer] = []
        first_at = 0.0
        for content in contents:
            answer = await self._ask(content)
            if answer is None:
                continue
            if not answers:
                first_at = time.monotonic()
            answers.append(answer)
            if time.monotonic() - first_at >= RECORD_WITHIN_S:
                await self._record(answers)
                answers = []
        if answers:
            await self._record(answers)

    async def _record(self, answers: list[_Answer]) -> None:
        await asyncio.gather(
            *(
                self.ledger.record_status(
                    a.content.sha256, a.asset_id, a.status, next_poll_at=a.next_poll_at
                )
                for a in answers
            )
        )
        for answer in answers:
            if answer.answered:
                self._recorded(answer)

    async def _ask(self, content: Content) -> _Answer | None:
        """Ask for one asset's status; returns what to record, or None when there is nothing
        to record or it was recorded already (FAILED, unknown to the API)."""
        asset_id = content.asset_id
        if asset_id is None:
            return None
        poll = self.cfg.poll
        await self.pacer.acquire("metadata")
        try:
            status = await self.client.metadata(asset_id)
        except ApiNotFound as exc:
            self.metrics.inc("syncd_requests_total", endpoint="metadata", status="400")
            await self._failed(content, asset_id, f"asset {asset_id} is unknown to the API ({exc})")
            return None
        except ApiError as exc:
            self.metrics.inc(
                "syncd_requests_total",
                endpoint="metadata",
                status=str(exc.status) if exc.status is not None else "error",
            )
            delay = poll_gap_s(content.polls, poll.initial_s, poll.max_s)
            if isinstance(exc, ApiThrottled):
                self.metrics.inc("syncd_throttle_events_total", endpoint="metadata")
                delay = max(delay, self.pacer.throttled("metadata"))
            elif isinstance(exc, ApiAuthError):
                delay = max(delay, 60.0)
            log.info(
                "status of %s unknown for now (%s); asking again in %.1f s", asset_id, exc, delay
            )
            status_now = content.remote_status or "WAITING"
            return _Answer(content, asset_id, status_now, self.clock() + delay, answered=False)
        self.metrics.inc("syncd_requests_total", endpoint="metadata", status="200")
        self.pacer.succeeded("metadata")
        if status.upload_status == "FAILED":
            await self._failed(content, asset_id, f"the API reports asset {asset_id} FAILED")
            return None
        next_at = self.clock() + poll_gap_s(content.polls + 1, poll.initial_s, poll.max_s)
        return _Answer(content, asset_id, status.upload_status, next_at, answered=True)

    def _recorded(self, answer: _Answer) -> None:
        """What follows a recorded answer: the event and, for SUCCESS, the count and log."""
        content, asset_id, status = answer.content, answer.asset_id, answer.status
        if status != content.remote_status:
            events.publish(
                "status_changed", sha256=content.sha256, asset_id=asset_id, status=status
            )
        if status == "SUCCESS":
            self.done += 1
            log.info("asset %s is SUCCESS (sha256=%s)", asset_id, content.sha256[:12])

    async def _failed(self, content: Content, asset_id: str, reason: str) -> None:
        state = await self.ledger.remote_failed(
            content.sha256, asset_id, reason, max_attempts=self.cfg.upload.max_attempts
        )
        self.remote_failed += 1
        events.publish("status_changed", sha256=content.sha256, asset_id=asset_id, status="FAILED")
        if state == "failed":
            log.warning("gave up on %s: %s (attempts exhausted)", content.sha256[:12], reason)
        else:
            log.info("%s; uploading %s again", reason, content.sha256[:12])
            self.on_requeued()
