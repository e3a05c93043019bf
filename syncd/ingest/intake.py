"""Intake: the watched roots, their events and their scans, up to the settler.

Given the config, the ledger, the settler and a ``spawn`` callable from the daemon (which owns
every task and stops the daemon when a critical one fails), the intake arms each root (checks
that it is there and still the same file system, watches it, scans it), turns the watcher's
events into settler calls and ledger marks (a file or folder gone), scans folders that appear
(once per tree, not once per level), rescans periodically and after an overflow, and keeps
checking that every root is still mounted. The walks themselves are ``scans.py``'s and the
roots' run-time state is ``roots.py``'s. It hands candidate paths to the settler and nothing
further: hashing and recording are the ingest stage's (``stage.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from syncd.config import Config, WatchRoot
from syncd.display import display_path
from syncd.errors import SyncdError
from syncd.ingest.pathfilter import PathFilter
from syncd.ingest.rootcheck import WatchError, root_available, root_identity
from syncd.ingest.roots import Roots, RootState, same_root
from syncd.ingest.scanner import KnownFiles
from syncd.ingest.scans import Scans
from syncd.ingest.settle import Settler
from syncd.ingest.watcher import FsEvent, Watcher
from syncd.ledger.store import PathLedger

if TYPE_CHECKING:
    from syncd.ingest.stage import Counters, Spawn

log = logging.getLogger(__name__)

# New folders are scanned once none has appeared for NEW_DIRS_QUIET_S, or NEW_DIRS_MAX_WAIT_S
# after the first: a tree created at once is then walked once, from its top.
NEW_DIRS_QUIET_S = 0.2
NEW_DIRS_MAX_WAIT_S = 1.0
ROOT_CHECK_S = 10.0


class Intake:
    """The roots, the watcher's events and the scans.

    Given the config, the open ledger, the settler, the shared ``roots``, the daemon's
    ``counters`` (events, scanned, unchanged), ``spawn`` (starts a task the daemon tracks),
    ``stopping()`` (whether the daemon is shutting down), ``hashing`` (the paths the ingest
    stage is hashing now: a scan leaves them alone), ``known`` (opens the ledger's view for a
    walker thread) and ``watch`` (False for ``sync --once``: scans only).
    """

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
        watch: bool,
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
        self._watch = watch
        self.watcher: Watcher | None = None
        self.scans = Scans(
            cfg,
            ledger,
            settler,
            roots,
            counters=counters,
            spawn=spawn,
            stopping=stopping,
            hashing=hashing,
            known=known,
            pace=self._pace_for,
        )
        self._armed = False  # every configured root was armed once (startup is over)
        self._events: asyncio.Queue[FsEvent] = asyncio.Queue()
        # Folders that appeared (created or moved in) per root, waiting to be scanned; when the
        # first and the last of them arrived (monotonic).
        self._new_dirs: dict[str, set[str]] = {}
        self._new_dirs_since = self._new_dirs_last = 0.0
        self._new_dirs_event = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle

    async def start(self, *, once: bool) -> None:
        """Start the event tasks, arm every configured root (watch it, scan it), then the
        periodic tasks (root monitor, rescans) unless ``once``. Raises what a root's first
        arming raises (SyncdError)."""
        if self._watch:
            self.watcher = Watcher(asyncio.get_running_loop(), self._events.put_nowait)
            self._spawn(self._event_loop(), "events")
            self._spawn(self._new_dirs_loop(), "new-folders")
        # Every root is known before any is watched or scanned: with nested roots, the outer
        # root's first events and scan must already leave the inner root's files to it.
        for state in [self._new_root(root) for root in self.cfg.watch]:
            await self._arm_root(state)
        self._armed = True
        if not once:
            self._spawn(self._root_monitor(), "root-monitor", critical=False)
            self._spawn(self.scans.rescan_loop(), "rescan", critical=False)

    async def stop(self) -> None:
        """Shutdown step one: no more events (the watcher's threads are stopped)."""
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.stop)

    def idle(self) -> bool:
        """Whether no scan runs or is owed."""
        return self.scans.idle()

    def _pace_for(self, root: str) -> Callable[[], None] | None:
        # Opening a watched folder queues inotify events of its own: a walk waits for room in
        # the kernel's queue before each folder, so it never overflows the queue itself.
        watcher = self.watcher
        if watcher is None:
            return None

        def pace() -> None:
            watcher.wait_for_room(root)

        return pace

    def watch_limit_hits(self) -> dict[str, int]:
        """Per root (normalised path), how often the kernel's watch limit was met."""
        return self.watcher.watch_limit_hits() if self.watcher is not None else {}

    async def reload(self, new: Config) -> None:
        """SIGHUP: stop watching the roots ``new`` drops, arm the ones it adds, and take the
        filters of the ones it changes. The caller swaps the config afterwards."""
        old_paths = {r.path for r in self.cfg.watch}
        new_paths = {r.path for r in new.watch}
        for path in old_paths - new_paths:
            state = self.roots.by_path.pop(path)
            for task in state.scans:
                task.cancel()
            self.settler.forget_root(path)
            await self._unwatch(state)
            log.info("SIGHUP: stopped watching %s", display_path(path))
        for root in new.watch:
            if root.path not in old_paths:
                await self._arm_root(self._new_root(root))
                log.info("SIGHUP: now watching %s", display_path(root.path))
            elif root != next(r for r in self.cfg.watch if r.path == root.path):
                self.roots[root.path].cfg = root
                self.roots[root.path].filt = PathFilter(root, new.settle.temp_patterns)
        self.cfg = new
        self.scans.cfg = new

    # ---------------------------------------------------------------- roots

    def _new_root(self, root: WatchRoot) -> RootState:
        state = RootState(root, PathFilter(root, self.cfg.settle.temp_patterns))
        self.roots.by_path[root.path] = state
        return state

    async def _unwatch(self, state: RootState) -> None:
        if self.watcher is not None and state.watched:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.watcher.remove_root, state.cfg.path)
        state.watched = False

    async def _arm_root(self, state: RootState) -> None:
        """Watch and scan a root if it is available; report it clearly (once) if not.

        A root that was armed before must come back as what it was (the same file system, or
        a mount point mounted again): an empty mount point left by an unmounted share is not
        the share, and scanning it would mark every file gone.
        """
        path = state.cfg.path
        available = await asyncio.to_thread(root_available, path, state.identity)
        identity = None
        problem = "not available"
        if available:
            try:
                identity = await asyncio.to_thread(root_identity, path)
            except WatchError as exc:
                available, problem = False, str(exc)
        elif state.identity is None:
            try:
                await asyncio.to_thread(root_identity, path)
            except WatchError as exc:
                problem = str(exc)
        else:
            problem = f"watched folder {display_path(path)} is not mounted or not the same folder"
        if not available or identity is None:
            if not state.reported:
                log.error(
                    "%s; its files are not taken as deleted (their ledger records stay as they "
                    "were) and syncd checks for it every %.0f s",
                    problem,
                    ROOT_CHECK_S,
                )
            state.available = False
            state.reported = True
            return
        if state.reported:
            log.info("watched folder %s is available again; rescanning", display_path(path))
        state.identity = state.identity or identity
        state.available = True
        state.reported = False
        if self.watcher is not None and not state.watched:
            try:
                await asyncio.to_thread(self.watcher.add_root, state.cfg)
                state.watched = True
            except WatchError as exc:
                log.error("%s; relying on periodic rescans for %s", exc, display_path(path))
        if self.cfg.scan.on_start or not self._watch or self._armed:
            self.scans.start(state)

    async def _root_monitor(self) -> None:
        while True:
            await asyncio.sleep(ROOT_CHECK_S)
            for state in self.roots:
                if state.available and not await same_root(state):
                    log.error(
                        "watched folder %s disappeared or was unmounted; its files are not "
                        "taken as deleted (their ledger records stay as they were)",
                        display_path(state.cfg.path),
                    )
                    state.available = False
                    self.settler.forget_root(state.cfg.path)
                    await self._unwatch(state)
                    state.reported = True
                elif not state.available:
                    await self._arm_root(state)

    # ---------------------------------------------------------------- events

    async def _event_loop(self) -> None:
        while True:
            ev = await self._events.get()
            self.counters.events += 1
            try:
                await self.handle_event(ev)
            except SyncdError as exc:
                log.error("event on %s: %s", display_path(ev.path), exc)

    async def _new_dirs_loop(self) -> None:
        """Scan new folders once they stop appearing for a moment (at most a second late)."""
        while True:
            await self._new_dirs_event.wait()
            while True:
                now = time.monotonic()
                due = min(
                    self._new_dirs_last + NEW_DIRS_QUIET_S,
                    self._new_dirs_since + NEW_DIRS_MAX_WAIT_S,
                )
                if now >= due:
                    break
                await asyncio.sleep(due - now)
            self._new_dirs_event.clear()
            self._scan_new_dirs()

    def _scan_new_dirs(self) -> None:
        """Scan each folder that appeared, once: one inside another that appeared too is left
        to the outer one's walk, which starts after both existed. A tree created at once
        (``mkdir -p``, a folder moved in) is then one walk, not one walk per level (a 200-level
        tree cost 20,000 folder reads, whose own events overflowed the kernel's queue)."""
        pending, self._new_dirs = self._new_dirs, {}
        for root, paths in pending.items():
            state = self.roots.get(root)
            if state is None or not state.available:
                continue
            for path in paths:
                if not _has_ancestor_in(path, paths):
                    self.scans.start(state, path)

    async def handle_event(self, ev: FsEvent) -> None:
        """Act on one watcher event: settle, scan, or mark gone. Raises SyncdError when the
        ledger cannot be written."""
        state = self.roots.get(ev.root) or self.roots.root_of(ev.path)
        if state is None:
            return
        kind = ev.kind
        if kind == "overflow":
            # The watcher logged it. Events were lost: the settler stops trusting what it had
            # derived about writers (/proc decides), and the rescan finds what was missed.
            self.settler.event(ev)
            self.scans.start(state)
            return
        if kind == "root_gone":
            # The watcher logged it with the fix; the root monitor re-arms it when it is back.
            state.available = False
            state.reported = True
            state.watched = False
            self.settler.forget_root(ev.root)
            if self.watcher is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.watcher.remove_root, ev.root)
            return
        if not self.roots.owns(state.cfg.path, ev.path):
            # Nested roots: the deeper root owns this path, and its own watch reports it.
            return
        if kind in ("dir_created", "dir_moved_to"):
            self._new_dirs_last = time.monotonic()
            if not self._new_dirs:
                self._new_dirs_since = self._new_dirs_last
            self._new_dirs.setdefault(state.cfg.path, set()).add(ev.path)
            self._new_dirs_event.set()
            return
        if kind == "dir_deleted":
            # A folder deleted or moved away: every file below it is gone (its contents stay).
            self.settler.event(ev)
            gone = await self.ledger.mark_gone_under(ev.path)
            if gone:
                log.info("%d file(s) under %s are gone", gone, display_path(ev.path))
            return
        if kind in ("deleted", "moved_from"):
            self.settler.forget(ev.path)
            await self.ledger.mark_gone(ev.path)
            return
        if not state.filt.accepts(ev.path):
            return
        self.settler.event(ev)


def _has_ancestor_in(path: str, paths: set[str]) -> bool:
    parent = os.path.dirname(path)
    while parent not in paths:
        above = os.path.dirname(parent)
        if above == parent:
            return False
        parent = above
    return True
