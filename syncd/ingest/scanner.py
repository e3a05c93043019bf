"""Walk a watched root (or one folder of it) and report every candidate regular file.

The walk runs in one dedicated thread: ``os.scandir`` with ``DirEntry.stat`` (one ``lstat`` per
file, no per-file ``Path`` objects), iterative with an explicit stack so a folder 200 levels deep
costs no Python recursion. Results reach the event loop in batches through a bounded hand-off:
the thread waits when the consumer is :data:`QUEUE_BATCHES` batches behind, so a million files
never sit in memory at once, and closing the iterator stops the thread at the next entry.

Each folder is opened with ``O_DIRECTORY`` (and ``O_NOFOLLOW`` unless symlinks are followed) and
checked against the inode the listing showed, so a folder swapped for a symlink mid-walk cannot
lead the walk out of the root. Folders are visited once per walk, by ``(st_dev, st_ino)``, which
makes symlink loops harmless.

Symlinks are skipped unless the root follows them (``follow_symlinks``): then links to files are
reported under the link's path with the target's fingerprint, links to folders are walked,
dangling links and loops are skipped, and a linked folder that lies inside another watched root
is left to that root's own walk. A link found during a walk that leads to a folder of its own
root is not walked either (the root's walk reports those files under their real paths): a link
back up the tree, met while one new folder is scanned, would otherwise re-report the whole root.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import itertools
import logging
import operator
import os
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from syncd.config import WatchRoot
from syncd.display import display_path
from syncd.errors import LedgerError, SyncdError
from syncd.files import file_kind
from syncd.fingerprint import Fingerprint
from syncd.ingest.pathfilter import PathFilter

log = logging.getLogger(__name__)

# Batches the walker may have handed over that the consumer has not taken yet.
QUEUE_BATCHES: Final = 4
# A partial batch is handed over after this long, so a slow walk still shows progress.
FLUSH_AFTER_S: Final = 0.5
# Entries of one folder's listing taken at a time (a folder of a million files is compared
# with the ledger a slice at a time, not held whole).
LIST_CHUNK: Final = 4096
# A stat's fingerprint as the ledger keeps it, taken in C: (dev, ino, size, mtime_ns, ctime_ns).
_fingerprint_of: Final = operator.attrgetter(
    "st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns"
)
# How long closing the iterator waits for the walker thread (stuck in a hung NFS call, say).
STOP_WAIT_S: Final = 10.0

# Folders whose problem was logged, with the problem: a later walk that meets the same problem
# says so at debug level only, so a folder that stays unreadable costs one warning, not one
# per rescan. A folder walked cleanly again is dropped (a new problem is logged again).
# Shared by every walk of the process; only folders with a problem are kept.
_reported: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class ScanEntry:
    """One candidate file: its absolute path (the exact on-disk name, ``os.fsdecode`` form),
    the configured path of its root, and its stat fingerprint (of the target, for a followed
    symlink)."""

    path: str
    root: str
    fingerprint: Fingerprint


# What the ledger knows of one file, as :meth:`KnownFiles.folder` gives it: the stat
# fingerprint it was settled with (holds a content, or was skipped) as a plain tuple (dev, ino,
# size, mtime_ns, ctime_ns), or None when it is tracked but not settled (unsettled, in error).
KnownRow = tuple[int, int, int, int, int] | None
# What a ledger view raises when it cannot answer: SQLite's own errors, or the ledger errors of
# a store whose queries run elsewhere (the PostgreSQL store answers on the event loop).
_LEDGER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, LedgerError)


class KnownFiles(Protocol):
    """The ledger as the walker thread sees it: opened, used and closed in that thread."""

    def folder(self, path: str) -> tuple[dict[str, KnownRow], list[str]]:
        """Given a folder's absolute path, return the files directly in it that the ledger
        tracks (not gone), by name, and the names of its sub-folders holding such files.
        Raises ``sqlite3.Error`` or :class:`~syncd.errors.LedgerError`."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@dataclass(slots=True)
