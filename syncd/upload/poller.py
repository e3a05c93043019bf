"""Status polling: ask the API about uploaded assets until they are SUCCESS or FAILED.

Polls are rows in the ledger (``next_poll_at``), spent from the metadata endpoint's own pacer
budget. Fresh assets are asked about often, old ones rarely: the gap doubles per poll from
``poll.initial_s`` up to ``poll.max_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

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


def poll_gap_s(polls: int, initial_s: float, max_s: float) -> float:
    """Seconds until the next poll of an asset already polled ``polls`` times."""
    return float(min(max_s, initial_s * (2 ** min(polls, 30))))


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
            for content in due:
                await self.poll_one(content)
            if due:
                continue
            next_at = await self.ledger.next_poll_at()
            delay = 30.0 if next_at is None else min(30.0, max(0.05, next_at - self.clock()))
            await self._wake.sleep(delay)

    async def poll_one(self, content: Content) -> None:
        """Ask for one asset's status and record the answer."""
        asset_id = content.asset_id
        if asset_id is None:
            return
        poll = self.cfg.poll
        await self.pacer.acquire("metadata")
        try:
            status = await self.client.metadata(asset_id)
        except ApiNotFound as exc:
            self.metrics.inc("syncd_requests_total", endpoint="metadata", status="400")
            await self._failed(content, asset_id, f"asset {asset_id} is unknown to the API ({exc})")
            return
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
            await self.ledger.record_status(
                content.sha256,
                asset_id,
                content.remote_status or "WAITING",
                next_poll_at=self.clock() + delay,
            )
            return
        self.metrics.inc("syncd_requests_total", endpoint="metadata", status="200")
        self.pacer.succeeded("metadata")
        if status.upload_status == "FAILED":
            await self._failed(content, asset_id, f"the API reports asset {asset_id} FAILED")
            return
        next_at = self.clock() + poll_gap_s(content.polls + 1, poll.initial_s, poll.max_s)
        await self.ledger.record_status(
            content.sha256, asset_id, status.upload_status, next_poll_at=next_at
        )
        if status.upload_status != content.remote_status:
            events.publish(
                "status_changed",
                sha256=content.sha256,
                asset_id=asset_id,
                status=status.upload_status,
            )
        if status.upload_status == "SUCCESS":
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
