"""The notification queue and the task that drains it.

A final outcome becomes one job per configured target (``on_success`` or ``on_failed``, and
``webhook``), written by the queue's owner together with the outcome itself, so a restart
loses no notification. :class:`HookDrainer` runs due jobs at most ``concurrency`` at a time,
on its own task: a slow or failing hook delays other hooks, never an upload. A job that fails
is tried again after an exponential backoff (with jitter) and given up after
``max_attempts``, its last outcome kept; one that succeeds is done. A job whose outcome was
not recorded (a crash mid-run) runs again: delivery is at least once.

:class:`HookQueue` is the seam the ledger implements; :class:`MemoryHookQueue` is the
in-memory one that proves it (and serves the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import aiohttp

from syncd.after.hooks import (
    Delivery,
    Notification,
    post_webhook,
    read_secret_file,
    run_command,
)
from syncd.config import HooksConfig

log = logging.getLogger(__name__)

Target = Literal["on_success", "on_failed", "webhook", "sidecar", "cleanup"]
# How long the drainer sleeps when nothing is due and nothing woke it, at most: the queue may
# be written by another process (a fleet) that cannot wake this one.
IDLE_RECHECK_S = 30.0


@dataclass(frozen=True)
class HookSettings:
    """The ``hooks`` settings in the form the drainer uses (the secret already read)."""

    on_success: tuple[str, ...] = ()
    on_failed: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_secret: bytes | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    concurrency: int = 2
    max_attempts: int = 10
    backoff_initial_s: float = 5.0
    backoff_max_s: float = 3600.0


def hook_settings_from(hooks: HooksConfig) -> HookSettings:
    """Given the validated ``hooks`` settings, return the drainer's, the secret read from
    its file. Blocking (reads a file); raises :class:`~syncd.errors.ConfigError` for a secret
    file that cannot be read or is empty."""
    secret = None
    if hooks.webhook_secret_file is not None:
        secret = read_secret_file(hooks.webhook_secret_file)
    return HookSettings(
        on_success=hooks.on_success,
        on_failed=hooks.on_failed,
        webhook_url=hooks.webhook_url,
        webhook_secret=secret,
        timeout_s=hooks.timeout_s,
        concurrency=hooks.concurrency,
        max_attempts=hooks.max_attempts,
        backoff_initial_s=hooks.backoff_initial_s,
        backoff_max_s=hooks.backoff_max_s,
    )


def targets_for(event: str, settings: HookSettings) -> list[Target]:
    """Given an event (``success`` or ``failed``) and the settings, return the targets a
    notification of it goes to, in the order they run."""
    targets: list[Target] = []
    if event == "success" and settings.on_success:
        targets.append("on_success")
    if event == "failed" and settings.on_failed:
        targets.append("on_failed")
    if settings.webhook_url:
        targets.append("webhook")
    return targets


def retry_delay_s(
    attempts: int, initial_s: float, max_s: float, rng: Callable[[], float] = random.random
) -> float:
    """Given how many attempts failed so far (at least 1), return the seconds until the next:
    ``initial_s`` doubled per earlier failure, at most ``max_s``, less up to 20 % of jitter so
    hooks that failed together do not retry together."""
    base = min(max_s, initial_s * 2 ** min(max(attempts - 1, 0), 40))
    return float(base * (1.0 - 0.2 * rng()))


@dataclass(frozen=True)
class HookJob:
    """One notification owed to one target: ``attempts`` made so far."""

    id: int
    target: Target
    note: Notification
    attempts: int = 0
    root: str = ""

    @property
    def delivery_id(self) -> str:
        """The id a webhook receiver sees on every retry of this job."""
        return f"{self.note.sha256[:16]}.{self.note.event}.{self.id}"


@dataclass(frozen=True)
class HookRecord:
    """A job's state: ``pending``, ``done`` or ``given_up``, with its last outcome."""

    job: HookJob
    state: Literal["pending", "done", "given_up"]
    next_at: float
    last: Delivery | None = None


class HookQueue(Protocol):
    """What the drainer needs of the queue's store."""

    async def enqueue(self, note: Notification, targets: list[Target], now: float) -> None:
        """Add one pending job per target, due at ``now``."""

    async def due_hooks(self, now: float, limit: int, exclude: frozenset[int]) -> list[HookJob]:
        """Return at most ``limit`` pending jobs due by ``now`` (oldest first), except
        ``exclude`` (those running)."""

    async def next_hook_at(self) -> float | None:
        """When the earliest pending job is due, or ``None`` when none is pending."""

    async def hook_done(self, job: HookJob, outcome: Delivery) -> None:
        """Record a delivered job."""

    async def hook_retry(self, job: HookJob, at: float, outcome: Delivery) -> None:
        """Record a failed attempt; the job is due again at ``at``."""

    async def hook_give_up(self, job: HookJob, outcome: Delivery) -> None:
        """Record a job that failed its last allowed attempt."""


