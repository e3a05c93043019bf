"""File system events from the watched roots, delivered to the asyncio loop.

One watchdog observer per root: inotify (one inotify instance per root) or, for ``polling:
true`` roots (NFS/SMB deliver no inotify events for changes made elsewhere), watchdog's
polling observer. Observer threads never touch loop state: they append :class:`FsEvent` to a
locked list and schedule one drain with ``loop.call_soon_threadsafe``; the drain calls
``on_event`` in the loop thread, in order.

Beyond watchdog's own events, the inotify observer reports what watchdog 7 drops silently:
the kernel's queue overflow (``overflow``: events were lost, rescan), the root moved away
(``IN_MOVE_SELF``) or its file system unmounted (``IN_UNMOUNT``), both as ``root_gone``, and
running out of inotify watches while adding a new sub-folder (logged, with the fix).
A monitor thread also checks every root's identity (exists, is a folder, same inode, still the
same mount) every few seconds, which catches a vanished root on any observer. A polling root's
deletions are only passed on while the root is still the folder that was added, so an
unmounted share (whose mount point then looks empty) reads as ``root_gone``, never as "every
file was deleted".

The inotify observer is built on watchdog 7's internals, kept in one private module
(``_inotify.py``, which the pin ``watchdog>=7.1,<8`` is for); this module uses only watchdog's
public events and observers besides it. What a root is, whether it is still that folder and
the one-line :class:`~syncd.ingest.rootcheck.WatchError` for one that cannot be watched are
blocking checks that need no observer, in :mod:`syncd.ingest.rootcheck`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from syncd.config import WatchRoot
from syncd.display import display_path
from syncd.ingest._inotify import JOIN_TIMEOUT_S, InotifyObserver, Overflow
from syncd.ingest.rootcheck import (
    RootIdentity,
    WatchError,
    identity_problem,
    limit_message,
    network_filesystem,
    root_available,
    root_identity,
    watch_error,
)

log = logging.getLogger(__name__)

EventKind = Literal[
    "created",
    "modified",
    "attrib",
    "opened",
    "closed_write",
    "closed_nowrite",
    "moved_from",
    "moved_to",
    "deleted",
    "dir_created",
    "dir_moved_to",
    "dir_deleted",
    "overflow",
    "root_gone",
]

# How long observer and monitor threads get to stop before they are left behind: JOIN_TIMEOUT_S
# (daemon threads: one stuck in a hung network call must not hold up shutdown).
# A polling root's identity, checked before its deletions are passed on, is reused this long.
_IDENTITY_TTL_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class FsEvent:
    """One file system event.

    ``path`` is absolute, in ``os.fsdecode`` form (surrogate escapes), so every on-disk name
    round-trips through ``os.fsencode``; ``root`` is the :class:`WatchRoot` ``path`` it belongs
    to. For ``overflow`` and ``root_gone``, ``path`` is the root's (normalised) path.
    """

    kind: EventKind
    path: str
    root: str


@dataclass(eq=False)
class _Root:
    config: WatchRoot
    path: str  # normalised
    token: int
    identity: RootIdentity
    observer: BaseObserver | None = None
    gone: bool = False
    started: bool = False
    limit_hits: int = 0
    checked_at: float = field(default=-1e18)
    problem: str | None = None  # of the last identity check (polling roots)


class Watcher:
    """Watches roots and hands their events to ``on_event`` on the given loop.

    Given the loop that must run ``on_event`` and the callback; optionally the polling
    interval of ``polling: true`` roots and how often every root's identity is checked.
    ``add_root``, ``remove_root`` and ``stop`` block (they walk the tree to add watches and
    join threads): call them in a thread (``asyncio.to_thread``); they are thread-safe.

    Just over ~300 lines: the root registry, the observers' callbacks and the monitor thread
    share one lock and one list of pending events, which is what makes it thread-safe.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[FsEvent], None],
        *,
        poll_interval_s: float = 2.0,
        check_interval_s: float = 2.0,
    ) -> None:
        self._loop = loop
        self._on_event = on_event
        self._poll_interval_s = poll_interval_s
        self._check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._roots: dict[str, _Root] = {}
        self._active: set[int] = set()
        self._tokens = itertools.count(1)
        self._pending: list[tuple[int, FsEvent]] = []
        self._drain_scheduled = False
        self._teardown: list[BaseObserver] = []
        self._kick = threading.Event()
        self._stopping = False
        self._monitor: threading.Thread | None = None

    # -- public API ---------------------------------------------------------------------------

    def add_root(self, root: WatchRoot) -> None:
        """Start watching ``root`` (again, if it was watched before: the old watch is dropped).

        Raises :class:`WatchError` when the root is missing, not a folder, unreadable, or an
        inotify limit (watches: ``ENOSPC``; instances: ``EMFILE``) is reached; nothing is left
        running then. Blocks while watches are added (a walk of the whole tree for inotify, a
        first snapshot for polling).
        """
        path = os.path.normpath(root.path)
        if not os.path.isabs(path):
            raise WatchError(
                root.path,
                f"watched folder {display_path(root.path)} is not an absolute path; "
                "write it from / in watch[].path",
                "not_absolute",
            )
        identity = root_identity(path)
        if not root.polling:
            fs_type = network_filesystem(path)
            if fs_type:
                log.warning(
                    "watched folder %s is on %s: inotify sees only changes made on this "
                    "machine; set `polling: true` for it and a longer settle.quiet_s (30 s or "
                    "more), because a writer on another machine is invisible to syncd",
                    display_path(path),
                    fs_type,
                )
        with self._lock:
            if self._stopping:
                raise WatchError(path, "the watcher is stopped", "failed")
            old = self._roots.pop(path, None)
            if old is not None:
                self._active.discard(old.token)
            entry = _Root(root, path, next(self._tokens), identity)
            self._active.add(entry.token)
        if old is not None and old.observer is not None:
            _shutdown(old.observer)
        try:
            observer = self._make_observer(entry)
            entry.observer = observer
            observer.schedule(
                _Handler(self, entry),
                path,
                recursive=root.recursive,
                follow_symlink=root.follow_symlinks,
            )
            observer.start()
            if entry.limit_hits:
                raise OSError(errno.ENOSPC, "inotify watch limit reached")
        except BaseException as exc:
            with self._lock:
                self._active.discard(entry.token)
            if entry.observer is not None:
                _shutdown(entry.observer)
            if isinstance(exc, OSError):
                raise watch_error(path, exc) from None
            raise
        with self._lock:
            entry.started = True
            self._roots[path] = entry
            if self._monitor is None:
                self._monitor = threading.Thread(
                    target=self._monitor_loop, name="syncd-watch-monitor", daemon=True
                )
                self._monitor.start()
        log.info(
            "watching %s (%s%s)",
            display_path(path),
            "polling" if root.polling else "inotify",
            ", recursive" if root.recursive else "",
        )

    def remove_root(self, path: str) -> None:
        """Stop watching the root at ``path`` (as configured or normalised); no-op if unknown.
        Blocks until its observer threads have stopped (at most a few seconds)."""
        with self._lock:
            entry = self._roots.pop(os.path.normpath(path), None)
            if entry is None:
                return
            self._active.discard(entry.token)
        if entry.observer is not None:
            _shutdown(entry.observer)

    def stop(self) -> None:
        """Stop every observer and the monitor thread and wait for them. Idempotent."""
        with self._lock:
            self._stopping = True
            entries = list(self._roots.values())
            self._roots.clear()
            self._active.clear()
            monitor = self._monitor
        self._kick.set()
        for entry in entries:
            if entry.observer is not None:
                _shutdown(entry.observer)
        if monitor is not None:
            monitor.join(JOIN_TIMEOUT_S)
        with self._lock:
            leftovers, self._teardown = self._teardown, []
        for observer in leftovers:
            _shutdown(observer)

    def roots(self) -> dict[str, bool]:
        """Return ``normalised root path -> gone`` for every root added and not removed."""
        with self._lock:
            return {p: e.gone for p, e in self._roots.items()}

    def watch_limit_hits(self) -> dict[str, int]:
        """Return ``normalised root path -> folders left unwatched`` because the inotify watch
        limit was reached (0 for a root watched whole)."""
        with self._lock:
            return {p: e.limit_hits for p, e in self._roots.items()}

    def is_available(self, path: str) -> bool:
        """Whether a root (gone or not) is usable again: it exists, is a folder, and is a
        mount point if it was one when added (else on the same file system as then).
        Blocking (one or two ``stat`` calls); False for an unknown root."""
        with self._lock:
            entry = self._roots.get(os.path.normpath(path))
        if entry is None:
            return False
        return root_available(entry.path, entry.identity)

    def wait_for_room(self, path: str) -> None:
        """Block while the inotify queue of the root at ``path`` is more than a quarter full
        (at most a couple of seconds per call). Walkers of that root (the scanner) call it
        before each folder they open: opening folders queues events of its own, and a walk
        that outruns the reading thread overflows the queue. No-op for polling or unknown
        roots; never call it from an observer thread."""
        with self._lock:
            entry = self._roots.get(os.path.normpath(path))
        observer = entry.observer if entry is not None else None
        if isinstance(observer, InotifyObserver):
            observer.inotify.wait_for_room()

    # -- observers ----------------------------------------------------------------------------

    def _make_observer(self, entry: _Root) -> BaseObserver:
        if entry.config.polling:
            return PollingObserver(timeout=self._poll_interval_s)
        return InotifyObserver(_Hooks(self, entry))

    # -- from observer threads ----------------------------------------------------------------

    def _from_watchdog(self, entry: _Root, event: FileSystemEvent) -> None:
        """In an observer thread: translate one watchdog event and post it."""
        if isinstance(event, Overflow):
            self._overflow(entry)
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path)
        kind = event.event_type
        is_dir = event.is_directory
        out: list[tuple[EventKind, str]] = []
        if isinstance(event, FileSystemMovedEvent):
            if src:
                out.append(("dir_deleted" if is_dir else "moved_from", src))
            if dest:
                out.append(("dir_moved_to" if is_dir else "moved_to", dest))
        elif kind == EVENT_TYPE_DELETED:
            if is_dir and os.path.normpath(src) == entry.path:
                self._mark_gone(entry, "it was deleted")
                return
            out.append(("dir_deleted" if is_dir else "deleted", src))
        elif kind == EVENT_TYPE_CREATED:
            out.append(("dir_created" if is_dir else "created", src))
        elif is_dir:
            return  # a folder's own modified/attrib events say nothing about its files
        elif kind == EVENT_TYPE_MODIFIED:
            out.append(("modified", src))
        elif kind == EVENT_TYPE_ATTRIB:
            out.append(("attrib", src))
        elif kind == EVENT_TYPE_OPENED:
            out.append(("opened", src))
        elif kind == EVENT_TYPE_CLOSED:
            out.append(("closed_write", src))
        elif kind == EVENT_TYPE_CLOSED_NO_WRITE:
            out.append(("closed_nowrite", src))
        if not out:
            return
        losing = any(k in ("deleted", "dir_deleted", "moved_from") for k, _ in out)
        if entry.config.polling and losing:
            # An unmounted share leaves an empty mount point behind: the poller then sees every
            # file "deleted". Only a root that is still the folder we added can lose files.
            problem = self._polling_identity_problem(entry)
            if problem:
                self._mark_gone(entry, problem)
                return
        self._post([(entry.token, FsEvent(k, p, entry.config.path)) for k, p in out], entry)

    def _polling_identity_problem(self, entry: _Root) -> str | None:
        now = time.monotonic()
        if now - entry.checked_at > _IDENTITY_TTL_S:
            entry.problem = identity_problem(entry.path, entry.identity)
            entry.checked_at = now
        return entry.problem

    def _post(self, items: list[tuple[int, FsEvent]], entry: _Root | None = None) -> None:
        """Thread-safe: queue events for the loop and make sure one drain is scheduled."""
        with self._lock:
            if entry is not None and entry.gone:
                return
            self._pending.extend(items)
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more

    def _mark_gone(self, entry: _Root, why: str) -> None:
        """Thread-safe: report the root gone once and have its observer shut down."""
        with self._lock:
            if entry.gone or entry.token not in self._active:
                return
            entry.gone = True
            if entry.observer is not None:
                self._teardown.append(entry.observer)
        log.warning(
            "watched folder %s is gone (%s); its files keep their records and are not taken "
            "as deleted. Fix: mount or restore it; syncd watches it again once it is back",
            display_path(entry.path),
            why,
        )
        self._post([(entry.token, FsEvent("root_gone", entry.path, entry.config.path))])
        self._kick.set()

    def _overflow(self, entry: _Root) -> None:
        log.warning(
            "the kernel dropped file events for %s (inotify queue overflow); rescanning it. "
            "If this repeats, raise fs.inotify.max_queued_events (sysctl)",
            display_path(entry.path),
        )
        self._post([(entry.token, FsEvent("overflow", entry.path, entry.config.path))], entry)

    def _watch_limit(self, entry: _Root, path: str) -> None:
        entry.limit_hits += 1
        if entry.limit_hits == 1 and entry.started:
            log.error(
                "%s; changes in %s are seen only by the periodic rescan",
                limit_message(entry.path),
                display_path(path),
            )

    # -- in the loop --------------------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
            self._drain_scheduled = False
            active = set(self._active)
        for token, ev in items:
            if token not in active:
                continue  # from a root removed meanwhile
            try:
                self._on_event(ev)
            except Exception:
                log.exception("handling %s %s failed", ev.kind, display_path(ev.path))

    # -- monitor thread -----------------------------------------------------------------------

    def _monitor_loop(self) -> None:
        while True:
            self._kick.wait(self._check_interval_s)
            self._kick.clear()
            with self._lock:
                stopping = self._stopping
                dead, self._teardown = self._teardown, []
                live = [e for e in self._roots.values() if not e.gone]
            for observer in dead:
                _shutdown(observer)
            if stopping:
                return
            for entry in live:
                problem = identity_problem(entry.path, entry.identity)
                if problem:
                    self._mark_gone(entry, problem)


