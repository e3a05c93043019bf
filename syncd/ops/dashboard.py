"""The dashboard: its page (``/``) and its JSON (``/v1/status``, ``/v1/activity``, ``/v1/search``).

The page is four small files shipped in the package (``syncd/ops/static/``: HTML, one script,
one style sheet, an icon; no build step, nothing loaded from elsewhere), served from memory
with an ``ETag``. It reads only these routes and ``/v1/events``; scripts may too (they
are documented in ``docs/operations.md``). Nothing here reads a whole table: the counts are one
``GROUP BY`` per table, cached for :data:`STATUS_MAX_AGE_S`; every list is one page of an
index-backed query (:meth:`~syncd.ledger.store.DashboardLedger.recent_uploads` and its neighbours)
or of the daemon's memory.

:class:`DaemonView` is what the running daemon hands the endpoint: its event hub, a snapshot of
its live state, its settler's waiting list, the roots, and the rate limits. The request rates
for the plot come from the daemon's own counters
(:class:`~syncd.ops.rates.RateHistory`, sampled every bucket), not from the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from syncd.events import EventHub
from syncd.ingest.settle import Waiting
from syncd.ledger.records import Attempt, Content, PathRecord
from syncd.ledger.store import OperatorLedger
from syncd.metrics import Metrics
from syncd.ops.rates import RateHistory
from syncd.ops.report import NotFound, iso, path_fields, resolve, show_data

# The counts are two GROUP BYs over the whole ledger (~0.45 s at a million rows, on the reader
# connection the pipeline reads through too): at most once per this, like /metrics' gauges.
STATUS_MAX_AGE_S: Final = 5.0
PAGE_DEFAULT: Final = 50
PAGE_MAX: Final = 500
SEARCH_MAX: Final = 20


@dataclass(frozen=True)
class DaemonView:
    """The running daemon's live state, as the endpoint may read it.

    ``hub``: the event hub the pipeline publishes to. ``snapshot()``: a JSON-ready dict with
    ``queue`` (counts per in-memory stage), ``paused`` (``kind``, ``reason``, ``until``) or
    None, ``cooldowns`` (``endpoint``, ``remaining_s``) and ``roots`` (``path``,
    ``available``, ``watched``, ``watch_limit_hits``). ``settling(limit, offset)``: the
    settler's :meth:`~syncd.ingest.settle.Settler.waiting`. ``roots()``: the watched folders
    (configured paths). ``limits_per_s``: the configured rate per endpoint.
    """

    hub: EventHub
    snapshot: Callable[[], dict[str, Any]] = dict
    settling: Callable[[int, int], tuple[int, list[Waiting]]] | None = None
    roots: Callable[[], Sequence[str]] = tuple
    limits_per_s: Mapping[str, float] = field(default_factory=dict)


class _Dashboard:
    def __init__(
        self,
        ledger: OperatorLedger,
        metrics: Metrics,
        daemon: DaemonView | None,
        clock: Callable[[], float],
        status_max_age_s: float,
    ) -> None:
        self.ledger = ledger
        self.daemon = daemon
        self.clock = clock
        self.history = RateHistory(metrics)
        self.max_age_s = status_max_age_s
        self.counts: dict[str, dict[str, int]] | None = None
        self.counts_at = 0.0
        self.lock = asyncio.Lock()

    async def ledger_counts(self) -> dict[str, dict[str, int]]:
        """The ledger's counts, at most ``max_age_s`` old: one computation however many pages
        ask at once."""
        async with self.lock:
            now = self.clock()
            if self.counts is None or now - self.counts_at >= self.max_age_s:
                self.counts = await self.ledger.counts()
                self.counts_at = now
            return self.counts


_DASHBOARD = web.AppKey("syncd_dashboard", _Dashboard)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


def _limit(request: web.Request, default: int = PAGE_DEFAULT, most: int = PAGE_MAX) -> int:
    raw = request.rel_url.query.get("limit", "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise _bad("limit: a positive whole number")
    return min(int(raw), most)


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": message}) + "\n",
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _status(request: web.Request) -> web.Response:
    dash = request.app[_DASHBOARD]
    counts = await dash.ledger_counts()
    live = dash.daemon.snapshot() if dash.daemon is not None else {}
    contents, paths = counts["contents"], counts["paths"]
    backlog_bytes = counts["backlog"]["bytes"]
    rate = dash.history.bytes_per_s()
    limits = dash.daemon.limits_per_s if dash.daemon is not None else {}
    doc = {
        "time": iso(time.time()),
        "daemon": {"running": dash.daemon is not None, **live},
        "files": {
            **contents,
            "skipped": paths.get("skipped", 0),
            "unsettled": paths.get("unsettled", 0),
        },
        "paths": paths,
        "backlog": {
            "files": sum(contents[s] for s in ("pending", "allocated", "uploading")),
            "bytes": backlog_bytes,
            "bytes_per_s": None if rate is None else round(rate, 1),
            "eta_s": round(backlog_bytes / rate) if rate and backlog_bytes else None,
        },
        "problems": {
            "failed": contents.get("failed", 0),
            "rejected": contents.get("rejected", 0),
            "unsettled": paths.get("unsettled", 0),
            "unreadable": paths.get("error", 0),
            "roots_unavailable": sum(1 for r in live.get("roots", []) if not r["available"]),
            "watch_limit_hits": sum(r.get("watch_limit_hits", 0) for r in live.get("roots", [])),
        },
        "rate": dash.history.json(limits),
        "last_event_id": dash.daemon.hub.last_id if dash.daemon is not None else None,
    }
    return _json(doc)


def _process_names(pids: Sequence[int]) -> dict[int, str]:
    """Blocking: each pid's command name (``/proc/PID/comm``), where it can be read."""
    names: dict[int, str] = {}
    for pid in pids:
        try:
            with open(f"/proc/{int(pid)}/comm", encoding="utf-8", errors="replace") as f:
                names[pid] = f.read().strip()
        except OSError:
            continue  # gone meanwhile, or another user's
    return names