class MemoryHookQueue:
    """A :class:`HookQueue` held in memory (lost on exit: for tests and the seam's proof)."""

    def __init__(self) -> None:
        self.records: dict[int, HookRecord] = {}
        self._next_id = 1

    async def enqueue(self, note: Notification, targets: list[Target], now: float) -> None:
        for target in targets:
            job = HookJob(self._next_id, target, note)
            self.records[job.id] = HookRecord(job, "pending", now)
            self._next_id += 1

    async def due_hooks(self, now: float, limit: int, exclude: frozenset[int]) -> list[HookJob]:
        due = sorted(
            (r for r in self.records.values() if r.state == "pending" and r.next_at <= now),
            key=lambda r: (r.next_at, r.job.id),
        )
        return [r.job for r in due if r.job.id not in exclude][:limit]

    async def next_hook_at(self) -> float | None:
        return min((r.next_at for r in self.records.values() if r.state == "pending"), default=None)

    async def hook_done(self, job: HookJob, outcome: Delivery) -> None:
        self._set(job, "done", self.records[job.id].next_at, outcome)

    async def hook_retry(self, job: HookJob, at: float, outcome: Delivery) -> None:
        self._set(job, "pending", at, outcome)

    async def hook_give_up(self, job: HookJob, outcome: Delivery) -> None:
        self._set(job, "given_up", self.records[job.id].next_at, outcome)

    def _set(self, job: HookJob, state: str, at: float, outcome: Delivery) -> None:
        counted = replace(job, attempts=job.attempts + 1)
        self.records[job.id] = HookRecord(counted, state, at, outcome)  # type: ignore[arg-type]


class HookDrainer:
    """Runs due notification jobs from ``queue``, at most ``settings.concurrency`` at once.

    Given the queue, the settings, a clock (seconds since the epoch) and a jitter source.
    :meth:`run` drains until cancelled; cancelling it kills running commands and leaves their
    jobs pending. Owns one HTTP session for webhooks, opened on first use.
    """

    def __init__(
        self,
        queue: HookQueue,
        settings: HookSettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed_attempts = 0
        self.given_up = 0

    def wake(self) -> None:
        """A job was enqueued: look at the queue now."""
        self._wake.set()

    @property
    def running(self) -> int:
        """How many jobs run now."""
        return len(self._running)

    async def run(self) -> None:
        """Drain until cancelled."""
        try:
            while True:
                free = self.settings.concurrency - len(self._running)
                if free > 0:
                    jobs = await self.queue.due_hooks(self.clock(), free, frozenset(self._running))
                    for job in jobs:
                        task = asyncio.create_task(self._attempt(job), name=f"hook-{job.id}")
                        self._running[job.id] = task
                        task.add_done_callback(functools.partial(self._finished, job.id))
                    if jobs:
                        continue
                await self._idle()
        finally:
            running = list(self._running.values())
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            if self._session is not None:
                await self._session.close()

    async def _idle(self) -> None:
        """Sleep until a job may be due, one finishes, or :meth:`wake` is called."""
        next_at = await self.queue.next_hook_at()
        delay = IDLE_RECHECK_S if next_at is None else next_at - self.clock()
        delay = min(IDLE_RECHECK_S, max(0.01, delay))
        self._wake.clear()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that comes
        # in the same turn as the wake-up, and the drainer would outlive the daemon's stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    def _finished(self, job_id: int, _task: asyncio.Task[None]) -> None:
        task = self._running.pop(job_id, None)
        if task is not None and not task.cancelled() and task.exception() is not None:
            # The queue could not record the outcome: the job stays pending and runs again.
            log.error("hook job %d: %s", job_id, task.exception())
        self._wake.set()  # a slot is free

    async def _attempt(self, job: HookJob) -> None:
        outcome = await self.deliver(job)
        settings = self.settings
        if outcome.ok:
            self.delivered += 1
            await self.queue.hook_done(job, outcome)
            return
        self.failed_attempts += 1
        attempts = job.attempts + 1
        where = f"{job.target} hook for {job.note.sha256[:12]}"
        if attempts >= settings.max_attempts:
            self.given_up += 1
            log.warning(
                "%s failed (%s); gave up after %d attempts", where, outcome.detail, attempts
            )
            await self.queue.hook_give_up(job, outcome)
            return
        delay = retry_delay_s(
            attempts, settings.backoff_initial_s, settings.backoff_max_s, self.rng
        )
        log.info("%s failed (%s); trying again in %.1f s", where, outcome.detail, delay)
        await self.queue.hook_retry(job, self.clock() + delay, outcome)

    async def deliver(self, job: HookJob) -> Delivery:
        """Make one attempt at ``job`` and return its outcome."""
        settings = self.settings
        if job.target == "webhook":
            if not settings.webhook_url:
                return Delivery(False, "no hooks.webhook_url configured")
            if self._session is None:
                self._session = aiohttp.ClientSession()
            return await post_webhook(
                self._session,
                settings.webhook_url,
                job.note,
                delivery_id=job.delivery_id,
                secret=settings.webhook_secret,
                timeout_s=settings.timeout_s,
            )
        argv = settings.on_success if job.target == "on_success" else settings.on_failed
        if not argv:
            return Delivery(False, f"no hooks.{job.target} configured")
        return await run_command(argv, job.note, timeout_s=settings.timeout_s)
