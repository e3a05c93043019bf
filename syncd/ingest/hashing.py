"""SHA-256 of whole files, streamed in dedicated worker threads, with a change check around it.

A file is stat-ed before it is opened (so a FIFO, socket or device node is refused without being
opened: opening a FIFO blocks, opening a tape device rewinds it), opened non-blocking and
without following a final symlink unless asked to, ``fstat``-ed, read with a per-thread reusable
page-aligned buffer (``readinto`` + ``memoryview``: no per-chunk allocation; hashlib releases the
GIL while it digests each chunk), then stat-ed by path and ``fstat``-ed again. The digest is
returned only when the file kept its inode, size and times and its path still names the same
inode: otherwise :class:`FileChanged` is raised and the caller settles the file again.

:meth:`Hasher.hash_batch` does the same for many files in one thread call, each after an
optional check of its first bytes (the media pre-flight): files a scan found are already
quiet, and one hand-over to a thread and back per batch instead of two per file is what lets
a backlog go at the speed of the disk rather than of the event loop's wakeups.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TypeAlias

from syncd.chunksums import ChunkSums, new_sum
from syncd.display import display_path
from syncd.errors import SyncdError
from syncd.files import open_regular
from syncd.fingerprint import Fingerprint

DEFAULT_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Hashed:
    """The SHA-256 (lower-case hex) of a file, the bytes read, the fingerprint the file had
    when it was opened (which it still had when hashing ended), and the xxh3 checksum of each
    chunk of ``chunk_bytes`` read in the same pass (:mod:`syncd.chunksums`)."""

    sha256: str
    size: int
    fingerprint: Fingerprint
    chunk_bytes: int = 0
    chunk_sums: bytes = b""  # per chunk of ``chunk_bytes``, see syncd.chunksums

    def chunks(self) -> ChunkSums | None:
        """Return the per-chunk checksums taken with the SHA-256, or None if there are none."""
        if not self.chunk_bytes:
            return None
        return ChunkSums(self.sha256, self.fingerprint, self.chunk_bytes, self.chunk_sums)


@dataclass(frozen=True, slots=True)
class HashItem:
    """One file of a :meth:`Hasher.hash_batch`: its path, the fingerprint the caller saw
    (``None``: no check) and whether a final symlink may be followed."""

    path: str
    expected: Fingerprint | None
    follow_symlinks: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """A file of a batch that its head check turned down, unread past its head: the
    fingerprint it had when it was opened and the check's reason."""

    fingerprint: Fingerprint
    reason: str


# Given a file's path, its fingerprint at open and its first bytes, return why it must not
# be hashed (the pre-flight's reason), or None. Runs in the hasher's thread.
HeadCheck: TypeAlias = Callable[[str, Fingerprint, bytes], str | None]

# What :meth:`Hasher.hash_batch` returns per file: the hash, the head check's refusal, or the
# error :meth:`Hasher.hash` would have raised for it.
HashOutcome: TypeAlias = "Hashed | Refused | OSError | SyncdError"


class FileChanged(SyncdError):
    """The file changed before or while it was hashed; the digest was thrown away.

    Given the path and what changed.
    """

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"{display_path(path)} {detail}")


class HasherClosed(SyncdError):
    """The hasher was closed before or while this file was hashed."""


