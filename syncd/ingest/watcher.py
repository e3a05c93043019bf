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

This module relies on watchdog 7's inotify internals (``InotifyFD``, ``InotifyWatchGroup``,
``InotifyFullEmitter``); pin ``watchdog>=7.1,<8``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import itertools
import logging
import math
import os
import stat
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

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
from watchdog.observers.api import BaseObserver, EventQueue, ObservedWatch
from watchdog.observers.inotify import InotifyFullEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchCallback,
    WatchDescriptor,
)
from watchdog.observers.inotify_move_event_grouper import PathedInotifyEvent
from watchdog.observers.polling import PollingObserver

from syncd.config import WatchRoot
from syncd.errors import EXIT_CONFIG, SyncdError
from syncd.ingest.pathfilter import display_path

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

# File systems on which inotify sees only the changes made by this machine.
NETWORK_FS_TYPES: Final = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "9p",
        "virtiofs",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.davfs",
        "davfs",
    }
)

# How long observer and monitor threads get to stop before they are left behind (daemon threads:
# one stuck in a hung network call must not hold up shutdown).
JOIN_TIMEOUT_S: Final = 5.0
# A polling root's identity, checked before its deletions are passed on, is reused this long.
_IDENTITY_TTL_S: Final = 1.0
# Walks that open folders (adding watches, reconciling them after an overflow, the daemon's
# scans) cause events of their own: opening and closing a watched folder queues four (on the
# folder's own watch and on its parent's, IN_OPEN and IN_CLOSE_NOWRITE). A walk outruns the
# thread that reads them, so on a tree of a few thousand folders it overflowed the kernel's
# queue by itself, and watchdog's recovery (a walk of the whole tree in the reading thread)
# overflowed it again, for ever. Walks therefore wait while the queue is more than this
# fraction full (measured in bytes, 16 per event at least: an overestimate of the events).
_ROOM_FRACTION: Final = 0.25
_ROOM_POLL_S: Final = 0.002
# A walk waits at most this long per folder for room, so a stalled reader cannot stall it;
# after such a wait, walks do not wait at all for a while (at most a fifth of their time).
_ROOM_WAIT_MAX_S: Final = 2.0
_ROOM_UNPACED_S: Final = 10.0
_INOTIFY_EVENT_BYTES: Final = 16
# A folder opened or closed without writing: what every walk causes, syncd's own included.
_FOLDER_OPEN_CLOSE: Final = frozenset(
    {
        InotifyConstants.IN_ISDIR | InotifyConstants.IN_OPEN,
        InotifyConstants.IN_ISDIR | InotifyConstants.IN_CLOSE_NOWRITE,
    }
)


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


WatchErrorReason = Literal[
    "missing", "not_dir", "denied", "watch_limit", "instance_limit", "not_absolute", "failed"
]


class WatchError(SyncdError):
    """A root cannot be watched. One line naming the folder, the problem and the fix.

    Given the root's path, the message, and a machine-readable ``reason``.
    """

    exit_code = EXIT_CONFIG

    def __init__(self, path: str, message: str, reason: WatchErrorReason = "failed") -> None:
        self.path = path
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class RootIdentity:
    """What a root was when it was added: its device and inode, and whether it was a mount
    point (on another file system than its parent folder)."""

    dev: int
    ino: int
    mountpoint: bool


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
                raise _watch_error(path, exc) from None
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
        if isinstance(observer, _InotifyObserver):
            observer.inotify.wait_for_room()

    # -- observers ----------------------------------------------------------------------------

    def _make_observer(self, entry: _Root) -> BaseObserver:
        if entry.config.polling:
            return PollingObserver(timeout=self._poll_interval_s)
        return _InotifyObserver(_Hooks(self, entry))

    # -- from observer threads ----------------------------------------------------------------

    def _from_watchdog(self, entry: _Root, event: FileSystemEvent) -> None:
        """In an observer thread: translate one watchdog event and post it."""
        if isinstance(event, _Overflow):
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
            entry.problem = _identity_problem(entry.path, entry.identity)
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
                _limit_message(entry.path),
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
                problem = _identity_problem(entry.path, entry.identity)
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


