"""The stage after the upload: turns each SUCCESS the poller records into the work the config
asks for, per path, and does it.

For every present path of a content that became SUCCESS, under a watched root: the sidecar
(``sidecar: true``), the ``hooks.on_success`` command and the ``hooks.webhook_url`` POST,
and the clean-up (``after_success: delete | move``). The jobs are rows of the ledger, made
from its ``status_changes`` in one transaction with the watermark past them (a restart
loses none and makes none twice), and run by one :class:`AfterRunner`: at most
``hooks.concurrency`` at once, a failed one again after a backoff, never in the way of an
upload. The first start with this stage begins at the latest status change: files uploaded
before are not touched.

A clean-up commits its intent before it touches the file; one found committed at the next
start (a crash came between) is finished or undone by
:func:`~syncd.after.cleanup.resolve_interrupted`, which says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from syncd.after.cleanup import Facts, Intent, carry_out, decide, resolve_interrupted
from syncd.after.hooks import Delivery, Event, Notification
from syncd.after.queue import HookDrainer, HookJob, HookSettings, Target
from syncd.after.sidecar import sidecar_document, sidecar_path, write_sidecar
from syncd.config import WatchRoot
from syncd.display import display_path
from syncd.failpoints import failpoint
from syncd.fingerprint import Fingerprint
from syncd.ledger.records import FAILURES_WATERMARK_KEY as FAILURES_KEY
from syncd.ledger.records import AfterJob, NewAfterJob
from syncd.ledger.store import AfterLedger

log = logging.getLogger(__name__)

# How often the stage looks for new status changes. The poller records them; looking once a
# second costs one indexed query and keeps the poller unaware of this stage.
CHANGES_POLL_S = 1.0
_BATCH = 200


@dataclass(frozen=True)
class AfterSettings:
    """What the stage does: the roots' settings by path, and the hooks'."""

    roots: Mapping[str, WatchRoot]
    hooks: HookSettings

    def kinds_for(self, root: WatchRoot) -> list[Target]:
        """The jobs a SUCCESS makes for a path under ``root``, in the order they should run."""
        kinds: list[Target] = []
        if root.sidecar:
            kinds.append("sidecar")
        if self.hooks.on_success:
            kinds.append("on_success")
        if self.hooks.webhook_url:
            kinds.append("webhook")
        if root.after_success != "keep":
            kinds.append("cleanup")
        return kinds

    def kinds_for_failure(self) -> list[Target]:
        """The jobs syncd giving up on a content makes for each of its paths."""
        kinds: list[Target] = []
        if self.hooks.on_failed:
            kinds.append("on_failed")
        if self.hooks.webhook_url:
            kinds.append("webhook")
        return kinds

    @property
    def active(self) -> bool:
        """Whether any root or hook asks for anything."""
        return bool(self.kinds_for_failure()) or any(
            self.kinds_for(root) for root in self.roots.values()
        )


class _LedgerQueue:
    """The ledger's job table seen as the drainer's :class:`~syncd.after.queue.HookQueue`."""

    def __init__(self, ledger: AfterLedger) -> None:
        self.ledger = ledger

    async def enqueue(self, note: Notification, targets: list[Target], now: float) -> None:
        raise NotImplementedError("jobs are made from status changes (AfterStage.expand)")

    async def due_hooks(self, now: float, limit: int, exclude: frozenset[int]) -> list[HookJob]:
        return [_hook_job(j) for j in await self.ledger.due_after_jobs(limit, exclude)]

    async def next_hook_at(self) -> float | None:
        return await self.ledger.next_after_job_at()

    async def hook_done(self, job: HookJob, outcome: Delivery) -> None:
        await self._finish(job, "done", outcome)

    async def hook_retry(self, job: HookJob, at: float, outcome: Delivery) -> None:
        await self._finish(job, "pending", outcome, next_at=at)

    async def hook_give_up(self, job: HookJob, outcome: Delivery) -> None:
        await self._finish(job, "given_up", outcome)

    async def _finish(
        self, job: HookJob, state: str, outcome: Delivery, next_at: float | None = None
    ) -> None:
        await self.ledger.finish_after_job(
            job.id,
            state,  # type: ignore[arg-type]
            outcome=outcome.detail,
            next_at=next_at,
            exit_status=outcome.exit_status,
            stderr_tail=outcome.stderr_tail or None,
        )


def _hook_job(job: AfterJob) -> HookJob:
    # Jobs made from a failure carry minus its id (see migration 0004_failures).
    event: Event = "failed" if job.change_id < 0 else "success"
    note = Notification(event, job.path, job.sha256, job.asset_id, job.status, job.at)
    return HookJob(job.id, job.kind, note, job.attempts, job.root)


class AfterRunner(HookDrainer):
    """The drainer of :mod:`syncd.after.queue`, doing sidecars and clean-ups too."""

    def __init__(
        self,
        ledger: AfterLedger,
        settings: AfterSettings,
        *,
        root_available: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(_LedgerQueue(ledger), settings.hooks, clock=clock)
        self.ledger = ledger
        self.after = settings
        self.root_available = root_available

    async def deliver(self, job: HookJob) -> Delivery:
        if job.target == "sidecar":
            return await self._sidecar(job)
        if job.target == "cleanup":
            return await self._cleanup(job)
        return await super().deliver(job)

    async def _still_holds(self, job: HookJob) -> str | None:
        """Why the job's path no longer stands for its content, or None when it does."""
        if not self.root_available(job.root):
            return f"its root {display_path(job.root)} is not there"
        record = await self.ledger.get_path(job.note.path)
        if record is None or record.state != "present":
            return "the file is no longer there"
        if record.sha256 != job.note.sha256:
            return "the path now holds newer content"
        return None

    async def _sidecar(self, job: HookJob) -> Delivery:
        note = job.note
        why = await self._still_holds(job)
        if why is not None:
            return Delivery(True, f"skipped: {why}")
        doc = sidecar_document(
            asset_id=note.asset_id or "",
            sha256=note.sha256,
            status=note.status,
            uploaded_at=note.uploaded_at,
        )
        try:
            written = await asyncio.to_thread(write_sidecar, note.path, doc)
        except OSError as exc:
            return Delivery(False, f"cannot write the sidecar: {exc.strerror or exc}")
        return Delivery(True, f"wrote {os.path.basename(written)}")

    async def _cleanup(self, job: HookJob) -> Delivery:
        note = job.note
        root = self.after.roots.get(job.root)
        if root is None or root.after_success == "keep":
            return Delivery(True, "kept: after_success is keep")
        record = await self.ledger.get_path(note.path)
        content = await self.ledger.get_content(note.sha256)
        if record is None or content is None or record.fingerprint is None:
            return Delivery(True, "kept: the ledger no longer tracks this file")
        try:
            current: Fingerprint | None = await asyncio.to_thread(Fingerprint.stat, note.path)
        except FileNotFoundError:
            current = None
        except OSError as exc:
            return Delivery(False, f"cannot stat the file: {exc.strerror or exc}")
        facts = Facts(
            path=note.path,
            root=job.root,
            state=content.state,
            remote_status=content.remote_status,
            hashed=record.fingerprint,
            current=current,
            superseded=record.sha256 != note.sha256 or record.state != "present",
            root_present=self.root_available(job.root),
        )
        decision = decide(facts, root.after_success, root.move_to)
        where = display_path(note.path)
        if decision.verb == "keep":
            if decision.report:
                log.warning("clean-up: kept %s: %s", where, decision.reason)
            return Delivery(True, f"kept: {decision.reason}")
        if decision.verb == "delete":
            would = "delete"
        else:
            would = f"move to {display_path(decision.target or '')}"
        if root.after_success_dry_run:
            log.info("clean-up (dry run): would %s %s", would, where)
            return Delivery(True, f"would {would}")
        intent = Intent(decision.verb, note.path, record.fingerprint, decision.target)
        # Committed before the file is touched: a crash from here on is finished or undone
        # at the next start (see recover).
        await self.ledger.after_job_acting(job.id, _intent_json(intent))
        failpoint("cleanup_committed")
        try:
            outcome = await asyncio.to_thread(carry_out, intent)
        except OSError as exc:
            return Delivery(False, f"cannot {would}: {exc.strerror or exc}")
        if not outcome.done:
            if outcome.report:
                log.warning("clean-up: kept %s: %s", where, outcome.reason)
            return Delivery(True, f"kept: {outcome.reason}")
        if intent.target is not None:
            await asyncio.to_thread(_carry_sidecar, note.path, intent.target)
        await self.ledger.mark_gone(note.path)
        log.info("clean-up: %s %s", outcome.reason, where)
        return Delivery(True, outcome.reason)