class ScanReport:
    """What one walk found besides the batches it yielded; read once the walk has ended.

    ``seen`` counts every candidate file, ``unchanged`` those the ledger already has with the
    same fingerprint (not yielded). When the walk compared with the ledger (``known``) and
    ``compared`` stayed true, ``missing`` holds the tracked files a folder's listing did not
    show (under any root) and ``vanished`` the folders whose tracked files were not walked at
    all (deleted, no longer a folder, excluded): together, what is no longer there.
    ``unreadable`` holds the folders that could not be read (their files were not seen, which
    does not make them gone).
    """

    seen: int = 0
    unchanged: int = 0
    compared: bool = True
    missing: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


class RootUnavailable(SyncdError):
    """A watched root cannot be walked: missing, not a folder, or unreadable.

    Given the root's path and what is wrong with it.
    """

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"watched folder {display_path(path)}: {detail}")


@dataclass(slots=True)
class _End:
    error: BaseException | None


def scan_root(
    root: WatchRoot,
    filt: PathFilter,
    *,
    batch_size: int = 1000,
    follow_symlinks: bool | None = None,
    all_roots: Sequence[str] = (),
    unreadable: list[str] | None = None,
    known: Callable[[], KnownFiles] | None = None,
    report: ScanReport | None = None,
    pace: Callable[[], None] | None = None,
) -> AsyncGenerator[list[ScanEntry], None]:
    """Walk a whole root.

    Given the root, its filter, the largest batch to yield, whether to follow symlinks
    (``None``: the root's ``follow_symlinks``), the paths of every watched root,
    optionally a list that receives every folder that could not be read, optionally a
    factory of the ledger's view (``known``, called in the walker thread) and a
    :class:`ScanReport` to fill, and ``pace``, called in the walker thread before each folder
    is opened (the watcher's ``wait_for_room``: opening watched folders queues inotify
    events of its own). Returns an async iterator of non-empty batches of
    :class:`ScanEntry`: each regular file the filter accepts, once; with ``known``, only the
    files the ledger does not already have unchanged (a tracked path, not gone, with the same
    fingerprint, holding a content or skipped), each folder compared with one ledger query
    in the walker thread, so an unchanged library costs the event loop nothing. Raises
    :class:`RootUnavailable` (on the first ``__anext__``) when the root is missing, not a
    folder or unreadable. Folders that cannot be read are logged (one warning each, not
    repeated by later walks while the problem lasts), added to ``unreadable`` and skipped:
    the files under them were not seen, which does not make them deleted. Close the iterator
    (``aclose``, or ``contextlib.aclosing``) to stop early; closing waits for the walker
    thread to stop.
    """
    follow = root.follow_symlinks if follow_symlinks is None else follow_symlinks
    walker = _Walker(root, filt, follow, all_roots, batch_size, known, report, pace)
    if unreadable is not None:
        walker.report.unreadable = unreadable
    return _stream(walker, walker.walk_root)


def scan_dir(
    root: WatchRoot,
    filt: PathFilter,
    path: str,
    *,
    batch_size: int = 1000,
    follow_symlinks: bool | None = None,
    all_roots: Sequence[str] = (),
    known: Callable[[], KnownFiles] | None = None,
    report: ScanReport | None = None,
    pace: Callable[[], None] | None = None,
) -> AsyncGenerator[list[ScanEntry], None]:
    """Walk one folder inside a root (one created or moved in while the daemon runs).

    Given what :func:`scan_root` takes plus the folder's absolute path. Yields nothing when
    the folder is gone, is a symlink that is not followed, lies outside the root, or the
    filter rejects it (a temporary or excluded folder, a sub-folder of a non-recursive root).
    Never raises :class:`RootUnavailable`; otherwise behaves like :func:`scan_root`.
    """
    follow = root.follow_symlinks if follow_symlinks is None else follow_symlinks
    walker = _Walker(root, filt, follow, all_roots, batch_size, known, report, pace)
    return _stream(walker, lambda post: walker.walk_dir(post, path))


