"""Scans: walks of a root, or of a folder in it, compared with the ledger, offered to settle.

Given the config, the ledger, the settler, the shared roots, the daemon's ``counters`` and a
``spawn`` callable, :meth:`Scans.start` walks a root (or one folder that appeared) in a task:
the walker thread (``scanner.py``) compares each folder with the ledger and hands on only what
is new or changed, which is offered to the settler; a full walk then marks what it did not find
as gone, unless the root is no longer the folder that was armed. Full scans of a root never
pile up (an overflow storm asks for one more, not fifty); ``rescan_loop`` rescans every root
every ``scan.rescan_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from syncd.config import Config
from syncd.display import display_path
from syncd.ingest.roots import Roots, RootState, same_root
from syncd.ingest.scanner import (
    KnownFiles,
    RootUnavailable,
    ScanEntry,
    ScanReport,
    scan_dir,
    scan_root,
)
from syncd.ingest.settle import Settler
from syncd.ledger.store import PathLedger

if TYPE_CHECKING:
    from syncd.ingest.stage import Counters, Spawn

log = logging.getLogger(__name__)


class Scans:
    """The scans of every root. Given the config, the open ledger, the settler, the shared
    ``roots``, ``counters`` (scanned, unchanged), ``spawn``, ``stopping()``, ``hashing`` (paths
    being hashed: a walk leaves them alone), ``known`` (opens the ledger's view for a walker
    thread) and ``pace(root)`` (what a walk of that root calls before each folder, or None)."""

    def __init__(
        self,
        cfg: Config,
        ledger: PathLedger,
        settler: Settler,
        roots: Roots,
        *,
        counters: Counters,
        spawn: Spawn,
        stopping: Callable[[], bool],
        hashing: Collection[str],
        known: Callable[[], KnownFiles],
        pace: Callable[[str], Callable[[], None] | None],
    ) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.settler = settler
        self.roots = roots
        self.counters = counters
        self._spawn = spawn
        self._stopping = stopping
        self._hashing = hashing
        self._known = known
        self._pace = pace
        self.running = 0  # walks in progress

    def idle(self) -> bool:
        """Whether no scan runs or is owed."""
        return not self.running and not any(s.scans for s in self.roots)

    async def rescan_loop(self) -> None:
        """Rescan every available root that is not being scanned, every
        ``scan.rescan_interval_s`` (never when it is 0). Runs until cancelled."""
        interval = self.cfg.scan.rescan_interval_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            for state in self.roots:
                if state.available and not state.scans:
                    self.start(state)

    def start(self, state: RootState, subdir: str | None = None) -> None:
        """Scan a root (or one folder in it) in a tracked task.

        Full scans of a root never pile up: asking for one while one runs (an inotify
        overflow, which a scan of a huge tree can itself cause) only asks for one more when
        it ends. That one starts at once; if it too is asked to repeat, the next waits as long
        as the last scan took (at most a minute), so a tree that overflows the queue on every
        walk is rescanned steadily, not in a storm.
        """
        if subdir is None and state.full_scan is not None:
            state.rescan_wanted = True
            return
        task = self._spawn(self._scan(state, subdir), f"scan {state.cfg.path}", critical=False)
        state.scans.add(task)
        follow_up = subdir is None and state.following_up
        if subdir is None:
            state.full_scan = task
            state.following_up = False
        started = time.monotonic()

        def done(t: asyncio.Task[None]) -> None:
            state.scans.discard(t)
            if state.full_scan is not t:
                return
            state.full_scan = None
            if state.rescan_wanted and not t.cancelled() and not self._stopping():
                state.rescan_wanted = False
                pause_s = min(60.0, time.monotonic() - started) if follow_up else 0.0
                state.pending_rescan = asyncio.get_running_loop().call_later(
                    pause_s, self._follow_up_scan, state
                )

        task.add_done_callback(done)

    def _follow_up_scan(self, state: RootState) -> None:
        state.pending_rescan = None
        if not self._stopping() and state.available and self.roots.get(state.cfg.path):
            state.following_up = True
            self.start(state)

    async def _scan(self, state: RootState, subdir: str | None = None) -> None:
        root = state.cfg
        started = time.time()
        t0 = time.monotonic()
        all_roots = [r.cfg.path for r in self.roots]
        # The walker thread compares each folder with the ledger (its own read-only
        # connection) and hands on only what is new or changed; an unchanged file costs a
        # stat and nothing else, and nothing is written for it.
        report = ScanReport()
        # Opening a watched folder queues inotify events of its own: the walk waits for room
        # in the kernel's queue before each folder, so it never overflows the queue itself.
        pace = self._pace(root.path)
        walker = (
            scan_root(
                root, state.filt, all_roots=all_roots, known=self._known, report=report, pace=pace
            )
            if subdir is None
            else scan_dir(
                root,
                state.filt,
                subdir,
                all_roots=all_roots,
                known=self._known,
                report=report,
                pace=pace,
            )
        )
        self.running += 1
        try:
            async with contextlib.aclosing(walker) as batches:
                async for batch in batches:
                    await self._offer_batch(batch)
        except RootUnavailable as exc:
            log.error("%s; will retry when it comes back", exc)
            state.available = False
            return
        finally:
            self.running -= 1
        seen, unchanged = report.seen, report.unchanged
        self.counters.scanned += seen
        self.counters.unchanged += unchanged
        if subdir is None and report.unreadable:
            # Files under a folder the walk could not read were not seen, not deleted.
            log.info(
                "not looking for deleted files under %s: %d folder(s) could not be read",
                display_path(root.path),
                len(report.unreadable),
            )
        elif subdir is None and not report.compared:
            log.info(
                "not looking for deleted files under %s: the scan could not read the ledger",
                display_path(root.path),
            )
        elif subdir is None and await same_root(state):
            gone = await self.ledger.mark_missing_gone(
                root.path, report.missing, report.vanished, started
            )
            if gone:
                log.info("%d file(s) under %s are gone since the last scan", gone, root.path)
        log.info(
            "scan of %s done: %d file(s), %d unchanged, %d to settle (%.2f s)",
            display_path(subdir or root.path),
            seen,
            unchanged,
            seen - unchanged,
            time.monotonic() - t0,
        )

    async def _offer_batch(self, batch: list[ScanEntry]) -> None:
        """Offer to settle what the walk found new or changed (it left out what the ledger
        has unchanged). A path back with the bytes it had when it went is made present
        again by the hasher's fingerprint check, without reading it."""
        for entry in batch:
            if entry.path not in self._hashing and self.roots.owns(entry.root, entry.path):
                await self.settler.offer(entry.path, entry.root, entry.fingerprint)
