"""Filesystem primitives: open a regular file without blocking or touching a special file.

A leaf (it imports only ``syncd.errors`` and ``syncd.display``), so that the ingest stage (the
hasher, the media pre-flight, the scanner and the settler) and the upload client open files
the same way and name file kinds in the same words. Opening a FIFO blocks until a writer comes,
opening a tape device rewinds it, opening a socket fails oddly: a path is stat-ed before it is
opened, opened non-blocking, and ``fstat``-ed after.
"""

from __future__ import annotations

import errno
import os
import stat

from syncd.display import display_path
from syncd.errors import SyncdError


class NotRegularFile(SyncdError):
    """The path is not a regular file (a FIFO, socket, device, folder or, when symlinks are
    not followed, a symlink); it was not opened, or not read.

    Given the path and what it is instead.
    """

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.kind = kind
        super().__init__(f"{display_path(path)} is not a regular file (it is {kind})")


def file_kind(mode: int) -> str:
    """Given an ``st_mode``, return what kind of file it is, in words ("a FIFO", ...)."""
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "an unknown kind of file"


def open_regular(path: str, *, follow_symlinks: bool) -> tuple[int, os.stat_result]:
    """Open a regular file for reading without ever blocking or touching a special file.

    Given the path and whether a final symlink may be followed. Returns the open descriptor
    (the caller closes it) and its ``fstat``. Raises :class:`NotRegularFile` for anything but a
    regular file, and the ``OSError`` of the stat or open otherwise (``FileNotFoundError``,
    ``PermissionError``, ...). Blocking: call it from a worker thread.
    """
    before = os.stat(path, follow_symlinks=follow_symlinks)
    if not stat.S_ISREG(before.st_mode):
        raise NotRegularFile(path, file_kind(before.st_mode))
    # O_NONBLOCK: should a FIFO take the file's place after the stat above, open returns at
    # once instead of waiting for a writer, and the fstat below refuses it.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(path, "a symlink") from None
        if exc.errno == errno.ENXIO:
            raise NotRegularFile(path, "a socket") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, file_kind(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, st