class _CountingInotifyFD(InotifyFD):
    """An inotify instance that reports ``ENOSPC`` on any watch (watchdog swallows it for
    sub-folders, which would leave them silently unwatched)."""

    def __init__(self, hooks: _Hooks) -> None:
        self._hooks = hooks
        super().__init__()
        max_events = _sysctl("fs.inotify.max_queued_events") or 16384
        self._room_bytes = int(max_events * _ROOM_FRACTION) * _INOTIFY_EVENT_BYTES
        self._unpaced_until = -math.inf  # after a wait that timed out, walks go unpaced

    def backlog_bytes(self) -> int:
        """Bytes of events queued in the kernel and not read yet (``FIONREAD``). Raises
        OSError once the instance is closed."""
        buf = array.array("i", [0])
        fcntl.ioctl(self._inotify_fd, termios.FIONREAD, buf, True)
        return buf[0]

    def wait_for_room(self) -> None:
        """Block while the queue is more than a quarter full, at most ``_ROOM_WAIT_MAX_S``.
        Returns at once in the reading thread itself (it would wait for itself)."""
        if threading.current_thread() is self:
            return
        now = time.monotonic()
        if now < self._unpaced_until:
            return
        deadline = now + _ROOM_WAIT_MAX_S
        while True:
            try:
                if self.backlog_bytes() <= self._room_bytes:
                    return
            except OSError:
                return  # closed: nothing is read any more, nothing to wait for
            now = time.monotonic()
            if now >= deadline:
                # The queue does not drain (a storm of events from elsewhere): waiting more
                # would stall walks for nothing, and an overflow is recovered from anyway.
                self._unpaced_until = now + _ROOM_UNPACED_S
                return
            time.sleep(_ROOM_POLL_S)

    def add_callback(
        self, path: bytes, mask: Mask, callback: WatchCallback, id_: CallbackId
    ) -> WatchDescriptor:
        try:
            return super().add_callback(path, mask, callback, id_)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._hooks.watch_limit(os.fsdecode(path))
            raise

    def _add_callback(
        self, path: bytes, mask: Mask, callback: WatchCallback, id_: CallbackId
    ) -> WatchDescriptor:
        # watchdog warns (RuntimeWarning, on stderr) whenever a group's callback is added to
        # a folder it watches already. That is routine: a tree created at once (mkdir -p, a
        # folder moved in) is walked when its top appears, and then each sub-folder's own
        # creation event adds it again. Putting the same callback back changes nothing.
        watch = self._get_or_create_watch(path, mask)
        watch.callbacks[id_] = callback
        wd: WatchDescriptor = watch.wd
        return wd


