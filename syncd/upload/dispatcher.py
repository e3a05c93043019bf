"""The dispatcher: claims due contents from the ledger into a queue of ``workers`` slots.

The ledger is the queue (``docs/architecture.md``, rule 1): the dispatcher holds at most as many
claimed contents as there are upload workers, and asks the ledger for more when a worker is
free, when something became due (``wake()``), or when the next content falls due. During an
account-wide :class:`Pause` it hands out exactly one content once the pause ends (the probe);
the workers (``uploader.py``) report back through :meth:`Dispatcher.finished`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from syncd.ledger.records import Job, UploadOrder
from syncd.ledger.store import UploadLedger
from syncd.upload.wake import Wake

log = logging.getLogger(__name__)


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


class Dispatcher:
    """Given the open ledger, the uploader's shared state (in-flight contents, the pause), the
    number of worker ``slots`` and a clock; :meth:`run` claims until :meth:`stop_intake`."""

    def __init__(
        self,
        ledger: UploadLedger,
        state: UploaderState,
        *,
        slots: int,
        clock: Callable[[], float],
        order: UploadOrder = "oldest",
    ) -> None:
        self._ledger = ledger
        self._order = order  # upload.order
        self._state = state
        self._clock = clock
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=slots)
        self._wake = Wake()
        self._intake_open = True

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

    async def run(self) -> None:
        """Claim due contents into the bounded queue until intake stops."""
        while self._intake_open:
            pause = self._state.pause
            now = self._clock()
            if pause is not None:
                if now < pause.until:
                    await self._sleep_or_wake(pause.until - now)
                elif pause.probe is None:
                    probes = await self._ledger.due_jobs(
                        1, exclude=self._state.in_flight, order=self._order
                    )
                    if not probes:
                        await self._sleep_or_wake(1.0)
                        continue
                    probe = probes[0]
                    pause.probe = probe.content.sha256
                    self._state.in_flight.add(probe.content.sha256)
                    log.info("probing the API with one upload (%s)", pause.reason)
                    await self._queue.put(probe)
                else:
                    await self._sleep_or_wake(1.0)
                continue
            free = self._queue.maxsize - self._queue.qsize()
            jobs: list[Job] = []
            if free > 0:
                jobs = await self._ledger.due_jobs(
                    free, exclude=self._state.in_flight, order=self._order
                )
            for job in jobs:
                self._state.in_flight.add(job.content.sha256)
                await self._queue.put(job)
            if jobs and free > len(jobs):
                continue
            if free <= 0 or jobs:
                await self._sleep_or_wake(1.0)  # the queue is full: a worker will wake us
                continue
            next_due = await self._ledger.next_due_at()
            # Re-check at least every 30 s: an operator may re-queue rows from another process.
            delay = 30.0 if next_due is None else min(30.0, max(0.05, next_due - self._clock()))
            await self._sleep_or_wake(delay)

    async def _sleep_or_wake(self, delay_s: float) -> None:
        await self._wake.sleep(delay_s)

    async def get(self) -> Job:
        """For a worker: the next claimed content (waits until there is one)."""
        return await self._queue.get()

    def finished(self, job: Job) -> None:
        """For a worker: ``job`` is over, whatever its outcome; its slot is free."""
        pause = self._state.pause
        if pause is not None and pause.probe == job.content.sha256:
            pause.probe = None  # the probe is over, whatever its outcome
        self._state.in_flight.discard(job.content.sha256)
        self._queue.task_done()
        self._wake.set()

    def drop_queued(self) -> None:
        """Shutdown: release the claimed contents no worker has started."""
        while not self._queue.empty():
            job = self._queue.get_nowait()
            self._state.in_flight.discard(job.content.sha256)
            self._queue.task_done()
