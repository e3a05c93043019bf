"""Completeness: a path is handed on only once it is quiet, stable and not open for writing.

One task drives a heap of deadlines (one live entry per tracked path, no timer per path). A
path is handed on (``on_settled``) when all of these hold:

- no content event (created, modified, attrib, closed_write, moved_to) for ``quiet_s``;
- two stats at least ``quiet_s / 2`` apart, the second ``quiet_s`` after the last event, are
  equal (device, inode, size, mtime, ctime), and the file is a regular file;
- the watcher's events do not show it open for writing (see below);
- no other local process holds it open for writing (``/proc``, through :class:`WriterCheck`,
  when one is given and ``/proc`` is readable; otherwise a one-time warning, and quiet time
  alone decides for files without event history).

Open for writing, from events (watchdog on Linux reports opened, modified, closed-after-write
and closed-without-write; ``IN_OPEN`` does not say for what): a path is *written* ("yes") from a
write seen after an open we counted, or from an open right after its creation, until a
close-after-write. A write whose open we never saw (the writer opened it before we tracked it;
or ``truncate(2)`` by path, which has no close) makes it *probably written* ("maybe"): that
blocks too, until a close-after-write or until ``/proc`` shows nobody writing it. A close
without write is a reader's: it only lowers the open count. Opens and closes without write do
not restart the clock and do not start tracking a path, so readers (syncd's own hasher among
them) neither delay a file for ever nor make it settle again. A writer found in ``/proc``
("proc") is asked about again every ``quiet_s``. ``max_wait_s`` after a path was first seen,
``on_unsettled`` gets the reason ("still open for writing since ..." or "still changing ...")
and the path is forgotten (a later event starts over).

One path's state and what is read from it alone (when to look again, why it waits) are in
:mod:`syncd.ingest.tracks`, the heap of deadlines in :mod:`syncd.ingest.deadlines`; the
``/proc`` walk is :mod:`syncd.ingest.writers`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from syncd import events
from syncd.display import display_path
from syncd.fingerprint import Fingerprint
from syncd.ingest.deadlines import Deadlines
from syncd.ingest.tracks import (
    Track,
    Writing,
    next_look,
    set_writing,
    stat_all,
    unsettled_reason,
    why,
)
from syncd.ingest.watcher import FsEvent
from syncd.ingest.writers import WriterCheck

log = logging.getLogger(__name__)

# Paths stat-ed in one round (one thread hop, one /proc walk).
BATCH_MAX: Final = 1000
# Shortest spacing between two stats or /proc checks of one path, whatever quiet_s is.
MIN_RECHECK_S: Final = 0.05
# How long a path whose stat fails (other than "gone") waits before the next try, at least.
ERROR_RETRY_S: Final = 1.0

LOST_CLOSE_MIN_S = 30.0
_CONTENT_EVENTS: Final = frozenset({"created", "modified", "attrib", "closed_write", "moved_to"})


@dataclass(frozen=True, slots=True)
class Settled:
    """A complete file: its path, the configured root it belongs to, and the stat that
    matched twice (what the hasher should find when it opens the file)."""

    path: str
    root: str
    fingerprint: Fingerprint


@dataclass(frozen=True, slots=True)
class Waiting:
    """A path still settling, for status displays: its path and root, since when it is
    tracked (wall-clock epoch seconds), whether it is held back as open for writing (and by
    which processes, when ``/proc`` told), and why it waits, in words."""

    path: str
    root: str
    since: float
    writing: Writing
    pids: tuple[int, ...]
    why: str


class Settler:
    """Decides when a file is complete; see the module docstring for the rule.

    Given ``quiet_s`` and ``max_wait_s`` (``settle.*``), the callbacks (``on_settled`` is
    awaited in the settle task, so a slow consumer slows settling down; ``on_unsettled`` gets
    path, root and reason while the path is still tracked, so :meth:`open_for_write` still
    lists it), the ``/proc`` writer check (``None`` disables it), the clock used for
    deadlines, and how many paths :meth:`offer` lets be tracked before it waits.

    Over ~300 lines because the event rules (:meth:`event`), the rounds (:meth:`_round`,
    :meth:`_finish`) and the scheduling all change the same tracks and the same heap, and the
    order of their checks is the rule; what is read from one track alone (when to look again,
    why it waits, why it was given up) is in :mod:`syncd.ingest.tracks`, and the timers in
    :mod:`syncd.ingest.deadlines`.
    """

    def __init__(
        self,
        *,
        quiet_s: float,
        max_wait_s: float,
        on_settled: Callable[[Settled], Awaitable[None]],
        on_unsettled: Callable[[str, str, str], Awaitable[None]],
        writers: WriterCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = 10000,
    ) -> None:
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self._half_s = max(quiet_s / 2, MIN_RECHECK_S)
        self._recheck_s = max(quiet_s, 2 * MIN_RECHECK_S)
        # How long a file taken as written may stay silent before /proc is asked instead.
        self._lost_close_s = max(LOST_CLOSE_MIN_S, 10 * quiet_s)
        self._on_settled = on_settled
        self._on_unsettled = on_unsettled
        self._writers = writers
        self._clock = clock
        self._max_tracked = max_tracked
        self._tracks: dict[str, Track] = {}
        self._deadlines = Deadlines(clock, self._is_live)
        self._room = asyncio.Event()
        self._room.set()
        self._running = False
        self._closed = False  # run() ended: nothing is tracked any more
        self._warned_blind = False
        # Roots that deliver open/close events (inotify): only there does a write whose open we
        # never saw promise a close-after-write later.
        self._open_close_roots: set[str] = set()
        # Roots whose symlinks are followed (``follow_symlinks: true``): their paths are
        # stat-ed through a final symlink; elsewhere a symlink is not a regular file.
        self.follow_symlink_roots: set[str] = set()

    # -- input --------------------------------------------------------------------------------

    def event(self, ev: FsEvent) -> None:
        """Take one watcher event (sync, on the loop). Content events (created, modified,
        attrib, closed_write, moved_to) start tracking a path or restart its clock; opened and
        closed_nowrite only count opens of tracked paths; deleted and moved_from forget the
        path, dir_deleted everything below the folder, root_gone everything of the root;
        overflow makes every tracked path of the root distrust its event history."""
        kind = ev.kind
        if self._closed:
            return
        if kind in ("deleted", "moved_from"):
            self.forget(ev.path)
            return
        if kind == "dir_deleted":
            prefix = ev.path.rstrip("/") + "/"
            for path in [p for p in self._tracks if p.startswith(prefix)]:
                self.forget(path)
            return
        if kind == "root_gone":
            self.forget_root(ev.root)
            return
        if kind == "overflow":
            self._overflow(ev.root)
            return
        tr = self._tracks.get(ev.path)
        if kind in ("opened", "closed_nowrite", "closed_write"):
            self._open_close_roots.add(ev.root)
        if kind in ("opened", "closed_nowrite"):
            if tr is None:
                return  # a reader of a file we do not track: a settled file being hashed, say
            if kind == "opened":
                tr.opens += 1
                if tr.after_create:
                    set_writing(tr, "yes")
                    tr.yes_by_create = True
            else:
                tr.opens = max(0, tr.opens - 1)
                if tr.opens == 0 and tr.yes_by_create:
                    # A writable descriptor closes with close_write, so the open after the
                    # creation was a reader's (a hard link being read, say): the guess was wrong.
                    set_writing(tr, "no")
            tr.after_create = False
            return
        if kind not in _CONTENT_EVENTS:
            return  # dir_created / dir_moved_to: the daemon scans the folder
        now = self._clock()
        if tr is None or kind in ("created", "moved_to"):
            # A new file, or a new inode under a tracked name: start from nothing.
            tr = Track(ev.path, ev.root, first_seen=now, last_event=now)
            self._tracks[ev.path] = tr
            self._update_room()
            events.publish("settling", path=ev.path, root=ev.root)
        tr.last_event = now
        tr.old_on_offer = False
        tr.after_create = kind == "created"
        if kind == "modified":
            if tr.opens > 0:
                set_writing(tr, "yes")
            elif tr.writing == "no" and ev.root in self._open_close_roots:
                set_writing(tr, "maybe")
        elif kind == "closed_write":
            tr.opens = max(0, tr.opens - 1)
            set_writing(tr, "no")
        self._schedule(tr)

    async def offer(self, path: str, root: str, fingerprint: Fingerprint) -> None:
        """Take a file found by a scan (no event history), with the stat the scan took.

        A file whose mtime is already ``quiet_s`` old is handed on at the next round if a
        second stat matches and no process writes it; otherwise it is tracked as if an event
        had just come. A path already tracked is left as it is. Waits while ``max_tracked``
        paths are tracked (backpressure on the scan)."""
        while len(self._tracks) >= self._max_tracked and path not in self._tracks:
            if self._closed:
                return
            self._room.clear()
            await self._room.wait()
        if path in self._tracks or self._closed:
            return
        now = self._clock()
        tr = Track(path, root, first_seen=now, last_event=now, probe=fingerprint, probe_at=now)
        tr.old_on_offer = time.time() - fingerprint.mtime_ns / 1e9 >= self.quiet_s
        self._tracks[path] = tr
        self._update_room()
        events.publish("settling", path=path, root=root)
        self._schedule(tr)

    def forget(self, path: str) -> None:
        """Stop tracking ``path`` (no-op if untracked)."""
        if self._tracks.pop(path, None) is not None:
            self._update_room()

    def forget_root(self, root: str) -> None:
        """Stop tracking every path of the root ``root`` (its configured path)."""
        for path in [p for p, tr in self._tracks.items() if tr.root == root]:
            del self._tracks[path]
        self._update_room()

    # -- state --------------------------------------------------------------------------------

    @property
    def settle_delay_s(self) -> float:
        """The soonest a path offered now is handed on, in seconds: ``quiet_s`` without
        changes, plus a second for the stats' spacing and the round that notices it."""
        return self.quiet_s + 1

    def tracked(self) -> int:
        """Return how many paths are waiting to settle."""
        return len(self._tracks)

    def open_for_write(self) -> dict[str, float]:
        """Return ``path -> since`` (wall-clock epoch seconds) for every tracked path held back
        because it is (or probably is) open for writing."""
        return {
            p: tr.writing_since
            for p, tr in self._tracks.items()
            if tr.writing != "no" and tr.writing_since is not None
        }

    def waiting(self, limit: int, offset: int = 0) -> tuple[int, list[Waiting]]:
        """Return how many paths are settling and ``limit`` of them from ``offset``, the
        longest-waiting first, each with why it waits."""
        now = self._clock()
        wall = time.time()
        tracks = sorted(self._tracks.values(), key=lambda t: (t.first_seen, t.path))
        page = [
            Waiting(
                tr.path,
                tr.root,
                wall - (now - tr.first_seen),
                tr.writing,
                tr.pids,
                why(tr, now, self.quiet_s),
            )
            for tr in tracks[offset : offset + limit]
        ]
        return len(tracks), page

    # -- the settle task ----------------------------------------------------------------------

    async def run(self) -> None:
        """Settle paths until cancelled; on the way out, every tracked path is dropped, waiting
        :meth:`offer` calls return, and later events and offers are ignored. Runs once."""
        if self._running or self._closed:
            raise RuntimeError("Settler.run runs once")
        self._running = True
        if self._writers is None:
            log.info(
                "settle.check_open_writers is off: files without open/close events are "
                "complete after %g s of quiet, whoever still holds them open",
                self.quiet_s,
            )
        try:
            while True:
                await self._deadlines.sleep_until_due()
                await self._round()
        finally:
            self._running = False
            self._closed = True
            self._tracks.clear()
            self._deadlines.clear()
            self._room.set()

    def _is_live(self, path: str, when: float) -> bool:
        """Whether a deadline is the one its path waits for (not forgotten or moved since)."""
        tr = self._tracks.get(path)
        return tr is not None and tr.scheduled == when

    async def _round(self) -> None:
        """Pop what is due, stat it in one thread hop, ask /proc once, hand on what is done."""
        now = self._clock()
        due: list[Track] = []
        while len(due) < BATCH_MAX and (path := self._deadlines.pop_due(now)) is not None:
            tr = self._tracks[path]
            tr.scheduled = math.inf
            due.append(tr)

        to_stat: list[Track] = []
        for tr in due:
            if now - tr.first_seen >= self.max_wait_s:
                await self._give_up(tr)
                continue
            if (
                tr.writing == "yes"
                and self._proc_usable()
                and now - tr.last_event >= self._lost_close_s
            ):
                set_writing(tr, "maybe")  # its close may have been lost: ask /proc
            if self._due(tr) <= now:
                to_stat.append(tr)
            else:
                self._schedule(tr)
        if not to_stat:
            return

        started = self._clock()
        items = [(tr.path, tr.root in self.follow_symlink_roots) for tr in to_stat]
        results = await asyncio.to_thread(stat_all, items)
        candidates: list[tuple[Track, Fingerprint]] = []
        for tr, res in zip(to_stat, results, strict=True):
            if self._tracks.get(tr.path) is not tr:
                continue  # forgotten or replaced meanwhile
            if tr.last_event > started:
                self._schedule(tr)  # an event came while we looked
                continue
            if res is None:
                log.debug("%s vanished before it settled", display_path(tr.path))
                self.forget(tr.path)
                continue
            if isinstance(res, str):
                log.debug(
                    "%s is %s, not a regular file; not handing it on", display_path(tr.path), res
                )
                self.forget(tr.path)
                continue
            if isinstance(res, OSError):
                tr.error = res.strerror or str(res)
                tr.probe = None
                tr.not_before = started + max(ERROR_RETRY_S, self._half_s)
                log.debug("cannot stat %s: %s", display_path(tr.path), tr.error)
                self._schedule(tr)
                continue
            tr.error = None
            if res == tr.probe and (
                tr.old_on_offer
                or (
                    started - tr.last_event >= self.quiet_s
                    and started - tr.probe_at >= self._half_s - 1e-9
                )
            ):
                candidates.append((tr, res))
                continue
            if res != tr.probe:
                tr.probe = res
                tr.probe_at = started
                tr.old_on_offer = False
            self._schedule(tr)
        if candidates:
            await self._finish(candidates, started)

    async def _finish(self, candidates: list[tuple[Track, Fingerprint]], started: float) -> None:
        """Ask /proc about the candidates, then hand on those nobody writes."""
        found: dict[str, list[int]] = {}
        walked = False
        if self._writers is not None and self._writers.available:
            found = await self._writers.writers({tr.path: fp for tr, fp in candidates})
            walked = True
        elif self._writers is not None and not self._warned_blind:
            # The WriterCheck logged why /proc is unusable; say once what that means here.
            self._warned_blind = True
            log.warning(
                "no open-for-writing check (/proc unusable): files found by a scan or on a "
                "polling root are complete after %g s of quiet alone",
                self.quiet_s,
            )
        checked = self._clock()
        clear: list[tuple[Track, Fingerprint]] = []
        for tr, fp in candidates:
            if self._tracks.get(tr.path) is not tr:
                continue
            if tr.last_event > started or tr.writing == "yes":
                self._schedule(tr)
                continue
            pids = found.get(tr.path)
            if pids:
                if tr.writing != "proc" or tuple(pids) != tr.pids:
                    log.info(
                        "%s is open for writing by process %s; waiting for it to close",
                        display_path(tr.path),
                        ", ".join(map(str, pids)),
                    )
                set_writing(tr, "proc")
                tr.pids = tuple(pids)
                tr.proc_checked_at = checked
                self._schedule(tr)
                continue
            if tr.writing == "maybe" and not self._proc_usable():
                self._schedule(tr)  # blocked until its close: nothing can clear it otherwise
                continue
            clear.append((tr, fp))
        if walked and clear:
            clear = await self._unchanged_since_walk(clear, checked)
        for tr, fp in clear:
            if self._tracks.get(tr.path) is not tr:
                continue
            del self._tracks[tr.path]
            self._update_room()
            events.publish("settled", path=tr.path, size=fp.size)
            try:
                await self._on_settled(Settled(tr.path, tr.root, fp))
            except Exception:
                log.exception("handing on %s failed", display_path(tr.path))

    async def _unchanged_since_walk(
        self, clear: list[tuple[Track, Fingerprint]], checked: float
    ) -> list[tuple[Track, Fingerprint]]:
        """Stat again the files /proc found nobody writing; keep those still as they were.

        The walk takes time: a writer can finish its work and close the file after the first
        stat but before the walk looks, so "no writer now" proves only that the file, as it is
        now, is complete. A file whose stat changed since goes back to settling with its new
        fingerprint (never handed on with the old, shorter one)."""
        items = [(tr.path, tr.root in self.follow_symlink_roots) for tr, _ in clear]
        results = await asyncio.to_thread(stat_all, items)
        kept: list[tuple[Track, Fingerprint]] = []
        for (tr, fp), res in zip(clear, results, strict=True):
            if self._tracks.get(tr.path) is not tr:
                continue
            if res == fp:
                kept.append((tr, fp))
                continue
            log.debug("%s changed while /proc was read; settling it again", display_path(tr.path))
            if tr.writing == "proc":
                set_writing(tr, "no")  # its writer is gone; quiet time decides again
            if isinstance(res, Fingerprint):
                tr.probe = res
                tr.probe_at = checked
                tr.old_on_offer = False
            else:
                tr.probe = None  # gone or changed kind: the next round's stat says which
            self._schedule(tr)
        return kept

    async def _give_up(self, tr: Track) -> None:
        reason = unsettled_reason(tr, self.max_wait_s)
        events.publish("problem", kind="unsettled", path=tr.path, reason=reason)
        try:
            await self._on_unsettled(tr.path, tr.root, reason)
        except Exception:
            log.exception("recording that %s never settled failed", display_path(tr.path))
        if self._tracks.get(tr.path) is tr:
            del self._tracks[tr.path]
            self._update_room()

    # -- scheduling ---------------------------------------------------------------------------

    def _proc_usable(self) -> bool:
        return self._writers is not None and self._writers.available

    def _due(self, tr: Track) -> float:
        """When ``tr`` should next be looked at (settler clock)."""
        return next_look(
            tr,
            quiet_s=self.quiet_s,
            max_wait_s=self.max_wait_s,
            half_s=self._half_s,
            recheck_s=self._recheck_s,
            lost_close_s=self._lost_close_s,
            proc_usable=self._proc_usable(),
        )

    def _schedule(self, tr: Track) -> None:
        when = self._due(tr)
        if when >= tr.scheduled:
            return  # its live entry comes first; it is re-evaluated then
        tr.scheduled = when
        self._deadlines.push(tr.path, when)

    def _overflow(self, root: str) -> None:
        # Events were lost: counts and "written" are no longer trustworthy. /proc (or quiet
        # time) decides from here; a later event rebuilds the picture.
        for tr in self._tracks.values():
            if tr.root != root:
                continue
            tr.opens = 0
            tr.after_create = False
            if tr.writing == "yes":
                set_writing(tr, "maybe")
            self._schedule(tr)

    def _update_room(self) -> None:
        if len(self._tracks) < self._max_tracked:
            self._room.set()
