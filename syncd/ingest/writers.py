"""Which processes hold a file open for writing, from ``/proc`` (Linux).

One walk of ``/proc/PID/fd`` answers a whole batch of questions: for each open descriptor
whose link names a file (not a pipe, socket or anonymous inode), the access mode is read from
``/proc/PID/fdinfo/N`` (``flags:``, octal); only descriptors open ``O_WRONLY`` or ``O_RDWR``
are then stat-ed (through the ``fd`` link, so the file itself is never opened) and matched by
``(st_dev, st_ino)`` against the files asked about. Files open read-only are never stat-ed,
so a read-only descriptor on a hung network mount cannot stall the walk.

syncd's own process is left out: its descriptors are the hasher's and the uploader's, and they
read. What the walk cannot see, it says once: a ``/proc`` that is missing or unreadable turns the
check off (``available`` is false) with one warning; processes of other users whose ``fd``
folders are not readable (syncd without root or ``CAP_SYS_PTRACE``), or a ``/proc`` mounted with
``hidepid``, produce one warning each and the check carries on with what it can see.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from syncd.fingerprint import Fingerprint

log = logging.getLogger(__name__)

_ACCESS_MODES_THAT_WRITE = (os.O_WRONLY, os.O_RDWR)


class WriterCheck:
    """Finds local processes that hold files open for writing.

    Given the procfs mount point (``/proc``). ``available`` is false when it cannot be read at
    all; then :meth:`writers` always answers "no writers" and one warning has been logged.
    """

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._own_pid = os.getpid()
        self._warned_denied = False
        self.available = _readable_proc(proc_root)
        if not self.available:
            log.warning(
                "cannot read %s: syncd cannot see which processes hold files open for writing; "
                "only quiet time (settle.quiet_s) protects files that are still being written",
                proc_root,
            )
            return
        hidepid = _hidepid_option(proc_root)
        if hidepid:
            log.warning(
                "%s is mounted with %s: syncd sees only its own user's processes, so writers "
                "run by other users are protected by quiet time (settle.quiet_s) only",
                proc_root,
                hidepid,
            )

    async def writers(self, fingerprints: Mapping[str, Fingerprint]) -> dict[str, list[int]]:
        """Given ``path -> fingerprint`` (the file's ``st_dev``/``st_ino`` are what count),
        return ``path -> sorted pids`` for each path that some other process holds open for
        writing; paths nobody writes are absent. One ``/proc`` walk, in a thread. Never
        raises for what ``/proc`` refuses to show (that is logged once instead)."""
        if not fingerprints or not self.available:
            return {}
        wanted: dict[tuple[int, int], list[str]] = {}
        for path, fp in fingerprints.items():
            wanted.setdefault((fp.dev, fp.ino), []).append(path)
        by_inode, denied = await asyncio.to_thread(self._walk, wanted)
        if denied and not self._warned_denied:
            self._warned_denied = True
            log.warning(
                "cannot see the open files of %d process(es) of other users in %s; files they "
                "write are protected by quiet time (settle.quiet_s) only. Run syncd as root, as "
                "the user that writes the files, or with CAP_SYS_PTRACE "
                "(systemd: AmbientCapabilities=CAP_SYS_PTRACE)",
                denied,
                self.proc_root,
            )
        result: dict[str, list[int]] = {}
        for key, pids in by_inode.items():
            for path in wanted[key]:
                result[path] = sorted(pids)
        return result

    def _walk(
        self, wanted: Mapping[tuple[int, int], list[str]]
    ) -> tuple[dict[tuple[int, int], set[int]], int]:
        """Blocking: return ``(dev, ino) -> pids`` of write-mode descriptors among ``wanted``,
        and the number of processes whose descriptors could not be read."""
        found: dict[tuple[int, int], set[int]] = {}
        denied = 0
        try:
            entries = os.listdir(self.proc_root)
        except OSError as exc:
            log.debug("cannot list %s: %s", self.proc_root, exc)
            return found, 0
        for name in entries:
            if not name.isdigit():
                continue
            pid = int(name)
            if pid == self._own_pid:
                continue
            fd_dir = f"{self.proc_root}/{name}/fd"
            try:
                fds = os.listdir(fd_dir)
            except PermissionError:
                denied += 1
                continue
            except OSError:
                continue  # the process exited while we looked
            for fd in fds:
                link = f"{fd_dir}/{fd}"
                try:
                    if not os.readlink(link).startswith("/"):
                        continue  # pipe:[..], socket:[..], anon_inode:..
                    if not _opened_for_write(f"{self.proc_root}/{name}/fdinfo/{fd}"):
                        continue
                    st = os.stat(link)
                except OSError:
                    continue  # closed or exited meanwhile, or not ours to see
                key = (st.st_dev, st.st_ino)
                if key in wanted:
                    found.setdefault(key, set()).add(pid)
        return found, denied


def _opened_for_write(fdinfo_path: str) -> bool:
    """Blocking: whether the ``fdinfo`` file says the descriptor was opened to write.

    Raises ``OSError`` when it cannot be read."""
    with open(fdinfo_path, encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("flags:"):
                flags = int(line.split(":", 1)[1].strip(), 8)
                return (flags & os.O_ACCMODE) in _ACCESS_MODES_THAT_WRITE
    return False


def _readable_proc(proc_root: str) -> bool:
    """Whether ``proc_root`` looks like a procfs we can read (our own ``fd`` folder lists)."""
    try:
        os.listdir(f"{proc_root}/self/fd")
        return os.path.isdir(f"{proc_root}/self/fdinfo")
    except OSError:
        return False


def _hidepid_option(proc_root: str) -> str | None:
    """Return the ``hidepid=`` mount option of ``proc_root`` when it hides processes."""
    try:
        with open(f"{proc_root}/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(proc_root)
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or fields[4] != target or " - proc " not in line:
            continue
        for opt in line.split(" - ", 1)[1].split()[-1].split(","):
            if opt.startswith("hidepid=") and opt not in ("hidepid=0", "hidepid=off"):
                return opt
    return None