class _Handler(FileSystemEventHandler):
    """Runs in the observer's dispatch thread; hands every event to the watcher."""

    def __init__(self, watcher: Watcher, entry: _Root) -> None:
        self._watcher = watcher
        self._entry = entry

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._watcher._from_watchdog(self._entry, event)
        except Exception:
            # An exception would kill the observer thread and every later event with it.
            log.exception("cannot handle a file event under %s", display_path(self._entry.path))


class _Hooks:
    """What the inotify threads report beyond watchdog's events (called from those threads)."""

    def __init__(self, watcher: Watcher, entry: _Root) -> None:
        self.watcher = watcher
        self.entry = entry

    def root_gone(self, why: str) -> None:
        self.watcher._mark_gone(self.entry, why)

    def watch_limit(self, path: str) -> None:
        self.watcher._watch_limit(self.entry, path)


def _shutdown(observer: BaseObserver) -> None:
    """Stop an observer (started or not) and wait a bounded time for its threads."""
    try:
        observer.stop()
    except Exception:
        log.exception("stopping a file observer failed")
    with contextlib.suppress(RuntimeError):  # never started
        observer.join(JOIN_TIMEOUT_S)
    if observer.is_alive():
        log.warning("a file observer did not stop within %.0f s; leaving it", JOIN_TIMEOUT_S)
