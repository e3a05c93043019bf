"""The config's cross-field rules: what the types of :mod:`syncd.config` cannot say alone.

Given a config the schema built (types, ranges and enumerations already checked),
:func:`check_semantics` adds every rule it breaks to a :class:`Problems` with its key path:
URLs of the API, the ledger, Redis and the webhook; names of fleet hosts and accounts; roots
that nest or point into each other; clean-up destinations; hooks; the upload timetable; the
HTTP listen address and allowed Host names. It reads the config only (no file system checks
beyond the paths' text), so ``syncd config check`` and every start run the same rules.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from typing import TYPE_CHECKING

from syncd.units import parse_clock_time, parse_days

if TYPE_CHECKING:
    from syncd.config import Config, HooksConfig, ScheduleWindow, WatchRoot


class Problems:
    """Every problem found in one config, each as ``key.path: message``, in the order found."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path or '<top>'}: {message}")


def check_semantics(cfg: Config, problems: Problems) -> None:
    """Cross-field rules the types cannot express."""
    url_problem = _base_url_problem(cfg.api.base_url)
    if url_problem is not None:
        problems.add("api.base_url", url_problem)
    if cfg.ledger.url is not None:
        pg_problem = _ledger_url_problem(cfg.ledger.url)
        if pg_problem is not None:
            problems.add("ledger.url", pg_problem)
        if cfg.ledger.backup_dir is not None:
            problems.add(
                "ledger.backup_dir",
                "not used with ledger.url: back a PostgreSQL ledger up with pg_dump",
            )
    for key, name in (("host_name", cfg.fleet.host_name), ("account", cfg.fleet.account)):
        if name is not None and not _is_fleet_name(name):
            problems.add(
                f"fleet.{key}", f"must be 1 to 63 printable characters without spaces, got {name!r}"
            )
    if cfg.fleet.redis_url is not None:
        redis_problem = _redis_url_problem(cfg.fleet.redis_url)
        if redis_problem is not None:
            problems.add("fleet.redis_url", redis_problem)
    if cfg.upload.backoff_initial_s > cfg.upload.backoff_max_s:
        problems.add("upload.backoff_initial_s", "must not exceed upload.backoff_max_s")
    if cfg.rate_limits.cooldown_initial_s > cfg.rate_limits.cooldown_max_s:
        problems.add("rate_limits.cooldown_initial_s", "must not exceed rate_limits.cooldown_max_s")
    if cfg.poll.initial_s > cfg.poll.max_s:
        problems.add("poll.initial_s", "must not exceed poll.max_s")
    _check_roots(cfg.watch, problems)
    _check_schedule(cfg.upload.schedule, problems)
    _check_after_success(cfg.watch, problems)
    _check_hooks(cfg.hooks, problems)
    if cfg.http.listen is not None:
        listen = cfg.http.listen
        if listen.startswith("unix:"):
            if not os.path.isabs(listen[5:]):
                problems.add("http.listen", "unix socket path must be absolute")
        else:
            host, sep, port = listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                problems.add("http.listen", f"expected HOST:PORT or unix:/path, got {listen!r}")
    for i, name in enumerate(cfg.http.allowed_hosts):
        if not _is_host_name(name):
            problems.add(
                f"http.allowed_hosts[{i}]",
                f"expected a host name or IP address without a port, got {name!r}",
            )


# A DNS name (labels of letters, digits, hyphens and underscores), an IPv4 address, or an
# IPv6 address with or without its brackets.
_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?"
)


def _is_fleet_name(name: str) -> bool:
    """Whether ``name`` can name a fleet host or account: 1 to 63 printable characters, no
    white space (it goes into Redis keys, ledger rows and log lines)."""
    return 0 < len(name) <= 63 and all(c.isprintable() and not c.isspace() for c in name)


def _is_host_name(name: str) -> bool:
    """Whether ``name`` can be a Host header's host: a DNS name or an IP address, no port."""
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return bare == name and _HOST_NAME.fullmatch(name) is not None
    return True


def _split_url(url: str) -> urllib.parse.SplitResult | str:
    """Return ``url``'s parts, or what makes it no URL at all (a bad port included)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    return parts


def _base_url_problem(url: str) -> str | None:
    """Return what makes ``url`` unusable as the API base URL, or ``None``."""
    parts = _split_url(url)
    if isinstance(parts, str):
        return parts
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host name"
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would become a second Authorization header.
        return "must not contain a user name or password (the API key goes in MAVI_API_KEY)"
    if parts.query or parts.fragment:
        return "must not have a query (?...) or a fragment (#...)"
    return None


def _redis_url_problem(url: str) -> str | None:
    """Return what makes ``url`` unusable as the fleet's Redis URL, or ``None``."""
    parts = _split_url(url)
    if isinstance(parts, str):
        return parts
    if parts.scheme not in ("redis", "rediss", "unix"):
        return f"must start with redis://, rediss:// or unix://, got {url!r}"
    if parts.scheme == "unix":
        return None if parts.path.startswith("/") else "a unix:// URL needs an absolute path"
    if not parts.hostname:
        return "has no host name"
    return None


