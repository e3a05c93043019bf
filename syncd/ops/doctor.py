"""``syncd doctor``: check everything a sync depends on, one line per check.

Each check prints ``PASS|WARN|FAIL  name: detail``; the exit status is 0 when nothing failed
and 1 otherwise. The checks: the configuration, each watched folder (present, readable, its
file system type: network file systems need ``polling: true`` and a longer ``settle.quiet_s``),
the API key (one metadata request), the ledger's integrity, inotify limits against the number
of folders to watch, free disk for the ledger, and the local HTTP endpoint's address.

The doctor never writes: the ledger is opened read-only and the API sees one GET.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TextIO

from syncd.apikey import resolve_api_key
from syncd.config import Config, WatchRoot
from syncd.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    ApiAuthError,
    ApiError,
    ApiNoCredits,
    ApiNotFound,
    ApiThrottled,
    ConfigError,
    LedgerError,
    SyncdError,
)
from syncd.ingest.pathfilter import PathFilter
from syncd.ingest.rootcheck import is_network_fs
from syncd.ledger.sqlite import Ledger, holder_pid
from syncd.ops.health import is_loopback, parse_listen
from syncd.ops.render import add_format_arguments, human_bytes, write_json
from syncd.ops.report import Command
from syncd.upload.client import MaviClient

Status = Literal["PASS", "WARN", "FAIL"]

# A writer on another machine is invisible locally (no inotify, no /proc): only silence tells
# that its copy is complete, and network clients flush in bursts with long gaps.
NETWORK_QUIET_S = 30.0
# A probe id that is valid in form (re_ and 18 digits) but names no asset.
DUMMY_ASSET_ID = "re_000000000000000001"
# Free space below this fails (a backup copy needs the ledger's size), below the warning warns.
DISK_FAIL_MIN_BYTES = 16 * 1024 * 1024
DISK_WARN_MIN_BYTES = 256 * 1024 * 1024
# Other programs of the same user share the inotify limits; leave them room.
INOTIFY_SHARE = 0.5
PROBE_CONNECT_TIMEOUT_S = 10.0
PROBE_READ_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome: ``PASS``, ``WARN`` or ``FAIL``, its name and a one-line detail."""

    status: Status
    name: str
    detail: str

    def line(self) -> str:
        """The human line: ``PASS  name: detail``."""
        return f"{self.status}  {self.name}: {self.detail}"


# --------------------------------------------------------------------------------------------
# Blocking helpers (each runs in a thread).