@dataclass
class _WatchGroup(InotifyWatchGroup):
    """watchdog's watch group, plus root moves, unmounts and queue overflows.

    With ``follow_symlink``, watchdog walks folders with ``os.walk(followlinks=True)``, which
    never remembers where it has been: two symlinks back up the tree make that walk
    exponential (it only ends at the kernel's 40-link limit), so adding the root never
    returns. Here each walk enters a folder once (by device and inode), skips folders that are
    watched already, and the simulated events for a new folder only walk watched folders and
    report links to folders as plain entries.
    """

    hooks: _Hooks | None = None
    # Folders watched through this group by (device, inode), with the path they were added
    # under (follow_symlink only: it is how a second route to a watched folder is recognised).
    _watched_keys: dict[tuple[int, int], bytes] = field(default_factory=dict)
    # The reconciling thread after an overflow (one at a time) and whether another is due.
    _reconciler: threading.Thread | None = None
    _reconcile_again: bool = False

    def _pace(self) -> None:
        fd = self._inotify_fd
        if isinstance(fd, _CountingInotifyFD):
            fd.wait_for_room()

    def _add_callback(self, path: bytes) -> None:
        super()._add_callback(path)
        if self.follow_symlink and path in self._active_callbacks_by_path:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                self._watched_keys[(st.st_dev, st.st_ino)] = path

    def _watched_elsewhere(self, key: tuple[int, int], path: bytes) -> bool:
        known = self._watched_keys.get(key)
        if known is None or known == path:
            return False
        try:
            st = os.stat(known)
        except OSError:
            return False  # that folder is gone: the inode number may have been reused
        return (st.st_dev, st.st_ino) == key

    def _activate(self) -> None:
        # watchdog holds the group's lock for the whole first walk, so the reading thread
        # cannot handle one event meanwhile and a big tree's own open/close events overflow
        # the queue before syncd has started. Here the lock is taken per folder added and the
        # walk waits for room in the queue.
        with self._lock:
            if self.is_active:
                return
            self._add_callback(self.path)  # raises when the root itself cannot be watched
            self._is_active = True
        if self.is_recursive:
            self._add_tree(self.path, skip=set())

    def _add_all_callbacks(self, path: bytes) -> None:
        # Called by watchdog with the lock held (a new folder, in the reading thread).
        if not self.is_recursive:
            super()._add_all_callbacks(path)
            return
        for folder in self._folders(path, pace=False):
            self._add_callback(folder)

    def _add_tree(self, path: bytes, *, skip: set[bytes]) -> int:
        """Without the lock held: watch every folder under ``path`` (not those in ``skip``),
        taking the lock per folder and waiting for room in the queue before each folder the
        walk opens. Returns how many folders were added."""
        added = 0
        for folder in self._folders(path, pace=True):
            if folder in skip or folder == path:
                continue
            with self._lock:
                if not self.is_active:
                    return added
                self._add_callback(folder)
            added += 1
        return added

    def _folders(self, path: bytes, *, pace: bool) -> Iterator[bytes]:
        """``path`` and, recursively, the folders under it that this group should watch: no
        links to folders unless follow_symlink, and then each folder once (by device and
        inode) and none watched already through another route. With ``pace``, waits for
        room in the queue before each folder the walk opens."""
        if not self.follow_symlink:
            yield path
            if not os.path.isdir(path):
                return
            for root, dirnames, _ in os.walk(path):
                for name in dirnames:
                    full = os.path.join(root, name)
                    if not os.path.islink(full):
                        yield full
                if pace:
                    self._pace()
            return
        try:
            top = os.stat(path)
        except OSError:
            top = None
        if top is not None and self._watched_elsewhere((top.st_dev, top.st_ino), path):
            return  # a followed link to a folder that is watched already
        yield path
        if top is None or not stat.S_ISDIR(top.st_mode):
            return
        seen = {(top.st_dev, top.st_ino)}
        for root, dirnames, _ in os.walk(path, followlinks=True):
            keep = []
            for name in dirnames:
                full = os.path.join(root, name)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen or self._watched_elsewhere(key, full):
                    continue
                seen.add(key)
                keep.append(name)
                yield full
            dirnames[:] = keep  # os.walk descends only into these
            if pace:
                self._pace()

    def _recursive_simulate(self, src_path: bytes) -> list[InotifyEvent]:
        if not self.follow_symlink:
            return super()._recursive_simulate(src_path)
        events: list[InotifyEvent] = []
        for root, dirnames, filenames in os.walk(src_path, followlinks=True):
            wd_root = self._active_callbacks_by_path.get(root)
            watched = [
                n for n in dirnames if os.path.join(root, n) in self._active_callbacks_by_path
            ]
            if wd_root is not None:
                for name in dirnames:
                    # A link to a folder is reported as what the kernel would report, a new
                    # entry that is not a folder: the scan of the new folder decides whether
                    # to follow it, so it is not walked as a folder of its own.
                    mask = InotifyConstants.IN_CREATE
                    if not os.path.islink(os.path.join(root, name)):
                        mask = Mask(mask | InotifyConstants.IN_ISDIR)
                    events.append(InotifyEvent(wd_root, mask, 0, name))
                for name in filenames:
                    events.append(InotifyEvent(wd_root, InotifyConstants.IN_CREATE, 0, name))
            dirnames[:] = watched  # only watched folders: a finite set, whatever the links
        return events

    def on_event(self, event: InotifyEvent) -> None:
        if event.mask in _FOLDER_OPEN_CLOSE:
            # A folder opened or closed (by every walk, syncd's own included): nothing to say
            # about its files, so dropped here, before watchdog builds and queues an event.
            return
        if event.mask & (InotifyConstants.IN_MOVE_SELF | InotifyConstants.IN_UNMOUNT):
            if self.hooks is not None and self._active_callbacks_by_path.get(self.path) == event.wd:
                moved = event.mask & InotifyConstants.IN_MOVE_SELF
                self.hooks.root_gone("it was moved away" if moved else "it was unmounted")
            return  # watchdog has no use for either
        if event.is_create and event.is_directory and self.is_recursive:
            with self._lock:
                src_path = self._build_event_source_path(event)
                if self.is_active and src_path in self._active_callbacks_by_path:
                    # Watched already: the walk from a folder above it (created just before,
                    # as by mkdir -p) added its watches and reported what was in it, and what
                    # came later has events of its own. watchdog would walk it again, once
                    # per level: a 200-level tree cost 20,000 folder reads, whose own events
                    # overflowed the kernel's queue. Report the folder, walk nothing.
                    self._move_event_grouper.put_event(PathedInotifyEvent(event, src_path))
                    return
        super().on_event(event)

    def on_queue_overflow(self) -> None:
        # In the reading thread. watchdog's own recovery removes every watch and walks the
        # whole tree to add them back, here: nothing is read meanwhile, so on a big tree the
        # walk's own events overflow the queue again, and again. Instead: report the overflow
        # now, in order, and reconcile the watches in a thread of its own, paced by the queue.
        with self._lock:
            if not self.is_active:
                return
            self._move_event_grouper.discard_pending_events()
            self._post_overflow()
            if not self.is_recursive:
                return
            self._reconcile_again = True
            if self._reconciler is None or not self._reconciler.is_alive():
                self._reconciler = threading.Thread(
                    target=self._reconcile_loop, name="syncd-inotify-reconcile", daemon=True
                )
                self._reconciler.start()

    def _post_overflow(self) -> None:
        # Reported through the same queues as the events, after every event read before it:
        # reported at once, it overtook those still on their way, and a file whose creation
        # and open arrived after it (its close having been lost) was held back as being
        # written until settle.max_wait_s. Call with the lock held.
        marker = InotifyEvent(WatchDescriptor(-1), InotifyConstants.IN_Q_OVERFLOW, 0, b"")
        self._move_event_grouper.put_event(PathedInotifyEvent(marker, self.path))

    def _reconcile_loop(self) -> None:
        while True:
            with self._lock:
                if not self._reconcile_again or not self.is_active:
                    self._reconcile_again = False
                    return
                self._reconcile_again = False
            try:
                added = self._reconcile()
            except OSError:
                log.exception("cannot rebuild the watches under %s", os.fsdecode(self.path))
                continue
            if added:
                # Folders created while events were lost are watched only now: what was
                # written into them before is found by one more rescan.
                with self._lock:
                    if self.is_active:
                        self._post_overflow()

    def _reconcile(self) -> int:
        """Drop the watches of folders that are gone, add those of folders that have none
        (their creation was among the lost events), walking the tree paced by the queue.
        Returns how many watches were added."""
        with self._lock:
            known = dict(self._active_callbacks_by_path)
        stale = [wd for p, wd in known.items() if not os.path.isdir(p)]
        if stale:
            with self._lock:
                live = [wd for wd in stale if wd in self._active_callbacks_by_watch]
                if self.is_active and live:
                    self._remove_callbacks(live)
        return self._add_tree(self.path, skip=set(known))