async def _stream(
    walker: _Walker, body: Callable[[Callable[[list[ScanEntry]], bool]], None]
) -> AsyncGenerator[list[ScanEntry], None]:
    """Run ``body`` in a new thread and yield the batches it posts, with backpressure."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[list[ScanEntry] | _End] = asyncio.Queue()
    slots = threading.Semaphore(QUEUE_BATCHES)
    stop = walker.stop

    def deliver(item: list[ScanEntry] | _End) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more

    def post(batch: list[ScanEntry]) -> bool:
        # Waits for a free slot; returns False when the consumer has gone away.
        slots.acquire()
        if stop.is_set():
            return False
        deliver(batch)
        return True

    def run() -> None:
        error: BaseException | None = None
        try:
            body(post)
        except BaseException as exc:  # handed to the consumer, which raises it
            error = exc
        deliver(_End(error))

    thread = threading.Thread(
        target=run, name=f"syncd-scan {display_path(walker.root_path)}", daemon=True
    )
    thread.start()
    finished = False
    try:
        while True:
            item = await inbox.get()
            if isinstance(item, _End):
                finished = True
                if item.error is not None:
                    raise item.error
                return
            slots.release()
            yield item
    finally:
        if not finished:
            stop.set()
            slots.release()  # wake the walker if it waits for a slot
            try:
                async with asyncio.timeout(STOP_WAIT_S):
                    while not isinstance(await inbox.get(), _End):
                        pass
            except TimeoutError:
                log.warning(
                    "scan of %s did not stop within %.0f s; leaving it behind",
                    display_path(walker.root_path),
                    STOP_WAIT_S,
                )


class _Walker:
    """The thread side of a scan. ``stop`` is set by the consumer to end the walk early.

    Over ~300 lines because one walk's state (the root, its filter, the other roots, the
    ledger's view of the folder at hand, the batch being filled) is read by every step, and
    :meth:`_drain`, one folder compared with the ledger, is most of it; cut apart, each piece
    would take that whole state as arguments.
    """

    def __init__(
        self,
        root: WatchRoot,
        filt: PathFilter,
        follow: bool,
        all_roots: Sequence[str],
        batch_size: int,
        known: Callable[[], KnownFiles] | None = None,
        report: ScanReport | None = None,
        pace: Callable[[], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.root = root
        self.root_path = os.path.normpath(root.path)
        self.filt = filt
        self.follow = follow
        self.batch_size = batch_size
        self.stop = threading.Event()
        self.all_roots = tuple(all_roots)
        # Other roots, resolved (in the thread: resolving does I/O). A followed link into one
        # of them is left to that root's own walk.
        self.other_roots: tuple[str, ...] = ()
        self.own_root: str | None = None  # this root, resolved (set when links are followed)
        self.visited: set[tuple[int, int]] = set()
        self.report = report if report is not None else ScanReport()
        self.known_factory = known
        self.known: KnownFiles | None = None  # opened by the walk, in its thread
        self.pace = pace

    # -- entry points --------------------------------------------------------------------------

    def walk_root(self, post: Callable[[list[ScanEntry]], bool]) -> None:
        path = self.root_path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise RootUnavailable(path, "does not exist") from None
        except OSError as exc:
            raise RootUnavailable(path, f"cannot be read: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise RootUnavailable(path, f"is not a folder (it is {file_kind(st.st_mode)})")
        try:
            # The root itself is opened through symlinks: the user named that path.
            fd = self._open_dir(path, st, follow=True)
        except OSError as exc:
            raise RootUnavailable(path, f"cannot be read: {exc.strerror or exc}") from None
        if fd is None:
            raise RootUnavailable(path, "changed while it was being opened")
        self._resolve_other_roots()
        self._walk(post, fd, path, "", self.filt.include_all, st)

    def walk_dir(self, post: Callable[[list[ScanEntry]], bool], path: str) -> None:
        path = os.path.normpath(path)
        filt = self.filt
        rel = filt.relative(path)
        if rel is None:
            log.debug("not scanning %s: outside its root", display_path(path))
            return
        if rel:
            if not filt.recursive:
                return
            why, included = filt.folder_verdict(rel)
            if why is not None:
                log.debug("not scanning %s: %s", display_path(path), why)
                return
        else:
            included = filt.include_all
        try:
            st = os.stat(path, follow_symlinks=self.follow or not rel)
        except OSError as exc:
            log.debug("not scanning %s: %s", display_path(path), exc.strerror or exc)
            return
        if not stat.S_ISDIR(st.st_mode):
            return
        self._resolve_other_roots()
        if rel and self.follow and os.path.islink(path) and self._in_other_root(path):
            return
        try:
            fd = self._open_dir(path, st, follow=self.follow or not rel)
        except OSError as exc:
            self._warn_dir(path, exc)
            return
        if fd is None:
            return
        self._walk(post, fd, path, rel, included, st)

    # -- the walk ------------------------------------------------------------------------------

    def _open_dir(self, path: str, expected: os.stat_result, *, follow: bool) -> int | None:
        """Open a folder for listing; ``None`` when it is not the folder ``expected`` showed
        (swapped mid-walk) or was visited already. Raises ``OSError``."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        if not follow:
            flags |= os.O_NOFOLLOW
        fd = os.open(path, flags)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
                log.warning("folder %s changed while being scanned; skipped", display_path(path))
                os.close(fd)
                return None
            key = (st.st_dev, st.st_ino)
            if key in self.visited:
                log.debug("folder %s was visited already (link loop?)", display_path(path))
                os.close(fd)
                return None
            self.visited.add(key)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _walk(
        self,
        post: Callable[[list[ScanEntry]], bool],
        top_fd: int,
        top_path: str,
        top_rel: str,
        top_included: bool,
        top_st: os.stat_result,
    ) -> None:
        # Folders still to list: (open fd or -1, absolute path, path relative to the root,
        # included-by-a-folder-above, stat the listing showed). Only the top one is open.
        pending: list[tuple[int, str, str, bool, os.stat_result]] = [
            (top_fd, top_path, top_rel, top_included, top_st)
        ]
        try:
            if self.known_factory is not None:
                try:
                    self.known = self.known_factory()
                except _LEDGER_ERRORS as exc:
                    self._lost_ledger(exc)
            self._drain(post, pending)
        finally:
            for fd, *_ in pending:
                if fd >= 0:
                    os.close(fd)
            if self.known is not None:
                self.known.close()
                self.known = None

    def _lost_ledger(self, exc: Exception) -> None:
        """The ledger cannot be read from this thread: hand every file on (the event loop
        checks them against the ledger itself) and look for nothing gone."""
        log.warning(
            "scan of %s cannot read the ledger (%s); every file is checked one by one",
            display_path(self.root_path),
            exc,
        )
        if self.known is not None:
            with contextlib.suppress(*_LEDGER_ERRORS):
                self.known.close()
        self.known = None
        self.known_factory = None
        self.report.compared = False

    def _known_in(self, dir_path: str) -> tuple[dict[str, KnownRow], list[str]] | None:
        """The ledger's files directly in ``dir_path`` and its sub-folders holding any; None
        when the walk does not compare with the ledger."""
        if self.known is None:
            return None
        try:
            return self.known.folder(dir_path)
        except _LEDGER_ERRORS as exc:
            self._lost_ledger(exc)
            return None

    def _vanished(self, dir_path: str) -> None:
        """A folder met by the walk (or in the ledger) whose files this walk does not see."""
        if self.known is not None:
            self.report.vanished.append(dir_path)

    def _drain(
        self,
        post: Callable[[list[ScanEntry]], bool],
        pending: list[tuple[int, str, str, bool, os.stat_result]],
    ) -> None:
        stop = self.stop
        root_name = self.root.path
        report = self.report
        batch: list[ScanEntry] = []
        flushed_at = time.monotonic()
        while pending:
            if stop.is_set():
                break
            fd, dir_path, dir_rel, dir_included, dir_st = pending.pop()
            if self.pace is not None:
                self.pace()
            if fd < 0:
                try:
                    opened = self._open_dir(dir_path, dir_st, follow=self.follow)
                except OSError as exc:
                    self._warn_dir(dir_path, exc)
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        self._vanished(dir_path)
                    continue
                if opened is None:
                    self._vanished(dir_path)
                    continue
                fd = opened
            prefix = dir_path + "/" if dir_path != "/" else "/"
            rel_prefix = dir_rel + "/" if dir_rel else ""
            warned = False
            # The ledger is read before the listing: a file recorded in between is listed
            # (and handed on), never taken for missing.
            known = self._known_in(dir_path)
            rows = known[0] if known is not None else None
            walked_from = len(pending)
            listed = False
            seen = unchanged = 0  # this folder's, added to the report after its listing
            try:
                with os.scandir(fd) as it:
                    while not stop.is_set():
                        # A slice of the listing at a time: a folder of a million files is
                        # never held whole (the ledger's rows for it are, as before).
                        chunk = list(itertools.islice(it, LIST_CHUNK))
                        if not chunk:
                            listed = True
                            break
                        if rows:
                            chunk, same = self._unchanged_files(
                                chunk, rows, rel_prefix, dir_included
                            )
                            seen += same
                            unchanged += same
                        for entry in chunk:
                            if stop.is_set():
                                break
                            try:
                                st = self._candidate(
                                    entry, prefix, rel_prefix, dir_included, pending
                                )
                            except FileNotFoundError:
                                continue  # gone since the listing: the watcher will tell
                            except OSError as exc:
                                if not warned:
                                    warned = True
                                    self._warn_dir(dir_path, exc)
                                continue
                            if st is None:
                                continue
                            name = entry.name
                            seen += 1
                            fp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                            if rows is not None:
                                row = rows.pop(name, None)
                                # Unchanged: tracked with this very fingerprint, and hashed or
                                # skipped. Nothing to hand on, nothing to write.
                                if row is not None and row == fp:
                                    unchanged += 1
                                    continue
                            batch.append(ScanEntry(prefix + name, root_name, Fingerprint(*fp)))
                            if len(batch) >= self.batch_size:
                                if not post(batch):
                                    return
                                batch = []
                                flushed_at = time.monotonic()
            except OSError as exc:
                listed = False
                warned = True
                self._warn_dir(dir_path, exc)
            finally:
                os.close(fd)
                report.seen += seen
                report.unchanged += unchanged
            if known is not None and listed and self.known is not None:
                # What the ledger tracks here that the listing did not show is gone (a file
                # excluded by the filter now, or replaced by a folder, is not there either);
                # one recorded under another (nested) root is left alone when it is marked.
                report.missing.extend(prefix + name for name in rows or ())
                walked = {os.path.basename(p[1]) for p in pending[walked_from:]}
                for sub in known[1]:
                    if sub not in walked:
                        self._vanished(prefix + sub)
            if not warned and _reported:
                _reported.pop(dir_path, None)  # readable again: a new problem is news
            if batch and time.monotonic() - flushed_at >= FLUSH_AFTER_S:
                if not post(batch):
                    return
                batch = []
                flushed_at = time.monotonic()
        if batch and not stop.is_set():
            post(batch)

    def _candidate(
        self,
        entry: os.DirEntry[str],
        prefix: str,
        rel_prefix: str,
        dir_included: bool,
        pending: list[tuple[int, str, str, bool, os.stat_result]],
    ) -> os.stat_result | None:
        """Given one entry of a folder's listing, the folder's path and its path relative to
        the root (each with a trailing slash, or ``""`` for the root), whether the folder is
        included and the walk's pending folders: return the stat of a file the filter accepts
        (a followed symlink's target's), or None for anything else. A sub-folder (or a linked
        one) the filter keeps is queued on ``pending``. Raises the ``OSError`` of a stat."""
        name = entry.name
        if entry.is_file(follow_symlinks=False):
            if self.filt.file_verdict(rel_prefix + name, name, dir_included) is not None:
                return None
            return entry.stat(follow_symlinks=False)
        if entry.is_dir(follow_symlinks=False):
            if self.filt.recursive:
                rel = rel_prefix + name
                why, included = self.filt.dir_verdict(rel, name, dir_included)
                if why is None:
                    st = entry.stat(follow_symlinks=False)
                    pending.append((-1, prefix + name, rel, included, st))
            return None
        if self.follow and entry.is_symlink():
            return self._symlink(entry, prefix + name, rel_prefix + name, dir_included, pending)
        return None  # FIFOs, sockets, devices, unfollowed symlinks

    def _unchanged_files(
        self,
        chunk: list[os.DirEntry[str]],
        rows: dict[str, KnownRow],
        rel_prefix: str,
        included: bool,
    ) -> tuple[list[os.DirEntry[str]], int]:
        """Given a slice of a folder's listing, the ledger's rows for the folder (by name),
        the folder's path relative to the root (with a trailing slash, or ``""``) and whether
        it is included: when every regular file of the slice is a candidate the ledger has
        with this very fingerprint, take their rows out of ``rows`` and return the rest of
        the slice (folders, links, others) and how many files were taken; otherwise return
        the slice whole and 0. An unchanged folder then costs one C-level comparison instead
        of Python per file; any difference (a new, changed, unsettled or filtered-out file, a
        stat that fails) leaves the slice to the per-entry path, which decides each entry
        as before and reuses the stats taken here (``DirEntry`` keeps them)."""
        try:
            files = [e for e in chunk if e.is_file(follow_symlinks=False)]
            if not files:
                return chunk, 0
            names = [e.name for e in files]
            if not self.filt.all_files_accepted(rel_prefix, names, included):
                return chunk, 0
            stats = [e.stat(follow_symlinks=False) for e in files]
        except OSError:
            return chunk, 0
        listing = dict(zip(names, map(_fingerprint_of, stats), strict=True))
        if not listing.items() <= rows.items():
            return chunk, 0
        collections.deque(map(rows.__delitem__, names), maxlen=0)
        if len(files) == len(chunk):
            return [], len(files)
        return [e for e in chunk if not e.is_file(follow_symlinks=False)], len(files)

    def _symlink(
        self,
        entry: os.DirEntry[str],
        path: str,
        rel: str,
        dir_included: bool,
        pending: list[tuple[int, str, str, bool, os.stat_result]],
    ) -> os.stat_result | None:
        """Follow one symlink found in a folder (only when the root follows symlinks): returns
        the target's stat when it is a file the filter accepts, queues a linked folder."""
        try:
            st = entry.stat(follow_symlinks=True)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP):
                log.debug("skipping %s: dangling symlink or loop", display_path(path))
                return None
            raise
        name = entry.name
        if stat.S_ISREG(st.st_mode):
            if self.filt.file_verdict(rel, name, dir_included) is None:
                return st
        elif stat.S_ISDIR(st.st_mode) and self.filt.recursive:
            why, included = self.filt.dir_verdict(rel, name, dir_included)
            if why is None and not self._in_other_root(path, or_own=True):
                pending.append((-1, path, rel, included, st))
        return None

    def _resolve_other_roots(self) -> None:
        if not self.follow:
            return
        mine = os.path.realpath(self.root_path)
        self.own_root = mine
        resolved = (os.path.realpath(os.path.normpath(r)) for r in self.all_roots)
        self.other_roots = tuple(real for real in resolved if real != mine)

    def _in_other_root(self, path: str, *, or_own: bool = False) -> bool:
        """Whether a followed folder link leads into another watched root (whose own walk
        covers it) or, with ``or_own``, into this root: back up the tree or across to a
        sibling, whose files the root's walk finds under their real paths. Walking it would
        only report the same files again under a second name (and, from a folder scanned on
        its own, the whole root again)."""
        targets = self.other_roots
        if or_own and self.own_root is not None:
            targets = (*targets, self.own_root)
        if not targets:
            return False
        real = os.path.realpath(path)
        for other in targets:
            if real == other or real.startswith(other.rstrip("/") + "/"):
                log.debug(
                    "not following %s: it leads into the watched folder %s",
                    display_path(path),
                    display_path(other),
                )
                return True
        return False

    def _warn_dir(self, path: str, exc: OSError) -> None:
        if exc.errno == errno.ENOENT:
            log.debug("folder %s vanished during the scan", display_path(path))
            return
        self.report.unreadable.append(path)
        problem = exc.strerror or str(exc)
        if _reported.get(path) == problem:
            log.debug("still cannot read folder %s: %s", display_path(path), problem)
            return
        _reported[path] = problem
        log.warning(
            "cannot read folder %s: %s; skipping it (retried at every rescan)",
            display_path(path),
            problem,
        )