class _Job:
    """One hash in flight; ``cancelled`` makes its thread stop at the next chunk."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


class Hasher:
    """Hashes files in its own pool of ``workers`` threads, ``buffer_bytes`` per read.

    ``files_hashed`` and ``bytes_hashed`` count the hashes that returned a result. Use as an
    async context manager, or call :meth:`close` (or ``await`` :meth:`aclose`) when done.
    """

    def __init__(self, workers: int = 2, buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if buffer_bytes < 4096:
            raise ValueError(f"buffer_bytes must be at least 4096, got {buffer_bytes}")
        self.workers = workers
        self.buffer_bytes = buffer_bytes
        self.files_hashed = 0
        self.bytes_hashed = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="syncd-hash")
        self._local = threading.local()
        self._jobs: set[_Job] = set()
        self._closed = False

    async def hash(
        self, path: str, expected: Fingerprint | None = None, *, follow_symlinks: bool = False
    ) -> Hashed:
        """Hash one file.

        Given its path, the fingerprint the caller saw (``None``: no check) and whether a final
        symlink may be followed (pass the root's ``follow_symlinks``). Returns :class:`Hashed`.
        Raises :class:`FileChanged` when the file does not match ``expected`` when opened, or
        changed, shrank, grew or was replaced while it was read; :class:`NotRegularFile`;
        :class:`HasherClosed`; the ``OSError`` of a vanished or unreadable file
        (``FileNotFoundError`` also when it was deleted while it was read, ``PermissionError``).
        Cancelling the call stops the thread at its next chunk.
        """
        outcome = (await self.hash_batch([HashItem(path, expected, follow_symlinks)]))[0]
        if isinstance(outcome, Hashed):
            return outcome
        if isinstance(outcome, Refused):  # pragma: no cover - no head check, no refusal
            raise TypeError(f"internal error: {display_path(path)} refused without a check")
        raise outcome

    async def hash_batch(
        self,
        items: Sequence[HashItem],
        *,
        check: HeadCheck | None = None,
        head_bytes: int = 1024,
    ) -> list[HashOutcome]:
        """Hash several files, one after the other, in one call to one of the hasher's threads.

        Given the files and, optionally, a check of each file's first ``head_bytes`` bytes,
        read from the descriptor the hash then reads, after the fingerprint check and before a
        byte more is read. Returns one outcome per item, in order: :class:`Hashed`,
        :class:`Refused`, or the exception :meth:`hash` raises for that file (the others go
        on). Raises :class:`HasherClosed` when the hasher is closed before the call; a close
        during the call makes the rest of the batch :class:`HasherClosed`. Cancelling the call
        stops the thread at its next chunk.
        """
        if self._closed:
            raise HasherClosed("the hasher is closed")
        if not items:
            return []
        loop = asyncio.get_running_loop()
        job = _Job()
        self._jobs.add(job)
        try:
            outcomes = await loop.run_in_executor(
                self._pool, self._batch_sync, items, check, head_bytes, job
            )
        except asyncio.CancelledError:
            job.cancelled = True  # a cancelled await leaves the thread running: stop it
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                # close() dropped this queued batch; the caller itself was not cancelled.
                return [
                    HasherClosed(f"hashing of {display_path(i.path)} was stopped") for i in items
                ]
            raise
        finally:
            self._jobs.discard(job)
        for outcome in outcomes:
            if isinstance(outcome, Hashed):
                self.files_hashed += 1
                self.bytes_hashed += outcome.size
        return outcomes

    def close(self) -> None:
        """Stop accepting work, drop queued hashes and make running ones stop at their next
        chunk. Does not wait for the threads (see :meth:`aclose`)."""
        self._closed = True
        for job in self._jobs:
            job.cancelled = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        """Like :meth:`close`, then wait (in a thread) until every worker thread has ended."""
        self.close()
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    async def __aenter__(self) -> Hasher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the worker-thread side ----------------------------------------------------------------

    def _buffer(self) -> memoryview:
        """Return this thread's read buffer, allocated once per thread."""
        view: memoryview | None = getattr(self._local, "view", None)
        if view is None:
            # An anonymous mapping is page-aligned; a bytearray's data sits 16 bytes past a
            # page boundary, which makes the kernel's copy into it about 40% slower.
            view = self._local.view = memoryview(mmap.mmap(-1, self.buffer_bytes))
        return view

    def _batch_sync(
        self, items: Sequence[HashItem], check: HeadCheck | None, head_bytes: int, job: _Job
    ) -> list[HashOutcome]:
        outcomes: list[HashOutcome] = []
        for item in items:
            if job.cancelled or self._closed:
                outcomes.append(HasherClosed(f"hashing of {display_path(item.path)} was stopped"))
                continue
            try:
                outcomes.append(
                    self._hash_file(
                        item.path, item.expected, item.follow_symlinks, job, check, head_bytes
                    )
                )
            except (OSError, SyncdError) as exc:
                outcomes.append(exc)  # this file's outcome; the rest of the batch goes on
        return outcomes

    def _hash_file(
        self,
        path: str,
        expected: Fingerprint | None,
        follow_symlinks: bool,
        job: _Job,
        check: HeadCheck | None,
        head_bytes: int,
    ) -> Hashed | Refused:
        fd, before = open_regular(path, follow_symlinks=follow_symlinks)
        with io.FileIO(fd, "rb", closefd=True) as f:
            seen = Fingerprint.of(before)
            if expected is not None and seen != expected:
                raise FileChanged(path, f"changed since it was seen ({_diff(expected, seen)})")
            if check is not None:
                # The pre-flight reads the head through the descriptor the hash reads (pread
                # leaves the offset at 0): one open per file, and a refused file is not read.
                reason = check(path, seen, _read_head(fd, head_bytes))
                if reason is not None:
                    return Refused(seen, reason)
            size = before.st_size
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass  # only a read-ahead hint
            digest = hashlib.sha256()
            view = self._buffer()
            chunk = len(view)
            readinto = f.readinto
            update = digest.update
            # The same bytes also go to a cheap per-chunk checksum, which the upload checks
            # chunk by chunk instead of hashing what it sends with SHA-256 again.
            xsum = new_sum()
            sums = bytearray()
            done = 0
            in_chunk = 0
            # Read exactly the size seen at open: a file that keeps growing is caught by the
            # fstat below instead of being chased forever. A read never crosses a chunk's
            # end, so a short read cannot shift the chunks the checksums cover.
            while done < size:
                if job.cancelled or self._closed:
                    raise HasherClosed(f"hashing of {display_path(path)} was stopped")
                want = min(size - done, chunk - in_chunk)
                n = readinto(view if want == chunk else view[:want])
                if not n:
                    break
                data = view[:n]
                update(data)
                xsum.update(data)
                done += n
                in_chunk += n
                if in_chunk == chunk or done == size:
                    sums += xsum.digest()
                    xsum.reset()
                    in_chunk = 0
            if size == 0:
                sums += xsum.digest()  # one (empty) chunk, as the upload reads it
            if done != size:
                raise FileChanged(path, f"shrank while being hashed ({size} -> {done} bytes)")
            # The path first: a file deleted or renamed away (which also changes its ctime)
            # is reported as gone, not as changed.
            now = os.stat(path, follow_symlinks=follow_symlinks)
            if (now.st_dev, now.st_ino) != (seen.dev, seen.ino):
                raise FileChanged(path, "was replaced by another file while being hashed")
            after = Fingerprint.of(os.fstat(fd))
            if after != seen:
                raise FileChanged(path, f"changed while being hashed ({_diff(seen, after)})")
        return Hashed(digest.hexdigest(), size, seen, chunk, bytes(sums))


def _read_head(fd: int, head_bytes: int) -> bytes:
    """Given an open descriptor, return its first ``head_bytes`` bytes (fewer if it is
    shorter), read with ``pread``: the descriptor's offset stays where it was."""
    chunks: list[bytes] = []
    got = 0
    while got < head_bytes:
        chunk = os.pread(fd, head_bytes - got, got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _diff(old: Fingerprint, new: Fingerprint) -> str:
    """Given two fingerprints, return which fields differ, e.g. ``"size 10 -> 20"``."""
    parts = [
        f"{name} {a} -> {b}"
        for name, a, b in zip(Fingerprint._fields, old, new, strict=True)
        if a != b
    ]
    return ", ".join(parts) or "no difference"
