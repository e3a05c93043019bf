"""SHA-256 of whole files, streamed in dedicated worker threads, with a change check around it.

A file is stat-ed before it is opened (so a FIFO, socket or device node is refused without being
opened: opening a FIFO blocks, opening a tape device rewinds it), opened non-blocking and
without following a final symlink unless asked to, ``fstat``-ed, read with a per-thread reusable
page-aligned buffer (``readinto`` + ``memoryview``: no per-chunk allocation; hashlib releases the
GIL while it digests each chunk), then stat-ed by path and ``fstat``-ed again. The digest is
returned only when the file kept its inode, size and times and its path still names the same
inode: otherwise :class:`FileChanged` is raised and the caller settles the file again.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from syncd.display import display_path
from syncd.errors import SyncdError
from syncd.files import open_regular
from syncd.fingerprint import Fingerprint

DEFAULT_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Hashed:
    """The SHA-256 (lower-case hex) of a file, the bytes read, and the fingerprint the file had
    when it was opened (which it still had when hashing ended)."""

    sha256: str
    size: int
    fingerprint: Fingerprint


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
        if self._closed:
            raise HasherClosed("the hasher is closed")
        loop = asyncio.get_running_loop()
        job = _Job()
        self._jobs.add(job)
        try:
            result = await loop.run_in_executor(
                self._pool, self._hash_sync, path, expected, follow_symlinks, job
            )
        except asyncio.CancelledError:
            job.cancelled = True  # a cancelled await leaves the thread running: stop it
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                # close() dropped this queued hash; the caller itself was not cancelled.
                raise HasherClosed(f"hashing of {display_path(path)} was stopped") from None
            raise
        finally:
            self._jobs.discard(job)
        self.files_hashed += 1
        self.bytes_hashed += result.size
        return result

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

    def _hash_sync(
        self, path: str, expected: Fingerprint | None, follow_symlinks: bool, job: _Job
    ) -> Hashed:
        fd, before = open_regular(path, follow_symlinks=follow_symlinks)
        with io.FileIO(fd, "rb", closefd=True) as f:
            seen = Fingerprint.of(before)
            if expected is not None and seen != expected:
                raise FileChanged(path, f"changed since it was seen ({_diff(expected, seen)})")
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
            done = 0
            # Read exactly the size seen at open: a file that keeps growing is caught by the
            # fstat below instead of being chased forever.
            while done < size:
                if job.cancelled or self._closed:
                    raise HasherClosed(f"hashing of {display_path(path)} was stopped")
                want = size - done
                n = readinto(view if want >= chunk else view[:want])
                if not n:
                    break
                update(view[:n])
                done += n
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
        return Hashed(digest.hexdigest(), size, seen)


def _diff(old: Fingerprint, new: Fingerprint) -> str:
    """Given two fingerprints, return which fields differ, e.g. ``"size 10 -> 20"``."""
    parts = [
        f"{name} {a} -> {b}"
        for name, a, b in zip(Fingerprint._fields, old, new, strict=True)
        if a != b
    ]
    return ", ".join(parts) or "no difference"