async def _settling_page(dash: _Dashboard, limit: int, cursor: str) -> dict[str, Any]:
    if dash.daemon is None or dash.daemon.settling is None:
        return {"total": 0, "items": [], "next": None}
    if cursor and not cursor.isdigit():
        raise _bad("cursor: expected the next value of the previous page")
    offset = int(cursor or 0)
    total, page = dash.daemon.settling(limit, offset)
    names = await asyncio.to_thread(_process_names, sorted({p for w in page for p in w.pids}))
    now = time.time()
    items = []
    for w in page:
        why = w.why
        if w.pids and all(p in names for p in w.pids):
            who = ", ".join(f"{names[p]} pid {p}" for p in w.pids)
            why = f"open for writing by {who}"
        items.append(
            {
                **path_fields(w.path),
                "root": w.root,
                "since": iso(w.since),
                "age_s": round(max(0.0, now - w.since), 1),
                "writing": w.writing,
                "processes": [{"pid": p, "name": names.get(p)} for p in w.pids],
                "why": why,
            }
        )
    more = offset + len(page) < total
    return {"total": total, "items": items, "next": str(offset + len(page)) if more else None}


def _uploading_page(dash: _Dashboard, limit: int) -> dict[str, Any]:
    if dash.daemon is None:
        return {"total": 0, "items": [], "next": None, "queued": 0}
    uploads = sorted(dash.daemon.hub.uploads.values(), key=lambda u: u.get("started_at") or 0)
    items = [
        {
            **path_fields(u["path"]),
            "sent_bytes": u["sent_bytes"],
            "total_bytes": u["total_bytes"],
            "started_at": iso(u.get("started_at")),
        }
        for u in uploads[:limit]
    ]
    queue = dash.daemon.snapshot().get("queue", {})
    waiting = max(0, int(queue.get("uploading", 0)) - len(uploads))
    return {"total": len(uploads), "items": items, "next": None, "queued": waiting}


def _content_json(c: Content | None) -> dict[str, Any]:
    if c is None:
        return {"state": None, "remote_status": None, "size": None}
    return {"state": c.state, "remote_status": c.remote_status, "size": c.size}


def _finished_json(a: Attempt, c: Content | None) -> dict[str, Any]:
    return {
        **(path_fields(a.path) if a.path is not None else {"path": None}),
        "sha256": a.sha256,
        "asset_id": a.asset_id,
        "bytes_sent": a.bytes_sent,
        "ended_at": iso(a.ended_at),
        "duration_s": None if a.ended_at is None else round(a.ended_at - a.started_at, 3),
        **_content_json(c),
    }


async def _finished_page(dash: _Dashboard, limit: int, cursor: str) -> dict[str, Any]:
    if cursor and not cursor.isdigit():
        raise _bad("cursor: expected the next value of the previous page")
    rows = await dash.ledger.recent_uploads(limit, before_id=int(cursor) if cursor else None)
    items = [_finished_json(a, c) for a, c in rows]
    return {"items": items, "next": str(rows[-1][0].id) if len(rows) == limit else None}


def _problem_json(c: Content, path: str | None) -> dict[str, Any]:
    return {
        **(path_fields(path) if path is not None else {"path": None}),
        "sha256": c.sha256,
        "state": c.state,
        "asset_id": c.asset_id,
        "size": c.size,
        "attempts": c.attempts,
        "last_error": c.last_error,
        "updated_at": iso(c.updated_at),
        "retry": f"syncd retry {c.sha256}",
    }


async def _problems_page(dash: _Dashboard, limit: int, cursor: str) -> dict[str, Any]:
    after: tuple[float, str] | None = None
    if cursor:
        at, _, sha = cursor.partition("/")
        try:
            after = (float(at), sha)
        except ValueError:
            raise _bad("cursor: expected the next value of the previous page") from None
    rows = await dash.ledger.problem_contents(limit, after=after)
    items = [_problem_json(c, p) for c, p in rows]
    cursor_next = None
    if rows and len(rows) == limit:
        last = rows[-1][0]
        cursor_next = f"{last.updated_at!r}/{last.sha256}"
    return {"items": items, "next": cursor_next}