def _intent_json(intent: Intent) -> str:
    return json.dumps(
        {
            "verb": intent.verb,
            "path": os.fsencode(intent.path).hex(),
            "target": None if intent.target is None else os.fsencode(intent.target).hex(),
            "hashed": list(intent.hashed),
        }
    )


def _intent_from(text: str) -> Intent:
    data = json.loads(text)
    target = data["target"]
    return Intent(
        data["verb"],
        os.fsdecode(bytes.fromhex(data["path"])),
        Fingerprint(*data["hashed"]),
        None if target is None else os.fsdecode(bytes.fromhex(target)),
    )


def _carry_sidecar(path: str, target: str) -> None:
    """A moved file takes its sidecar along (when it has one and the place is free)."""
    old, new = sidecar_path(path), sidecar_path(target)
    with contextlib.suppress(FileNotFoundError):
        if not os.path.lexists(new):
            os.rename(old, new)


class AfterStage:
    """Makes the jobs from status changes and runs them: :meth:`recover` once at startup,
    then :meth:`run` until cancelled.

    Given the ledger, the settings and a callable that says whether a watched root is there
    (a vanished root is never cleaned up).
    """

    def __init__(
        self,
        ledger: AfterLedger,
        settings: AfterSettings,
        *,
        root_available: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.settings = settings
        self.runner = AfterRunner(ledger, settings, root_available=root_available, clock=clock)
        self.recovered: list[str] = []

    async def recover(self) -> None:
        """Finish or undo every clean-up a crash interrupted, saying which; start the
        watermark at the latest status change on the first run."""
        if await self.ledger.after_watermark() is None:
            await self.ledger.add_after_jobs([], await self.ledger.latest_status_change())
        if await self.ledger.after_watermark(FAILURES_KEY) is None:
            latest = await self.ledger.latest_failure()
            await self.ledger.add_after_jobs([], latest, FAILURES_KEY)
        for job in await self.ledger.acting_after_jobs():
            if job.intent is None:
                continue
            intent = _intent_from(job.intent)
            try:
                recovery = await asyncio.to_thread(resolve_interrupted, intent)
            except OSError as exc:
                log.error(
                    "clean-up of %s interrupted by a crash and still cannot be settled: %s",
                    display_path(job.path),
                    exc,
                )
                continue
            if recovery.result == "finished":
                outcome = recovery.reason
                if intent.target is not None:
                    await asyncio.to_thread(_carry_sidecar, intent.path, intent.target)
                await self.ledger.mark_gone(job.path)
            else:
                outcome = f"kept: {recovery.reason.removeprefix('kept: ')}"
            line = f"{display_path(job.path)}: {recovery.result} ({recovery.reason})"
            log.warning("clean-up interrupted by a crash, %s", line)
            self.recovered.append(line)
            await self.ledger.finish_after_job(job.id, "done", outcome=outcome, count_attempt=False)

    async def expand(self) -> int:
        """Turn the status changes past the watermark into jobs; returns how many changes
        were read (0: none is new)."""
        watermark = await self.ledger.after_watermark() or 0
        changes = await self.ledger.status_changes_after(watermark, _BATCH)
        if not changes:
            return 0
        jobs: list[NewAfterJob] = []
        for change in changes:
            if change.remote_status != "SUCCESS":
                continue
            for record in await self.ledger.present_paths_of(change.sha256):
                path = record.path
                root = self.settings.roots.get(record.root)
                if root is None:
                    continue
                kinds = self.settings.kinds_for(root)
                if record.sha256 != change.sha256:
                    # The file changed since: only its clean-up runs, to keep it and say so.
                    kinds = [k for k in kinds if k == "cleanup"]
                jobs.extend(
                    NewAfterJob(
                        change.id,
                        kind,
                        path,
                        record.root,
                        change.sha256,
                        change.asset_id,
                        change.remote_status,
                        change.at,
                    )
                    for kind in kinds
                )
        await self.ledger.add_after_jobs(jobs, changes[-1].id)
        if jobs:
            self.runner.wake()
        return len(changes)

    async def expand_failures(self) -> int:
        """Turn the failures past their watermark into ``on_failed`` and webhook jobs, one
        per path that held the content; returns how many failures were read."""
        watermark = await self.ledger.after_watermark(FAILURES_KEY) or 0
        failures = await self.ledger.failures_after(watermark, _BATCH)
        if not failures:
            return 0
        kinds = self.settings.kinds_for_failure()
        jobs: list[NewAfterJob] = []
        for failure in failures if kinds else []:
            for record in await self.ledger.present_paths_of(failure.sha256):
                if record.root not in self.roots:
                    continue
                path = record.path
                jobs.extend(
                    NewAfterJob(
                        -failure.id,
                        kind,
                        path,
                        record.root,
                        failure.sha256,
                        failure.asset_id,
                        failure.state,
                        failure.at,
                    )
                    for kind in kinds
                )
        await self.ledger.add_after_jobs(jobs, failures[-1].id, FAILURES_KEY)
        if jobs:
            self.runner.wake()
        return len(failures)

    async def idle(self) -> bool:
        """Whether every status change and failure is turned into jobs and no job runs or is
        due now (``sync --once`` stops then; a job retrying later waits for the next run)."""
        ledger = self.ledger
        if (await ledger.after_watermark() or 0) < await ledger.latest_status_change():
            return False
        if (await ledger.after_watermark(FAILURES_KEY) or 0) < await ledger.latest_failure():
            return False
        return not self.runner.running and not await ledger.due_after_jobs(1)

    @property
    def roots(self) -> Mapping[str, WatchRoot]:
        return self.settings.roots

    async def run(self) -> None:
        """Make and run jobs until cancelled."""
        runner = asyncio.create_task(self.runner.run(), name="after-runner")
        try:
            while True:
                read = await self.expand() + await self.expand_failures()
                if read == 0:
                    await asyncio.sleep(CHANGES_POLL_S)
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