def unescape_mountinfo(field: str) -> str:
    """Given a path field of ``/proc/self/mountinfo``, return it with ``\\NNN`` octal escapes
    (space, tab, newline, backslash) decoded."""
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(mountinfo_path: str) -> list[tuple[str, str, str]]:
    """Given a ``mountinfo`` file, return ``(mount point, fs type, source)`` for each mount.
    Raises ``OSError`` when it cannot be read."""
    found: list[tuple[str, str, str]] = []
    with open(mountinfo_path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.rstrip("\n").partition(" - ")
            fields = left.split(" ")
            tail = right.split(" ")
            if not sep or len(fields) < 5 or len(tail) < 2:
                continue
            found.append((unescape_mountinfo(fields[4]), tail[0], unescape_mountinfo(tail[1])))
    return found


def fs_type_of(path: str, mount_table: Sequence[tuple[str, str, str]]) -> tuple[str, str] | None:
    """Given an absolute, resolved path and the mount table, return ``(fs type, mount point)``
    of the mount that holds it (the last mounted of the longest matching mount points)."""
    best: tuple[str, str] | None = None
    best_len = -1
    for point, fstype, _source in mount_table:
        prefix = point.rstrip("/") + "/"
        if (path == point or path.startswith(prefix)) and len(point) >= best_len:
            best, best_len = (fstype, point), len(point)
    return best


def count_watch_dirs(root: WatchRoot, temp_patterns: Sequence[str], limit: int) -> int:
    """Count the folders the watcher would watch under ``root`` (the root and every folder the
    filter accepts, recursively when the root is recursive), stopping once past ``limit``."""
    filt = PathFilter(root, temp_patterns)
    top = os.path.normpath(root.path)
    count = 0
    stack = [top]
    seen: set[tuple[int, int]] = set()
    while stack and count <= limit:
        folder = stack.pop()
        count += 1
        if not root.recursive:
            break
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    try:
                        if not entry.is_dir(follow_symlinks=root.follow_symlinks):
                            continue
                        st = entry.stat(follow_symlinks=root.follow_symlinks)
                    except OSError:
                        continue
                    key = (st.st_dev, st.st_ino)
                    if key in seen or filt.reason_dir(entry.path) is not None:
                        continue
                    seen.add(key)
                    stack.append(entry.path)
        except OSError:
            continue  # unreadable folder: the daemon reports it; nothing to watch below it
    return count


def read_int(path: str) -> int | None:
    """Return the integer in a one-line file such as a ``/proc/sys`` knob, or None."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def nearest_existing(path: str) -> str:
    """Return ``path`` or its closest ancestor that exists."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


# --------------------------------------------------------------------------------------------
# The checks.


def check_config(cfg: Config) -> Check:
    """The configuration loaded (the CLI refuses an invalid one before the doctor runs)."""
    roots = len(cfg.watch)
    if roots == 0:
        return Check("WARN", "config", f"{cfg.source}: valid, but no folder to watch (watch: [])")
    return Check("PASS", "config", f"{cfg.source}: valid, {roots} folder(s) to watch")


def check_roots(cfg: Config, mount_table: Sequence[tuple[str, str, str]] | None) -> list[Check]:
    """Blocking: each watched folder exists and is readable; its file system type suits the
    way it is watched."""
    checks: list[Check] = []
    for root in cfg.watch:
        name = f"folder {root.path}"
        try:
            st = os.stat(root.path)
        except FileNotFoundError:
            checks.append(Check("WARN", name, "missing; syncd waits for it (create or mount it)"))
            continue
        except OSError as exc:
            checks.append(Check("FAIL", name, f"cannot stat: {exc.strerror or exc}"))
            continue
        if not stat.S_ISDIR(st.st_mode):
            checks.append(Check("FAIL", name, "is not a folder"))
            continue
        if not os.access(root.path, os.R_OK | os.X_OK):
            checks.append(Check("FAIL", name, "not readable by this user"))
            continue
        if mount_table is None:
            checks.append(Check("WARN", name, "readable; file system type unknown (no mountinfo)"))
            continue
        found = fs_type_of(os.path.realpath(root.path), mount_table)
        fstype, point = found if found else ("unknown", "?")
        network = is_network_fs(fstype)
        if not network:
            mode = "polling" if root.polling else "inotify"
            checks.append(Check("PASS", name, f"readable, {fstype} (mounted at {point}), {mode}"))
            continue
        advice: list[str] = []
        if not root.polling:
            advice.append(
                "set `polling: true` for it: inotify does not see files written by other machines"
            )
        if cfg.settle.quiet_s < NETWORK_QUIET_S:
            advice.append(
                f"raise settle.quiet_s to {NETWORK_QUIET_S:g} s or more (now "
                f"{cfg.settle.quiet_s:g} s): a writer on another machine is invisible locally"
            )
        if advice:
            checks.append(
                Check(
                    "WARN", name, f"network file system {fstype} at {point}: " + "; ".join(advice)
                )
            )
        else:
            checks.append(Check("PASS", name, f"network file system {fstype}, polled, quiet_s ok"))
    return checks


def check_inotify(cfg: Config, proc_root: str) -> Check:
    """Blocking: the folders to watch fit in the user's inotify watch limit."""
    watched = [r for r in cfg.watch if not r.polling]
    if not watched:
        return Check("PASS", "inotify", "not used (no folders, or every folder is polled)")
    knobs = os.path.join(proc_root, "sys/fs/inotify")
    max_watches = read_int(os.path.join(knobs, "max_user_watches"))
    max_instances = read_int(os.path.join(knobs, "max_user_instances"))
    if max_watches is None:
        return Check("WARN", "inotify", f"cannot read {knobs}/max_user_watches")
    dirs = 0
    for root in watched:
        if os.path.isdir(root.path):
            dirs += count_watch_dirs(root, cfg.settle.temp_patterns, max_watches - dirs)
    suggestion = max(524288, 1 << (2 * dirs).bit_length())
    fix = (
        f"raise it: `sysctl fs.inotify.max_user_watches={suggestion}` (and the same line in "
        "/etc/sysctl.d/90-syncd.conf)"
    )
    detail = f"{dirs} folder(s) to watch; max_user_watches is {max_watches}"
    if max_instances is not None:
        detail += f", max_user_instances {max_instances}"
    if dirs > max_watches:
        return Check("FAIL", "inotify", f"more than {max_watches} folders to watch; {fix}")
    if dirs > max_watches * INOTIFY_SHARE:
        return Check("WARN", "inotify", f"{detail}; other programs share the limit: {fix}")
    if max_instances is not None and max_instances < 1:
        return Check("FAIL", "inotify", f"{detail}: no inotify instance allowed")
    return Check("PASS", "inotify", detail)


async def check_ledger(cfg: Config) -> Check:
    """The ledger passes SQLite's integrity check (or can be created)."""
    path = cfg.ledger.path
    if not await asyncio.to_thread(os.path.exists, path):
        parent = await asyncio.to_thread(nearest_existing, os.path.dirname(path))
        if await asyncio.to_thread(os.access, parent, os.W_OK | os.X_OK):
            return Check("PASS", "ledger", f"{path} does not exist yet; it will be created")
        return Check("FAIL", "ledger", f"{path} does not exist and {parent} is not writable")
    try:
        # check=True runs SQLite's quick_check and turns damage into LedgerCorrupt, whose
        # message says how to move the file aside and restore a backup.
        ledger = await Ledger.open(path, readonly=True, check=True)
    except LedgerError as exc:
        return Check("FAIL", "ledger", str(exc))
    try:
        counts = await ledger.counts()
    except LedgerError as exc:
        return Check("FAIL", "ledger", str(exc))
    finally:
        await ledger.close()
    files = sum(counts["contents"].values())
    detail = f"{path}: integrity ok, {files} content(s), {sum(counts['paths'].values())} path(s)"
    pid = await asyncio.to_thread(holder_pid, path + ".lock")
    if pid is not None:
        detail += f"; in use by the daemon (pid {pid or '?'})"
    if not await asyncio.to_thread(os.access, path, os.R_OK | os.W_OK):
        return Check("WARN", "ledger", detail + "; not writable by this user")
    return Check("PASS", "ledger", detail)


def check_disk(cfg: Config) -> Check:
    """Blocking: enough free space next to the ledger for it to grow and be backed up."""
    folder = nearest_existing(os.path.dirname(cfg.ledger.path))
    try:
        vfs = os.statvfs(folder)
        size = os.path.getsize(cfg.ledger.path) if os.path.exists(cfg.ledger.path) else 0
    except OSError as exc:
        return Check("FAIL", "disk", f"cannot check {folder}: {exc.strerror or exc}")
    free = vfs.f_bavail * vfs.f_frsize
    detail = f"{human_bytes(free)} free in {folder} (ledger {human_bytes(size)})"
    if free < max(DISK_FAIL_MIN_BYTES, size):
        return Check("FAIL", "disk", f"{detail}: the ledger cannot grow or be backed up")
    if free < max(DISK_WARN_MIN_BYTES, 3 * size):
        return Check("WARN", "disk", f"{detail}: little room to grow and keep backups")
    return Check("PASS", "disk", detail)


def check_http(cfg: Config) -> Check:
    """The local endpoint's address is usable and private unless meant otherwise."""
    listen = cfg.http.listen
    if listen is None:
        return Check("PASS", "http", "disabled (http.listen: null)")
    try:
        where = parse_listen(listen)
    except SyncdError as exc:
        return Check("FAIL", "http", str(exc))
    if isinstance(where, str):
        folder = os.path.dirname(where)
        if not os.path.isdir(folder):
            return Check("FAIL", "http", f"{listen}: folder {folder} does not exist")
        return Check("PASS", "http", f"{listen} (Unix socket, mode 0600)")
    if not is_loopback(where[0]):
        return Check(
            "WARN", "http", f"{listen} is reachable from other hosts (paths and states are shown)"
        )
    return Check("PASS", "http", f"{listen} (loopback only)")


async def check_key(cfg: Config, env: Mapping[str, str] | None, asset_id: str | None) -> Check:
    """The API key works: one metadata request on a known asset (or a dummy id, where the
    answer "Asset not found" proves the key was accepted)."""
    try:
        key = resolve_api_key(cfg, env)
    except ConfigError as exc:
        return Check("FAIL", "api key", "; ".join(exc.problems))
    probe = asset_id or DUMMY_ASSET_ID
    try:
        async with MaviClient(
            cfg.api.base_url,
            key,
            connect_timeout_s=min(cfg.api.connect_timeout_s, PROBE_CONNECT_TIMEOUT_S),
            read_timeout_s=min(cfg.api.read_timeout_s, PROBE_READ_TIMEOUT_S),
            verify_tls=cfg.api.verify_tls,
        ) as client:
            async with asyncio.timeout(PROBE_CONNECT_TIMEOUT_S + PROBE_READ_TIMEOUT_S):
                status = await client.metadata(probe)
    except ConfigError as exc:
        return Check("FAIL", "api key", "; ".join(exc.problems))
    except ApiNotFound:
        if asset_id is None:
            return Check("PASS", "api key", f"accepted by {cfg.api.base_url}")
        return Check(
            "WARN",
            "api key",
            f"accepted, but asset {asset_id} (done in the ledger) is unknown to the API: "
            "deleted remotely, or a key of another account?",
        )
    except ApiAuthError as exc:
        return Check("FAIL", "api key", f"refused: {exc}")
    except ApiNoCredits as exc:
        return Check("FAIL", "api key", f"accepted, but the account has no credits left: {exc}")
    except ApiThrottled as exc:
        return Check("WARN", "api key", f"could not verify now, the API throttled the probe: {exc}")
    except ApiError as exc:
        return Check("FAIL", "api key", f"cannot check against {cfg.api.base_url}: {exc}")
    except TimeoutError:
        return Check("FAIL", "api key", f"no answer from {cfg.api.base_url} in time")
    return Check("PASS", "api key", f"accepted; asset {probe} is {status.upload_status} on the API")


async def run_checks(
    cfg: Config, *, env: Mapping[str, str] | None = None, proc_root: str = "/proc"
) -> list[Check]:
    """Run every check and return them in order. Given the config, the environment for the
    API key (default ``os.environ``) and the procfs root (for mountinfo and inotify limits)."""
    checks = [check_config(cfg)]
    try:
        table: list[tuple[str, str, str]] | None = await asyncio.to_thread(
            mounts, os.path.join(proc_root, "self/mountinfo")
        )
    except OSError:
        table = None
    checks.extend(await asyncio.to_thread(check_roots, cfg, table))
    checks.append(await asyncio.to_thread(check_inotify, cfg, proc_root))
    ledger_check = await check_ledger(cfg)
    checks.append(ledger_check)
    checks.append(await asyncio.to_thread(check_disk, cfg))
    checks.append(await asyncio.to_thread(check_http, cfg))
    known_asset = None
    if ledger_check.status != "FAIL" and await asyncio.to_thread(os.path.exists, cfg.ledger.path):
        try:
            ledger = await Ledger.open(cfg.ledger.path, readonly=True, check=False)
            try:
                known_asset = await ledger.any_done_asset_id()
            finally:
                await ledger.close()
        except LedgerError:
            known_asset = None
    checks.append(await check_key(cfg, env, known_asset))
    return checks


def render(checks: Sequence[Check], out: TextIO | None = None) -> None:
    """Write one line per check."""
    w = (out or sys.stdout).write
    for check in checks:
        w(check.line() + "\n")


def document(checks: Sequence[Check]) -> dict[str, Any]:
    """The ``syncd doctor --json`` document: ``ok`` and the list of checks."""
    return {"ok": all(c.status != "FAIL" for c in checks), "checks": [asdict(c) for c in checks]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``syncd doctor``."""
    add_format_arguments(p)


async def run(args: argparse.Namespace, cfg: Config) -> int:
    """``syncd doctor``: run every check and print them. Returns 0 when none failed, else 1."""
    checks = await run_checks(cfg)
    if args.format == "json":
        write_json(document(checks))
    else:
        render(checks)
    return EXIT_OK if all(c.status != "FAIL" for c in checks) else EXIT_FAILURE


COMMAND = Command(
    "doctor",
    "check config, API key, ledger, inotify limits, file systems and disk space",
    add_arguments,
    run,
)
