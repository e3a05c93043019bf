"""Is a root still the folder that was added, and can it be watched; the errors when not.

Blocking checks the watcher, its monitor thread and the intake run in threads: what a root is
when it is added (:func:`root_identity`: device, inode, mount point), whether it is available
again (:func:`root_available`), whether it is still the folder that was added (a moved,
replaced or unmounted root), and whether it sits on a network file system
(:func:`network_filesystem`). :class:`WatchError` is the one-line error, with its fix, for a
root that cannot be watched (missing, not a folder, denied, the inotify limits). Apart from
:mod:`syncd.ingest.watcher` because none of it needs an observer.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Final, Literal

from syncd.display import display_path
from syncd.errors import EXIT_CONFIG, SyncdError
from syncd.ingest._inotify import sysctl

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
        "fuse.gcsfuse",
        "fuse.davfs",
        "fuse.davfs2",
        "davfs",
    }
)


def is_network_fs(fs_type: str) -> bool:
    """Given a file system type as mountinfo names it, return whether it is a network or
    shared one (the list above, or any ``nfs*``, ``smb*`` or ``cifs*`` variant)."""
    return fs_type in NETWORK_FS_TYPES or fs_type.startswith(("nfs", "smb", "cifs"))


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


def root_identity(path: str) -> RootIdentity:
    """Blocking: return what the root folder at ``path`` is now (device, inode, mount point),
    to give :func:`root_available` later. Raises :class:`WatchError` when it is missing, not
    a folder or unreadable."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise watch_error(path, exc) from None
    if not stat.S_ISDIR(st.st_mode):
        raise watch_error(path, OSError(errno.ENOTDIR, "not a folder"))
    if not os.access(path, os.R_OK | os.X_OK):
        raise watch_error(path, OSError(errno.EACCES, "permission denied"))
    return RootIdentity(st.st_dev, st.st_ino, _is_mountpoint(path, st))


def _is_mountpoint(path: str, st: os.stat_result) -> bool:
    parent = os.path.dirname(path)
    if parent == path:
        return True  # "/"
    try:
        return os.stat(parent).st_dev != st.st_dev
    except OSError:
        return False


def identity_problem(path: str, identity: RootIdentity) -> str | None:
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
        return fs_type if is_network_fs(fs_type) else None
    return None


def limit_message(path: str) -> str:
    current = sysctl("fs.inotify.max_user_watches")
    suggest = max(524288, 2 * (current or 0))
    now = f" (now {current})" if current is not None else ""
    return (
        f"cannot watch {display_path(path)}: the inotify watch limit is reached{now}. "
        f"Fix: `sysctl fs.inotify.max_user_watches={suggest}`, and keep it across reboots with "
        f"`echo fs.inotify.max_user_watches={suggest} > /etc/sysctl.d/90-syncd.conf`; "
        "or set `polling: true` for this folder"
    )


def watch_error(path: str, exc: OSError) -> WatchError:
    """Given a root and the error watching it raised, return the one-line :class:`WatchError`."""
    shown = display_path(path)
    code = exc.errno
    if code == errno.ENOSPC:
        return WatchError(path, limit_message(path), "watch_limit")
    if code == errno.EMFILE:
        current = sysctl("fs.inotify.max_user_instances")
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
