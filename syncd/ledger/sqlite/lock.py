"""The SQLite ledger's ownership lock: one daemon owns a ledger at a time (an ``flock`` on
``<ledger>.lock`` holding its pid), and the stamp a graceful stop leaves so the next start may
skip the integrity check; the ledger's folder and file modes.
"""

from __future__ import annotations

import errno
import fcntl
import os

from syncd.errors import LedgerLocked, LedgerUnwritable


class LedgerLock:
    """Exclusive ownership of a ledger by one daemon: ``flock`` on ``<ledger>.lock``.

    The lock file holds the owner's pid so a second daemon can name it. The kernel drops the lock
    when the process dies, so a stale file never blocks a restart.
    """

    def __init__(self, ledger_path: str) -> None:
        self.path = ledger_path + ".lock"
        self._fd: int | None = None
        self.previous = ""  # what the lock file held when acquired

    def acquire(self) -> None:
        """Take the lock; raises :class:`LedgerLocked` naming the holder's pid if it is held."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise LedgerUnwritable(
                f"cannot create the ledger's lock file {self.path}: {exc.strerror or exc}"
                + (
                    "; the ledger must be on a writable file system"
                    if exc.errno == errno.EROFS
                    else ""
                )
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LedgerLocked(self.path[: -len(".lock")], holder_pid(self.path)) from None
            raise
        # What the previous owner left: its pid, and a stamp if it closed the ledger cleanly.
        self.previous = os.pread(fd, 4096, 0).decode("ascii", "replace")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def closed_cleanly(self) -> bool:
        """Whether the previous owner closed the ledger cleanly and nothing has touched its
        files since (same device, inode, size, mtime and ctime of the file and its WAL).
        Call after :meth:`acquire`."""
        lines = self.previous.splitlines()
        stamp = _files_stamp(self.path[: -len(".lock")])
        return stamp is not None and f"{_CLEAN_STAMP} {stamp}" in lines

    def mark_clean(self) -> None:
        """Record that the ledger was just closed cleanly (its connection closed after a
        graceful stop): the next owner may skip the check at open while the files stay
        untouched. Acquiring the lock clears the mark."""
        stamp = _files_stamp(self.path[: -len(".lock")])
        if self._fd is None or stamp is None:
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n{_CLEAN_STAMP} {stamp}\n".encode(), 0)

    def release(self) -> None:
        """Drop the lock (the file stays; its content no longer matters)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_CLEAN_STAMP = "closed-cleanly"


def _files_stamp(ledger_path: str) -> str | None:
    """The stat fingerprints of the ledger file and its WAL (``-`` when absent); None when the
    ledger file cannot be stat-ed."""
    parts: list[str] = []
    for suffix in ("", "-wal"):
        try:
            st = os.stat(ledger_path + suffix)
        except FileNotFoundError:
            if not suffix:
                return None
            parts.append("-")
            continue
        except OSError:
            return None
        parts.append(f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}")
    return " ".join(parts)


def holder_pid(lock_path: str) -> int | None:
    """Return the pid of the daemon holding ``lock_path``, or None if nobody holds it."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 32).decode("ascii", "replace").split("\n")[0].strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def prepare_ledger_dir(path: str) -> None:
    """Create the ledger's folder (0700) and file (0600) if missing; raises LedgerUnwritable."""
    folder = os.path.dirname(path) or "."
    try:
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise LedgerUnwritable(
                f"ledger {path} is on a read-only file system; syncd must be able to write it "
                "(set ledger.path to a writable place, e.g. /var/lib/syncd)"
            ) from None
        raise LedgerUnwritable(f"cannot create ledger {path}: {exc.strerror or exc}") from None