class _Overflow(FileSystemEvent):
    """The kernel's queue overflowed here: events were lost (handed on in order)."""

    event_type = "syncd_overflow"


class _Emitter(InotifyFullEmitter):
    """Full events (moves out/in as moves, not deletes/creates) through :class:`_WatchGroup`."""

    def __init__(
        self,
        event_queue: EventQueue,
        watch: ObservedWatch,
        *,
        hooks: _Hooks,
        **kwargs: Any,
    ) -> None:
        super().__init__(event_queue, watch, **kwargs)
        self._hooks = hooks

    def build_and_queue_event(self, event: Any, *, full_events: bool = True) -> None:
        if isinstance(event, PathedInotifyEvent) and event.ev.mask & InotifyConstants.IN_Q_OVERFLOW:
            self.queue_event(_Overflow(self.watch.path))
            return
        super().build_and_queue_event(event, full_events=full_events)

    def on_thread_start(self) -> None:
        mask = Mask(self.get_event_mask_from_filter() | InotifyConstants.IN_MOVE_SELF)
        self._inotify = _WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=mask,
            follow_symlink=self.watch.follow_symlink,
            hooks=self._hooks,
        )


class _InotifyObserver(BaseObserver):
    """watchdog's InotifyObserver with :class:`_Emitter`; one inotify instance per root."""

    def __init__(self, hooks: _Hooks) -> None:
        self._inotify_fd = _CountingInotifyFD(hooks)
        self._inotify_fd.start()
        super().__init__(_Emitter, inotify_fd=self._inotify_fd, hooks=hooks)

    @property
    def inotify(self) -> _CountingInotifyFD:
        """The inotify instance this observer reads."""
        return self._inotify_fd

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._inotify_fd.stop()
        if self._inotify_fd.is_alive():
            self._inotify_fd.join(JOIN_TIMEOUT_S)


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


# -- roots: identity, availability, errors ------------------------------------------------------