def _ledger_url_problem(url: str) -> str | None:
    """Return what makes ``url`` unusable as a PostgreSQL ledger URL, or ``None``."""
    parts = _split_url(url)
    if isinstance(parts, str):
        return parts
    if parts.scheme not in ("postgresql", "postgres"):
        return f"must start with postgresql://, got {url!r}"
    if not parts.hostname and "host=" not in parts.query:
        return "has no host name"
    if parts.password is not None:
        # The config file is often world-readable; a password belongs in a 0600 file.
        return "must not contain a password (use PGPASSFILE or ~/.pgpass, or PGPASSWORD)"
    if not parts.path.strip("/"):
        return "names no database (postgresql://HOST/DATABASE)"
    return None


def _check_roots(roots: tuple[WatchRoot, ...], problems: Problems) -> None:
    """Watch roots: the same folder twice is an error. A root inside another is allowed (its
    files belong to the deepest root), but only when the configured paths show it: files are
    told apart by path, and a root that lies inside another only through a symbolic link
    would give each of its files two paths."""
    named = [os.path.normpath(r.path) for r in roots]
    real = [os.path.realpath(p) for p in named]
    for i in range(len(roots)):
        for j in range(i):
            where = f"watch[{i}].path"
            if named[i] == named[j]:
                problems.add(where, f"same folder as watch[{j}].path")
            elif real[i] == real[j]:
                problems.add(where, f"same folder as watch[{j}].path (both are {real[i]})")
            elif (_inside(real[i], real[j]) and not _inside(named[i], named[j])) or (
                _inside(real[j], real[i]) and not _inside(named[j], named[i])
            ):
                problems.add(
                    where,
                    f"overlaps watch[{j}].path through a symbolic link ({real[i]} and "
                    f"{real[j]}); name both by their real paths",
                )


def _check_after_success(roots: tuple[WatchRoot, ...], problems: Problems) -> None:
    """``move_to`` goes with ``after_success: move`` and lies outside every watched root (a
    file moved into a root would be found again, and moved again)."""
    for i, root in enumerate(roots):
        where = f"watch[{i}].move_to"
        if root.after_success == "move" and root.move_to is None:
            problems.add(where, "required when after_success is move")
        elif root.after_success != "move" and root.move_to is not None:
            problems.add(where, f"only used with after_success: move (it is {root.after_success})")
        if root.move_to is None:
            continue
        target = os.path.realpath(root.move_to)
        for j, other in enumerate(roots):
            folder = os.path.realpath(other.path)
            if target == folder or _inside(target, folder) or _inside(folder, target):
                problems.add(where, f"must lie outside every watched folder (watch[{j}].path)")
                break


def _check_hooks(hooks: HooksConfig, problems: Problems) -> None:
    for key in ("on_success", "on_failed"):
        argv = getattr(hooks, key)
        if argv and not argv[0].strip():
            problems.add(f"hooks.{key}[0]", "the program to run is empty")
    if hooks.webhook_url is not None:
        problem = _webhook_url_problem(hooks.webhook_url)
        if problem is not None:
            problems.add("hooks.webhook_url", problem)
    elif hooks.webhook_secret_file is not None:
        problems.add("hooks.webhook_secret_file", "only used with hooks.webhook_url")
    if hooks.backoff_initial_s > hooks.backoff_max_s:
        problems.add("hooks.backoff_initial_s", "must not exceed hooks.backoff_max_s")


def _webhook_url_problem(url: str) -> str | None:
    """Return what makes ``url`` unusable as a webhook, or ``None``."""
    parts = _split_url(url)
    if isinstance(parts, str):
        return parts
    if parts.scheme not in ("http", "https"):
        return f"must start with http:// or https://, got {url!r}"
    if not parts.hostname:
        return "has no host name"
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    return None


def _check_schedule(windows: tuple[ScheduleWindow, ...], problems: Problems) -> None:
    for i, window in enumerate(windows):
        where = f"upload.schedule[{i}]"
        try:
            parse_days(window.days)
        except ValueError as exc:
            problems.add(f"{where}.days", str(exc))
        times = {}
        for key, text in (("from", window.from_), ("to", window.to)):
            try:
                times[key] = parse_clock_time(text)
            except ValueError as exc:
                problems.add(f"{where}.{key}", str(exc))
        if times.get("from") == 24 * 60:
            problems.add(f"{where}.from", "a window cannot start at 24:00")
        elif len(times) == 2 and times["from"] == times["to"]:
            problems.add(f"{where}.to", "equals from (a whole day is from 00:00 to 24:00)")


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")
