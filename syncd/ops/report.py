"""The operator's read model: ``syncd show``, ``ls``, ``status``, ``retry`` and ``forget``.

Each command builds plain data from the ledger (the same dictionaries back ``--json`` and the
local HTTP endpoint's ``/v1/assets``), and ``render.py`` writes it as a terse table for humans,
JSON for scripts, or CSV. The JSON keys are stable and documented in ``docs/operations.md``.
This module is the read model plus the five commands that use it (``COMMANDS``, the list the
CLI wires). It is about 800 lines, one section per command (``status`` the largest, ~250),
because the five share what makes them one interface: opening either ledger read-only (as
any fleet host with ``--host``), resolving a path, sha256 prefix or asset id, and the row and
path shapes their JSON is made of.

Conventions shared by every command:

- Times in JSON are ISO-8601 UTC strings (``2024-05-01T12:00:00Z``); humans see local time.
- A path that is not valid UTF-8 is shown with its odd bytes escaped (``caf\\xe9.mp4``); JSON
  carries the same escaped text plus ``path_bytes_hex``, the exact bytes in hex.
- The query commands open the ledger read-only, so they work whether or not a daemon runs;
  ``retry`` and ``forget`` write through one short transaction each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from syncd.config import Config
from syncd.display import display_path, one_line
from syncd.errors import EXIT_FAILURE, EXIT_OK, SyncdError
from syncd.ledger.records import (
    CONTENT_STATES,
    PATH_STATES,
    Attempt,
    Content,
    ContentState,
    PathRecord,
)
from syncd.ledger.sqlite import Ledger, holder_pid
from syncd.ledger.store import OperatorLedger
from syncd.ops.render import (
    LS_HEADER,
    RowWriter,
    add_format_arguments,
    human_duration,
    ls_human,
    render_show,
    render_status,
    write_json,
)

# A heartbeat older than this means the daemon is stuck (it writes one every few seconds).
HEARTBEAT_STALE_S = 60.0
# The shortest sha256 prefix `show` and `retry` accept (shorter ones are too often ambiguous).
MIN_PREFIX_HEX = 8
# Contents still to upload.
BACKLOG_STATES = ("pending", "allocated", "uploading")

_HEX = re.compile(r"[0-9a-fA-F]+")
_ASSET_ID = re.compile(r"re_[0-9]+")


class Command(NamedTuple):
    """One subcommand as the CLI wires it: ``sub.add_parser(name, help=help)``, then
    ``add_arguments(parser)``; ``await run(args, cfg)`` returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Config], Awaitable[int]]


class NotFound(SyncdError):
    """The key names nothing in the ledger (exit status 1). Given the one-line message."""


# --------------------------------------------------------------------------------------------
# Rendering helpers shared by every operator command (and the HTTP endpoint).


def path_fields(path: str, key: str = "path") -> dict[str, str]:
    """Given a path, return ``{key: text}``, plus ``{key}_bytes_hex`` (the exact bytes) when
    the path is not valid UTF-8."""
    raw = os.fsencode(path)
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {key: raw.decode("utf-8", "backslashreplace"), f"{key}_bytes_hex": raw.hex()}