def _path_problem_json(rec: PathRecord) -> dict[str, Any]:
    return {
        **path_fields(rec.path),
        "root": rec.root,
        "state": rec.state,
        "reason": rec.reason,
        "since": iso(rec.open_since or rec.first_seen),
    }


async def _path_problems_page(dash: _Dashboard, limit: int, cursor: str) -> dict[str, Any]:
    try:
        after = os.fsdecode(bytes.fromhex(cursor)) if cursor else None
    except ValueError:
        raise _bad("cursor: expected the next value of the previous page") from None
    roots = list(dash.daemon.roots()) if dash.daemon is not None else []
    rows = await dash.ledger.problem_paths(roots, limit, after=after)
    more = len(rows) == limit
    return {
        "items": [_path_problem_json(r) for r in rows],
        "next": os.fsencode(rows[-1].path).hex() if more else None,
    }


async def _activity(request: web.Request) -> web.Response:
    dash = request.app[_DASHBOARD]
    query = request.rel_url.query
    kind = query.get("kind", "")
    limit = _limit(request)
    cursor = query.get("cursor", "")
    if kind == "settling":
        page = await _settling_page(dash, limit, cursor)
    elif kind == "uploading":
        page = _uploading_page(dash, limit)
    elif kind == "finished":
        page = await _finished_page(dash, limit, cursor)
    elif kind == "problems":
        page = await _problems_page(dash, limit, cursor)
    elif kind == "path_problems":
        page = await _path_problems_page(dash, limit, cursor)
    else:
        kinds = "settling, uploading, finished, problems, path_problems"
        return _json({"error": f"kind: one of {kinds}"}, status=400)
    return _json({"kind": kind, **page})


async def _search(request: web.Request) -> web.Response:
    dash = request.app[_DASHBOARD]
    q = request.rel_url.query.get("q", "").strip()
    if not q:
        return _json({"error": "give ?q= a path (or part of one), a sha256 or an asset id"}, 400)
    limit = _limit(request, default=SEARCH_MAX, most=SEARCH_MAX)
    try:
        found = await resolve(dash.ledger, q, filesystem=False)
    except NotFound:
        found = None
    if found is not None:
        doc = await show_data(dash.ledger, found)
        return _json({"query": q, "matched_by": found.matched_by, "match": doc, "paths": []})
    recs = await dash.ledger.find_paths(q, limit)
    paths = [
        {**path_fields(r.path), "state": r.state, "sha256": r.sha256, "reason": r.reason}
        for r in recs
    ]
    match = None
    if len(recs) == 1:
        with contextlib.suppress(NotFound):
            match = await show_data(
                dash.ledger, await resolve(dash.ledger, recs[0].path, filesystem=False)
            )
    return _json(
        {"query": q, "matched_by": "path" if match else None, "match": match, "paths": paths}
    )


@dataclass(frozen=True)
class StaticFile:
    """One file of the page: its bytes, content type and entity tag."""

    body: bytes
    content_type: str
    etag: str


STATIC_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def load_static() -> dict[str, StaticFile]:
    """Blocking: read the page's files from the package; returns name -> :class:`StaticFile`."""
    folder = importlib.resources.files("syncd.ops") / "static"
    files: dict[str, StaticFile] = {}
    for entry in folder.iterdir():
        suffix = os.path.splitext(entry.name)[1]
        if suffix in STATIC_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            files[entry.name] = StaticFile(body, STATIC_TYPES[suffix], etag)
    return files


_STATIC = web.AppKey("syncd_static", dict[str, StaticFile])


def _serve(request: web.Request, name: str) -> web.Response:
    found = request.app[_STATIC].get(name)
    if found is None:
        raise web.HTTPNotFound(text="not found\n")
    headers = {"ETag": found.etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == found.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})


async def _index(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return _serve(request, name) if name != "index.html" else _serve(request, "")


async def _sample_rates(app: web.Application) -> AsyncIterator[None]:
    dash = app[_DASHBOARD]

    async def loop() -> None:
        while True:
            await asyncio.sleep(dash.history.bucket_s)
            dash.history.sample()

    task = asyncio.create_task(loop(), name="http-rate-history")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def add_routes(
    app: web.Application,
    *,
    ledger: OperatorLedger,
    metrics: Metrics,
    daemon: DaemonView | None,
    static: Mapping[str, StaticFile] | None = None,
    clock: Callable[[], float] = time.monotonic,
    status_max_age_s: float = STATUS_MAX_AGE_S,
) -> None:
    """Serve the page (``/``, ``/static/NAME``: ``static``, else :func:`load_static`'s files,
    read now) and ``/v1/status``, ``/v1/activity`` and ``/v1/search`` on ``app``, from the
    ledger, the metrics and (when the daemon runs) its live view (without it: the ledger's
    parts)."""
    app[_DASHBOARD] = _Dashboard(ledger, metrics, daemon, clock, status_max_age_s)
    app[_STATIC] = dict(static if static is not None else load_static())
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/v1/activity", _activity)
    app.router.add_get("/v1/search", _search)
    app.cleanup_ctx.append(_sample_rates)