def root_identity(path: str) -> RootIdentity:
    """Blocking: return what the root folder at ``path`` is now (device, inode, mount point),
    to give :func:`root_available` later. Raises :class:`WatchError` when it is missing, not
    a folder or unreadable."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _watch_error(path, exc) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _watch_error(path, OSError(errno.ENOTDIR, "not a folder"))
    if not os.access(path, os.R_OK | os.X_OK):
        raise _watch_error(path, OSError(errno.EACCES, "permission denied"))
    return RootIdentity(st.st_dev, st.st_ino, _is_mountpoint(path, st))


def _is_mountpoint(path: str, st: os.stat_result) -> bool:
    parent = os.path.dirname(path)
    if parent == path:
        return True  # "/"
    try:
        return os.stat(parent).st_dev != st.st_dev
    except OSError:
        return False


def _identity_problem(path: str, identity: RootIdentity) -> str | None:
    """Blocking: why the root at ``path`` is no longer the folder that was added (None if it
    still is)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "it no longer exists"
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return "it is no longer a folder"
    if identity.mountpoint and not _is_mountpoint(path, st):
        return "its file system was unmounted"
    if st.st_dev != identity.dev:
        return "another file system was mounted on it"
    if st.st_ino != identity.ino:
        return "it was replaced by another folder"
    return None


def root_available(path: str, identity: RootIdentity | None = None) -> bool:
    """Blocking: whether ``path`` is a folder syncd can watch now. With the identity the root
    had when it was added: a mount point must be mounted again (any device); a plain folder
    must be on the same file system as before (a recreated folder is fine)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or not os.access(path, os.R_OK | os.X_OK):
        return False
    if identity is None:
        return True
    if identity.mountpoint:
        return _is_mountpoint(path, st)
    return st.st_dev == identity.dev


def network_filesystem(path: str) -> str | None:
    """Blocking: the type of the file system holding ``path`` when it is a network or shared
    one (``nfs4``, ``cifs``, ``fuse.sshfs``...), where inotify cannot see other machines'
    writes; None for a local one or when it cannot be told (Linux ``/proc/self/mountinfo``)."""
    try:
        dev = os.stat(path).st_dev
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = f"{os.major(dev)}:{os.minor(dev)}"
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or fields[2] != want or " - " not in line:
            continue
        fs_type = line.split(" - ", 1)[1].split()[0]
        return fs_type if fs_type in NETWORK_FS_TYPES else None
    return None


def _sysctl(name: str) -> int | None:
    try:
        with open(f"/proc/sys/{name.replace('.', '/')}", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _limit_message(path: str) -> str:
    current = _sysctl("fs.inotify.max_user_watches")
    suggest = max(524288, 2 * (current or 0))
    now = f" (now {current})" if current is not None else ""
    return (
        f"cannot watch {display_path(path)}: the inotify watch limit is reached{now}. "
        f"Fix: `sysctl fs.inotify.max_user_watches={suggest}`, and keep it across reboots with "
        f"`echo fs.inotify.max_user_watches={suggest} > /etc/sysctl.d/90-syncd.conf`; "
        "or set `polling: true` for this folder"
    )


def _watch_error(path: str, exc: OSError) -> WatchError:
    """Given a root and the error watching it raised, return the one-line :class:`WatchError`."""
    shown = display_path(path)
    code = exc.errno
    if code == errno.ENOSPC:
        return WatchError(path, _limit_message(path), "watch_limit")
    if code == errno.EMFILE:
        current = _sysctl("fs.inotify.max_user_instances")
        suggest = max(1024, 2 * (current or 0))
        now = f" (now {current})" if current is not None else ""
        return WatchError(
            path,
            f"cannot watch {shown}: the inotify instance limit is reached{now} or syncd ran out "
            f"of file descriptors. Fix: `sysctl fs.inotify.max_user_instances={suggest}`, kept "
            f"with `echo fs.inotify.max_user_instances={suggest} > "
            "/etc/sysctl.d/90-syncd.conf`, or raise LimitNOFILE= in the service",
            "instance_limit",
        )
    if code == errno.ENOENT:
        return WatchError(
            path,
            f"watched folder {shown} does not exist. Fix: create it (`mkdir -p {shown}`), mount "
            "it, or correct watch[].path in the config",
            "missing",
        )
    if code == errno.ENOTDIR:
        return WatchError(
            path,
            f"watched folder {shown} is not a folder. Fix: point watch[].path at a folder",
            "not_dir",
        )
    if code in (errno.EACCES, errno.EPERM):
        return WatchError(
            path,
            f"cannot read watched folder {shown}: permission denied. Fix: give the user syncd "
            "runs as read and search (r-x) access to it and to every folder above it",
            "denied",
        )
    return WatchError(path, f"cannot watch {shown}: {exc.strerror or exc}", "failed")