def iso(ts: float | None) -> str | None:
    """Given epoch seconds (or None), return an ISO-8601 UTC string (or None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# Opening the ledger.


async def open_readonly(cfg: Config, host: str | None = None) -> OperatorLedger:
    """Open the configured ledger read-only, skipping the slow integrity check (``syncd
    doctor`` runs it); on a fleet's shared ledger, as ``host`` (default: this host).

    Raises :class:`~syncd.errors.LedgerError` when there is none, :class:`SyncdError` when a
    ``host`` is named for a SQLite ledger (it holds this host's paths only).
    """
    if cfg.ledger.url is not None:
        return await _open_fleet(cfg, host)
    _no_host_on_sqlite(cfg, host)
    return await Ledger.open(cfg.ledger.path, readonly=True, check=False)


def add_host_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--host NAME``: on a fleet's shared ledger, ``what`` of that host only."""
    p.add_argument(
        "--host",
        metavar="NAME",
        help=f"fleet ledger (ledger.url) only: {what} of the host named NAME (fleet.host_name)",
    )


def _no_host_on_sqlite(cfg: Config, host: str | None) -> None:
    if host is not None:
        raise SyncdError(
            f"--host {host}: only a fleet's shared ledger (ledger.url) holds other hosts' paths; "
            f"this config's ledger is the SQLite file {cfg.ledger.path}"
        )


async def open_for_update(cfg: Config) -> OperatorLedger:
    """Open the configured ledger for a short operator write, never creating one. Works while
    a daemon runs (each write is one transaction; SQLite serialises them)."""
    if cfg.ledger.url is not None:
        return await _open_fleet(cfg)
    if not await asyncio.to_thread(os.path.exists, cfg.ledger.path):
        raise SyncdError(f"no ledger at {cfg.ledger.path} (has the daemon run with this config?)")
    return await Ledger.open(cfg.ledger.path, check=False)


async def _open_fleet(cfg: Config, host: str | None = None) -> OperatorLedger:
    """The shared PostgreSQL ledger as ``host`` (default: this host, ``fleet.host_name``)
    sees it: its own paths and heartbeat, every host's contents. Neither migrates nor claims
    anything."""
    assert cfg.ledger.url is not None  # noqa: S101 - the callers checked
    # Imported here: the driver (asyncpg) costs every start ~35 ms and ~3 MB otherwise.
    from syncd.ledger.postgres import PostgresLedger

    return await PostgresLedger.open(
        cfg.ledger.url, host=host or cfg.fleet.host_name, readonly=True, pool_size=1
    )


# --------------------------------------------------------------------------------------------
# show: one content (or one path) with everything the ledger knows about it.


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a key named: a content (``sha256``) and/or the path record it was found by."""

    sha256: str | None
    path: PathRecord | None
    matched_by: str  # "path", "asset_id" or "sha256"


async def resolve(ledger: OperatorLedger, key: str, *, filesystem: bool = True) -> Resolved:
    """Find what ``key`` names: an existing file (absolute or relative, when ``filesystem``),
    else a path the ledger knows, else an asset id (``re_...``, current or superseded), else a
    sha256 or a unique prefix of at least 8 hex digits.

    Returns the :class:`Resolved`; raises :class:`NotFound` (one line) when nothing matches or
    a prefix is ambiguous.
    """
    exists = False
    candidates = [key]
    if filesystem:
        absolute = await asyncio.to_thread(os.path.abspath, key)
        exists = await asyncio.to_thread(os.path.lexists, key)
        candidates = [absolute, key] if exists else [key, absolute]
    for candidate in dict.fromkeys(candidates):
        rec = await ledger.get_path(candidate)
        if rec is not None:
            return Resolved(rec.sha256, rec, "path")
    if _ASSET_ID.fullmatch(key):
        found = await ledger.find_contents(key)
        if found:
            return Resolved(found[0].sha256, None, "asset_id")
    elif len(key) >= MIN_PREFIX_HEX and _HEX.fullmatch(key):
        if len(key) == 64:
            content = await ledger.get_content(key.lower())
            found = [] if content is None else [content]
        else:
            found = await ledger.find_contents(key)
        if len(found) > 1:
            raise NotFound(f"{key}: ambiguous prefix ({len(found)} or more contents match)")
        if found:
            return Resolved(found[0].sha256, None, "sha256")
    if exists:
        raise NotFound(
            f"{display_path(key)}: the file exists but the ledger does not know it "
            "(not under a watched folder, or not settled and hashed yet)"
        )
    raise NotFound(f"{display_path(key)}: unknown path, asset id or sha256")


def _path_json(rec: PathRecord | None, path: str) -> dict[str, Any]:
    data: dict[str, Any] = path_fields(path)
    if rec is None:
        data.update(tracked=False, root=None, state=None, reason=None, size=None)
        data.update(first_seen=None, last_seen=None, gone_at=None, open_since=None)
        return data
    data.update(
        tracked=True,
        root=rec.root,
        state=rec.state,
        reason=rec.reason,
        size=None if rec.fingerprint is None else rec.fingerprint.size,
        first_seen=iso(rec.first_seen),
        last_seen=iso(rec.last_seen),
        gone_at=iso(rec.gone_at),
        open_since=iso(rec.open_since),
    )
    return data


def _attempt_json(a: Attempt) -> dict[str, Any]:
    data: dict[str, Any] = {"id": a.id, "mode": a.mode, "asset_id": a.asset_id}
    data.update(path_fields(a.path) if a.path is not None else {"path": None})
    data.update(
        started_at=iso(a.started_at),
        ended_at=iso(a.ended_at),
        duration_s=None if a.ended_at is None else round(a.ended_at - a.started_at, 3),
        outcome=a.outcome,
        http_status=a.http_status,
        bytes_sent=a.bytes_sent,
        error=a.error,
    )
    return data


async def show_data(ledger: OperatorLedger, resolved: Resolved) -> dict[str, Any]:
    """Given a resolved key, return the ``syncd show --json`` document (see
    ``docs/operations.md``): the content's state, asset and counters, every path that held it,
    every attempt and every superseded asset. A path that holds no content (skipped, unsettled,
    error) gives a document with ``sha256`` null and the path's own state and reason."""
    content = None if resolved.sha256 is None else await ledger.get_content(resolved.sha256)
    if content is None:
        rec = resolved.path
        if rec is None:  # a content the ledger lost between two queries
            raise NotFound(f"{resolved.sha256}: no longer in the ledger")
        return {
            "sha256": None,
            "size": None if rec.fingerprint is None else rec.fingerprint.size,
            "extension": None,
            "state": rec.state,
            "asset_id": None,
            "remote_status": None,
            "upload_mode": None,
            "attempt_count": 0,
            "throttle_count": 0,
            "remote_failures": 0,
            "possible_duplicates": 0,
            "last_error": rec.reason,
            "next_attempt_at": None,
            "created_at": iso(rec.first_seen),
            "updated_at": iso(rec.last_seen),
            "uploaded_at": None,
            "done_at": None,
            "paths": [_path_json(rec, rec.path)],
            "attempts": [],
            "superseded_assets": [],
        }
    paths = await ledger.paths_of(content.sha256)
    attempts = await ledger.attempts_of(content.sha256)
    superseded = await ledger.superseded_of(content.sha256)
    waiting = content.state in ("pending", "allocated")
    return {
        "sha256": content.sha256,
        "size": content.size,
        "extension": content.extension,
        "state": content.state,
        "asset_id": content.asset_id,
        "remote_status": content.remote_status,
        "upload_mode": content.upload_mode,
        "attempt_count": content.attempts,
        "throttle_count": content.throttle_count,
        "remote_failures": content.remote_failures,
        "possible_duplicates": content.possible_duplicates,
        "last_error": content.last_error,
        "next_attempt_at": iso(content.next_attempt_at) if waiting else None,
        "created_at": iso(content.created_at),
        "updated_at": iso(content.updated_at),
        "uploaded_at": iso(content.uploaded_at),
        "done_at": iso(content.done_at),
        "paths": [_path_json(rec, p) for p, rec in paths],
        "attempts": [_attempt_json(a) for a in attempts],
        "superseded_assets": [
            {"asset_id": asset, "reason": reason, "at": iso(at)} for asset, reason, at in superseded
        ],
    }


def add_show_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``syncd show``."""
    p.add_argument(
        "key",
        metavar="PATH|SHA256|ASSET_ID",
        help="a file, a sha256 (or 8+ hex digit prefix) or an asset id",
    )
    add_host_argument(p, "a PATH is looked up among the paths")
    add_format_arguments(p)


async def run_show(args: argparse.Namespace, cfg: Config) -> int:
    """``syncd show``: print one content. Returns 0; raises :class:`NotFound` (exit 1) for an
    unknown key and ledger errors as they come."""
    ledger = await open_readonly(cfg, args.host)
    try:
        doc = await show_data(ledger, await resolve(ledger, args.key))
    finally:
        await ledger.close()
    if args.format == "json":
        write_json(doc)
    else:
        render_show(doc)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# ls: every path, streamed.

LS_COLUMNS = (
    "path",
    "path_bytes_hex",
    "root",
    "state",
    "path_state",
    "sha256",
    "size",
    "asset_id",
    "remote_status",
    "attempts",
    "reason",
    "first_seen",
    "updated_at",
)

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """Given ``--since`` text, return epoch seconds.

    Accepts a duration back from now (``90s``, ``30m``, ``2h``, ``7d``, ``1w``, ``1h30m``), an
    ISO-8601 date or date-time (local time unless it carries an offset or ``Z``) or ``@EPOCH``.
    Raises :class:`SyncdError` (one line) for anything else.
    """
    raw = text.strip()
    now = time.time() if now is None else now
    if raw.startswith("@"):
        try:
            return float(raw[1:])
        except ValueError:
            pass
    else:
        parts = _RELATIVE.findall(raw)
        if parts and "".join(f"{n}{u}" for n, u in parts) == raw.replace(" ", ""):
            return now - sum(float(n) * _UNIT_S[u] for n, u in parts)
        try:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return when.timestamp()  # naive means local time, as humans write it
    raise SyncdError(
        f"--since {text!r}: expected a duration (30m, 2h, 7d), an ISO date or time "
        "(2024-05-01, 2024-05-01T12:00Z) or @EPOCH"
    )


def ls_row(rec: PathRecord, content: Content | None) -> dict[str, Any]:
    """Given a path and its content, return the ``syncd ls --json`` row (see the docs)."""
    row: dict[str, Any] = path_fields(rec.path)
    updated = max(rec.first_seen, content.updated_at if content else 0.0, rec.gone_at or 0.0)
    row.update(
        root=rec.root,
        state=content.state if content else rec.state,
        path_state=rec.state,
        sha256=rec.sha256,
        size=content.size if content else (rec.fingerprint.size if rec.fingerprint else None),
        asset_id=content.asset_id if content else None,
        remote_status=content.remote_status if content else None,
        attempts=content.attempts if content else 0,
        reason=(content.last_error if content and content.state != "done" else None) or rec.reason,
        first_seen=iso(rec.first_seen),
        updated_at=iso(updated),
    )
    if rec.host is not None:
        row["host"] = rec.host  # a fleet's listing: the host the path is on
    return row


def add_ls_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``syncd ls``."""
    states = ", ".join((*CONTENT_STATES, *PATH_STATES))
    p.add_argument(
        "--state",
        action="append",
        default=[],
        metavar="S",
        help=f"only rows in this state (repeatable): {states}",
    )
    p.add_argument("--root", metavar="R", help="only paths under this folder")
    p.add_argument(
        "--since", metavar="T", help="only rows seen or changed since T (30m, 2d, 2024-05-01)"
    )
    add_host_argument(p, "only the paths (default: every host's, each row naming its host)")
    add_format_arguments(p, csv=True)


async def run_ls(args: argparse.Namespace, cfg: Config, *, page_size: int = 1000) -> int:
    """``syncd ls``: stream every path with its content, filtered. Returns 0 (also when no row
    matches); raises :class:`SyncdError` for a bad ``--state`` or ``--since``."""
    states = [s for value in args.state for s in value.split(",") if s]
    known = (*CONTENT_STATES, *PATH_STATES)
    bad = [s for s in states if s not in known]
    if bad:
        raise SyncdError(f"--state {bad[0]!r}: expected one of {', '.join(known)}")
    since = parse_since(args.since) if args.since else None
    root = await asyncio.to_thread(os.path.abspath, args.root) if args.root else None
    if cfg.ledger.url is None:
        _no_host_on_sqlite(cfg, args.host)
    # A fleet's listing spans hosts: each row names the host its path is on.
    columns = (*LS_COLUMNS, "host") if cfg.ledger.url is not None else LS_COLUMNS
    writer = RowWriter(args.format, columns, ls_human, LS_HEADER)
    ledger = await open_readonly(cfg)
    try:
        rows = ledger.iter_assets(
            states=states, root=root, since=since, page_size=page_size, host=args.host
        )
        async with contextlib.aclosing(rows):
            async for rec, content in rows:
                writer.write(ls_row(rec, content))
        writer.close()
    except BrokenPipeError:
        _quiet_stdout()  # `syncd ls | head`: the reader has all it wants
    finally:
        await ledger.close()
    return EXIT_OK


def _quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the exit flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


# --------------------------------------------------------------------------------------------
# status: counts, backlog, rate, cool-downs, the oldest waiting file, the daemon's health.


def _daemon_json(pid: int | None, beat: Any, now: float) -> dict[str, Any]:
    if pid is None:
        return {
            "running": False,
            "pid": None,
            "healthy": None,
            "ready": None,
            "reason": "no daemon owns the ledger",
            "heartbeat_age_s": None,
            "started_at": None,
            "paused": None,
            "queue": {},
        }
    beat = beat if isinstance(beat, dict) else {}
    updated = beat.get("updated_at")
    age = None if not isinstance(updated, int | float) else max(0.0, now - updated)
    ours = beat.get("pid") == pid or pid == 0
    if not beat or not ours:
        healthy, reason = False, f"no heartbeat from pid {pid} yet"
    elif age is None or age > HEARTBEAT_STALE_S:
        healthy, reason = False, f"heartbeat is stale ({human_duration(age or 0)} old)"
    elif beat.get("stopping"):
        healthy, reason = False, "stopping"
    else:
        healthy = bool(beat.get("healthy"))
        reason = str(beat.get("reason") or ("" if healthy else "unhealthy"))
    return {
        "running": True,
        "pid": pid or None,
        "healthy": healthy,
        "ready": bool(beat.get("ready")) if ours else False,
        "reason": reason,
        "heartbeat_age_s": None if age is None else round(age, 1),
        "started_at": iso(beat.get("started_at")) if ours else None,
        "paused": beat.get("paused") if ours else None,
        "queue": beat.get("queue", {}) if ours else {},
    }


def _cooldowns(pacer: Any, now: float) -> list[dict[str, Any]]:
    """Cool-downs still running, from the pacer snapshot the daemon stores (either spelling:
    ``until_epoch_s`` or ``cooldown_until``)."""
    if not isinstance(pacer, dict):
        return []
    found = []
    for endpoint, snap in sorted(pacer.items()):
        if not isinstance(snap, dict):
            continue
        until = snap.get("until_epoch_s", snap.get("cooldown_until"))
        if isinstance(until, int | float) and until > now:
            found.append(
                {"endpoint": endpoint, "remaining_s": round(until - now, 1), "until": iso(until)}
            )
    return found


def _why_waiting(
    content: Content, now: float, daemon: Mapping[str, Any], cooldowns: Sequence[Mapping[str, Any]]
) -> str:
    """One line on why a backlog content is not uploaded yet."""
    error = f" (last error: {one_line(content.last_error)})" if content.last_error else ""
    if content.last_error and content.last_error.startswith("no present path"):
        return "no file holding this content is present; waiting for one to reappear"
    if content.state == "uploading":
        return "being uploaded now"
    if content.next_attempt_at > now:
        return f"retry in {human_duration(content.next_attempt_at - now)}{error}"
    if not daemon["running"]:
        return "due now, but no daemon is running"
    if daemon.get("paused"):
        return f"due now; uploads are paused: {daemon['paused']}"
    endpoint = "signed_url" if content.state == "allocated" else "upload"
    for cd in cooldowns:
        if cd["endpoint"] == endpoint:
            return f"due now; {cd['endpoint']} cool-down for {human_duration(cd['remaining_s'])}"
    return f"due now, queued behind other due contents{error}"


def _waiting_json(
    path: str | None, sha256: str | None, state: str, since: float, now: float, why: str
) -> dict[str, Any]:
    return {
        **(path_fields(path) if path is not None else {"path": None}),
        "sha256": sha256,
        "state": state,
        "since": iso(since),
        "age_s": round(now - since, 1),
        "why": why,
    }


async def status_data(
    ledger: OperatorLedger, cfg: Config, now: float | None = None
) -> dict[str, Any]:
    """Return the ``syncd status --json`` document (see ``docs/operations.md``).

    Given the open ledger, the config (for the rate limits) and the time (default now).
    """
    now = time.time() if now is None else now
    counts = await ledger.counts()
    if cfg.ledger.url is not None:
        # A shared ledger has no lock file: this host's daemon shows by its fresh heartbeat.
        beat = await ledger.get_kv("daemon")
        fresh = (
            isinstance(beat, dict)
            and not beat.get("stopping")
            and isinstance(beat.get("updated_at"), int | float)
            and now - float(beat["updated_at"]) <= HEARTBEAT_STALE_S
        )
        pid = int(beat["pid"]) if fresh and isinstance(beat, dict) else None
    else:
        pid = await asyncio.to_thread(holder_pid, ledger.path + ".lock")
        beat = await ledger.get_kv("daemon") if pid is not None else None
    daemon = _daemon_json(pid, beat, now)
    if pid and isinstance(beat, dict) and beat.get("pid") != pid:
        beat = None  # a previous run's heartbeat says nothing about this daemon
    cooldowns = _cooldowns(await ledger.get_kv("pacer"), now) if daemon["running"] else []
    # Each attempt begins with one request: POST /upload (direct mode) or POST
    # /upload/signed-url (signed-URL mode), so attempts per mode are requests per endpoint.
    limits = {
        "upload": ("direct", cfg.rate_limits.upload_per_s),
        "signed_url": ("signed_url", cfg.rate_limits.signed_url_per_s),
    }
    rate: dict[str, Any] = {}
    for window, span_s in (("last_minute", 60.0), ("last_hour", 3600.0)):
        activity = await ledger.upload_activity(now - span_s)
        for endpoint, (mode, limit) in limits.items():
            got = activity.get(mode, {"requests": 0, "ok": 0, "bytes": 0})
            entry = rate.setdefault(endpoint, {"limit_per_s": limit})
            entry[window] = {
                "requests": got["requests"],
                "requests_per_s": round(got["requests"] / span_s, 3),
                "uploaded": got["ok"],
                "bytes": got["bytes"],
            }
    # The oldest of three kinds of waiting: a content not uploaded yet, a file the daemon holds
    # back because it is open for writing (its heartbeat), and a file that never settled.
    candidates: list[dict[str, Any]] = []
    waiting = await ledger.oldest_waiting_content()
    if waiting is not None:
        content, path = waiting
        candidates.append(
            _waiting_json(
                path,
                content.sha256,
                content.state,
                content.created_at,
                now,
                _why_waiting(content, now, daemon, cooldowns),
            )
        )
    writing = beat.get("open_for_write") if daemon["running"] and isinstance(beat, dict) else None
    if isinstance(writing, dict) and writing:
        path, since = min(writing.items(), key=lambda kv: float(kv[1]))
        why = f"open for writing since {iso(float(since))}; uploaded once it is closed and quiet"
        candidates.append(_waiting_json(str(path), None, "settling", float(since), now, why))
    unsettled = await ledger.oldest_unsettled_path()
    if unsettled is not None:
        since = unsettled.open_since or unsettled.first_seen
        why = f"never settled: {unsettled.reason}" if unsettled.reason else "never settled"
        candidates.append(_waiting_json(unsettled.path, None, "unsettled", since, now, why))
    oldest = max(candidates, key=lambda c: c["age_s"], default=None)
    backlog_files = sum(counts["contents"][s] for s in BACKLOG_STATES)
    return {
        "ledger": cfg.ledger.path if cfg.ledger.url is None else ledger.path,
        "files": counts["contents"],
        "paths": counts["paths"],
        "backlog": {"files": backlog_files, "bytes": counts["backlog"]["bytes"]},
        "due_now": await ledger.due_count(now),
        "rate": rate,
        "cooldowns": cooldowns,
        "oldest_waiting": oldest,
        "possible_remote_duplicates": await ledger.possible_duplicates(),
        "after_upload": await _after_json(ledger),
        "daemon": daemon,
    }


async def _after_json(ledger: OperatorLedger) -> dict[str, int] | None:
    """What followed SUCCESS so far: files ``deleted``, ``moved``, ``kept`` (changed, or
    unsafe to touch), ``would`` (dry run), and hooks (sidecars, commands, webhooks)
    ``pending`` and ``given_up`` (in a fleet, this host's); None when the ledger has no
    such record yet."""
    if isinstance(ledger, Ledger):
        after_counts = ledger.after_counts
    else:
        # The PostgreSQL store is loaded only for a ledger.url: without it, none exists.
        if "syncd.ledger.postgres" not in sys.modules:
            return None
        from syncd.ledger.postgres import PostgresLedger

        if not isinstance(ledger, PostgresLedger):
            return None
        after_counts = ledger.after_counts
    try:
        counts = await after_counts()
    except SyncdError:
        return None  # a ledger no daemon of this version has opened yet
    cleaned = counts.pop("cleaned", {})
    out = {key: cleaned.get(key, 0) for key in ("deleted", "moved", "kept", "would")}
    out["hooks_pending"] = sum(
        n
        for kind, by in counts.items()
        if kind != "cleanup"
        for st, n in by.items()
        if st in ("pending", "acting")
    )
    out["hooks_given_up"] = sum(by.get("given_up", 0) for by in counts.values())
    return out


def status_exit_code(doc: Mapping[str, Any]) -> int:
    """0 when no daemon runs or it is healthy; 1 when a daemon owns the ledger but is
    unhealthy or its heartbeat is stale."""
    daemon = doc["daemon"]
    return EXIT_FAILURE if daemon["running"] and not daemon["healthy"] else EXIT_OK


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``syncd status``."""
    add_host_argument(p, "the daemon, its heartbeat and its waiting files are those")
    add_format_arguments(p)


async def run_status(args: argparse.Namespace, cfg: Config) -> int:
    """``syncd status``: print the overview. Returns 0 when no daemon runs or it is healthy,
    1 when the daemon that owns the ledger is unhealthy or its heartbeat is stale."""
    ledger = await open_readonly(cfg, args.host)
    try:
        doc = await status_data(ledger, cfg)
    finally:
        await ledger.close()
    # Imported here: the Redis client costs every daemon start ~6 MB otherwise.
    from syncd.ops.fleet_status import fleet_budget, render_fleet_budget

    budget = await fleet_budget(cfg)  # None unless fleet.redis_url is set
    if budget is not None:
        doc["fleet_budget"] = budget
    if args.format == "json":
        write_json(doc)
    else:
        render_status(doc)
        if budget is not None:
            render_fleet_budget(budget)
    return status_exit_code(doc)


# --------------------------------------------------------------------------------------------
# retry and forget: the two operator writes.


def add_retry_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``syncd retry``."""
    p.add_argument(
        "--state",
        choices=("failed", "rejected", "all"),
        help="which final state to retry (default: failed; with keys: both)",
    )
    p.add_argument("keys", nargs="*", metavar="PATH|SHA256", help="only these files or contents")


async def run_retry(args: argparse.Namespace, cfg: Config) -> int:
    """``syncd retry``: make failed (or rejected) contents due now, with fresh attempt counts.

    Returns 0, or 1 when a named key is unknown or holds no content (the others are still
    re-queued; one line on stderr each).
    """
    if args.state == "all" or (args.state is None and args.keys):
        states: tuple[ContentState, ...] = ("failed", "rejected")
    else:
        states = ("rejected",) if args.state == "rejected" else ("failed",)
    ledger = await open_for_update(cfg)
    status = EXIT_OK
    try:
        shas: list[str] = []
        for key in args.keys:
            try:
                found = await resolve(ledger, key)
            except NotFound as exc:
                print(f"syncd retry: {exc}", file=sys.stderr)
                status = EXIT_FAILURE
                continue
            if found.sha256 is None:
                why = found.path.reason if found.path and found.path.reason else "not hashed"
                print(
                    f"syncd retry: {display_path(key)}: holds no content to upload ({why})",
                    file=sys.stderr,
                )
                status = EXIT_FAILURE
                continue
            shas.append(found.sha256)
        if args.keys and not shas:
            return status
        n = await ledger.requeue(states=states, sha256s=shas)
    finally:
        await ledger.close()
    which = " or ".join(states)
    print(f"re-queued {n} {which} content{'s' if n != 1 else ''}")
    if shas and n < len(set(shas)):
        print(f"{len(set(shas)) - n} named content(s) were not {which}; left as they are")
    return status


def add_forget_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``syncd forget``."""
    p.add_argument("path", metavar="PATH", help="a path the ledger tracks")


async def run_forget(args: argparse.Namespace, cfg: Config) -> int:
    """``syncd forget``: stop tracking one path. The content's record and its remote asset
    stay (nothing is sent to the API). Returns 0; raises :class:`NotFound` for an unknown
    path."""
    ledger = await open_for_update(cfg)
    try:
        absolute = await asyncio.to_thread(os.path.abspath, args.path)
        forgotten = None
        for candidate in dict.fromkeys((absolute, args.path)):
            if await ledger.forget_path(candidate):
                forgotten = candidate
                break
    finally:
        await ledger.close()
    if forgotten is None:
        raise NotFound(f"{display_path(args.path)}: the ledger does not track this path")
    print(f"forgot {display_path(forgotten)} (its content and remote asset are kept)")
    return EXIT_OK


COMMANDS: tuple[Command, ...] = (
    Command(
        "show", "show one file's content, asset id, state and history", add_show_arguments, run_show
    ),
    Command(
        "ls",
        "list tracked files (streams; filters by state, folder, time)",
        add_ls_arguments,
        run_ls,
    ),
    Command(
        "status",
        "counts, backlog, upload rate, cool-downs and daemon health",
        add_status_arguments,
        run_status,
    ),
    Command("retry", "re-queue failed or rejected contents", add_retry_arguments, run_retry),
    Command(
        "forget",
        "stop tracking a path (never touches the remote asset)",
        add_forget_arguments,
        run_forget,
    ),
)
"""The commands of this module, for ``syncd.cli`` to register."""
