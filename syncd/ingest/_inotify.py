"""The inotify backend of the watcher, on watchdog 7's internals (private: ``watcher.py`` only).

watchdog's inotify observer drops what syncd must know: the kernel's queue overflow, a root
moved away or unmounted, and running out of inotify watches while adding a sub-folder; and its
recovery from an overflow (a walk of the whole tree in the reading thread) overflowed the queue
again on big trees. The classes here subclass watchdog 7's ``InotifyFD``, ``InotifyWatchGroup``,
``InotifyFullEmitter`` and ``BaseObserver`` to report those through :class:`Hooks`, to pace the
walks that add watches by the room left in the kernel's queue, and to reconcile the watches
after an overflow off the reading thread. They rely on watchdog's private attributes, so this
is the one module the pin ``watchdog>=7.1,<8`` is for: a new watchdog is checked here.

Given: the :class:`Hooks` of one root (called from the observer's threads). Gives:
:class:`InotifyObserver` (a watchdog observer whose ``inotify`` can ``wait_for_room()``) and
:class:`Overflow`, the event it queues when the kernel's queue overflowed.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import math
import os
import stat
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from watchdog.events import FileSystemEvent
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

log = logging.getLogger(__name__)

# How long observer threads get to stop before they are left behind (daemon threads: one stuck
# in a hung network call must not hold up shutdown).
JOIN_TIMEOUT_S: Final = 5.0
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


class Hooks(Protocol):
    """What the inotify threads report beyond watchdog's events, for one root."""

    def root_gone(self, why: str) -> None:
        """The root was moved away, deleted or unmounted (``why`` says which)."""

    def watch_limit(self, path: str) -> None:
        """No inotify watch could be added for the folder ``path`` (the limit is reached)."""


class _CountingInotifyFD(InotifyFD):
    """An inotify instance that reports ``ENOSPC`` on any watch (watchdog swallows it for
    sub-folders, which would leave them silently unwatched)."""

    def __init__(self, hooks: Hooks) -> None:
        self._hooks = hooks
        super().__init__()
        max_events = sysctl("fs.inotify.max_queued_events") or 16384
        self._room_bytes = int(max_events * _ROOM_FRACTION) * _INOTIFY_EVENT_BYTES
        self._unpaced_until = -math.inf  # after a wait that timed out, walks go unpaced
        # Every watch of this instance has the same one callback (the one group of the one
        # root): each watch's own {id: callback} dict was ~220 B a watched folder (~2 MB at
        # 10,000 folders, figure 10 of docs/benchmarks.md). A watch that has only that one
        # callback shares this dict; it gets a dict of its own (a copy) before its callbacks
        # change. Read and written under the instance's lock, as watch.callbacks is.
        self._shared_callbacks: dict[CallbackId, WatchCallback] | None = None

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
        shared = self._shared_callbacks
        if shared is None:
            shared = self._shared_callbacks = {id_: callback}
        if not watch.callbacks and shared.get(id_) is callback and len(shared) == 1:
            watch.callbacks = shared
        elif watch.callbacks.get(id_) is not callback:
            if watch.callbacks is shared:
                watch.callbacks = dict(shared)
            watch.callbacks[id_] = callback
        wd: WatchDescriptor = watch.wd
        return wd

    def _remove_callback(self, wd: WatchDescriptor, id_: CallbackId) -> None:
        # watchdog pops the callback from watch.callbacks: from a copy, never the shared dict.
        watch = self._watch_for_wd.get(wd)
        if watch is not None and watch.callbacks is self._shared_callbacks:
            watch.callbacks = dict(watch.callbacks)
        super()._remove_callback(wd, id_)


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

    hooks: Hooks | None = None
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


class Overflow(FileSystemEvent):
    """The kernel's queue overflowed here: events were lost (handed on in order)."""

    event_type = "syncd_overflow"


class _Emitter(InotifyFullEmitter):
    """Full events (moves out/in as moves, not deletes/creates) through :class:`_WatchGroup`."""

    def __init__(
        self,
        event_queue: EventQueue,
        watch: ObservedWatch,
        *,
        hooks: Hooks,
        **kwargs: Any,
    ) -> None:
        super().__init__(event_queue, watch, **kwargs)
        self._hooks = hooks

    def build_and_queue_event(self, event: Any, *, full_events: bool = True) -> None:
        if isinstance(event, PathedInotifyEvent) and event.ev.mask & InotifyConstants.IN_Q_OVERFLOW:
            self.queue_event(Overflow(self.watch.path))
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


class InotifyObserver(BaseObserver):
    """watchdog's InotifyObserver with :class:`_Emitter`; one inotify instance per root."""

    def __init__(self, hooks: Hooks) -> None:
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


def sysctl(name: str) -> int | None:
    """Given a sysctl name (``fs.inotify.max_user_watches``), return its value, or None."""
    try:
        with open(f"/proc/sys/{name.replace('.', '/')}", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
