"""Figure 8: the dashboard against a ledger of 1,000,000 rows.

A ledger is written directly into the real schema (created by
:class:`syncd.ledger.sqlite.Ledger`): ``rows`` contents, most of them done with an ``ok``
attempt and a gone path (a long-lived library's history), plus a backlog that is not due yet,
failed and rejected contents with present paths, and files under the watched folder that could
not be read or never settled. A daemon (a subprocess, watching that folder, no startup scan)
serves it on a free port. Measured, over HTTP from this process:

- ``/v1/status`` with its counts not cached (each repetition waits out the 5 s cache);
- the page's first view: everything the page asks for when it opens (``/``, its three files,
  ``/v1/status`` and the first page of each of its five lists), sent at once as a browser does,
  from the first request to the last answer;
- the first page (50) of the problems and of the finished uploads;
- a search by asset id (an index), and one for a part of a path that no path contains (the
  worst case: every path is read once).

The reference is ``syncd status --json``, the command an operator ran for the same overview
before the page (a process start included, as when it is typed).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp

from bench.harness import (
    BenchError,
    DaemonProcess,
    Emulator,
    Figure,
    LogLine,
    Result,
    Stat,
    daemon_config,
    log,
    rmtree,
    run_timed,
    syncd_argv,
    workdir,
)
from syncd.ledger.sqlite import Ledger

NAME = "dashboard"
TITLE = "8. Dashboard"
DESCRIPTION = (
    "A ledger of 1,000,000 contents (most done, with their attempts and gone paths; a backlog "
    "not due yet; 1% failed or rejected) served by a running daemon: `/v1/status` with cold "
    "counts, the page's whole first view (the page, its files, the status and the first page "
    "of each list, requested at once), single list pages and searches; against "
    "`syncd status --json`."
)

FINDINGS = {
    "*": (
        "Where the first view's time goes: the counts behind `/v1/status` (one `GROUP BY` over "
        "the contents and one over the paths, each a pass over an index of a million entries, "
        "~0.35 s together on the daemon's read connection), cached 5 s so that an open page "
        "costs that at most once per 5 s; everything else is a page of an index (the problems "
        "page sorts only the failed and rejected rows, 10,000 here). The reference is slower "
        "because `syncd status` starts a process and also looks for the oldest waiting file "
        "and the possible duplicates, which read the whole table. A search for a part of a "
        "path reads every path once when nothing matches; an absolute path, a sha256 or an "
        "asset id is an index lookup."
    )
}
STATUS_CACHE_S = 5.0
FIRST_VIEW = (
    "/",
    "/static/app.js",
    "/static/app.css",
    "/static/favicon.svg",
    "/v1/status",
    "/v1/activity?kind=settling&limit=100",
    "/v1/activity?kind=uploading&limit=100",
    "/v1/activity?kind=finished&limit=25",
    "/v1/activity?kind=problems&limit=100",
    "/v1/activity?kind=path_problems&limit=100",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this benchmark's flags."""
    parser.add_argument(
        "--dashboard-rows", type=int, help="contents in the ledger (default 1000000)"
    )


def build_ledger(path: Path, rows: int, watched: Path) -> None:
    """Write the ledger described in the module docstring (``rows`` contents)."""

    async def create() -> None:
        ledger = await Ledger.open(str(path))
        await ledger.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(create())
    now = time.time()
    problems = max(2, rows // 100)
    backlog = max(1, rows // 50)
    params = {
        "rows": rows,
        "failed_from": rows - problems,
        "rejected_from": rows - problems // 2,
        "backlog_from": rows - problems - backlog,
        "now": now,
        "later": now + 1e7,
        "lib": "/srv/library",
    }
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -2000000")
        db.execute("BEGIN")
        state = (
            "CASE WHEN n >= :rejected_from THEN 'rejected' WHEN n >= :failed_from THEN 'failed' "
            "WHEN n >= :backlog_from THEN 'pending' ELSE 'done' END"
        )
        # Constant SQL text (the CASE and path expressions above); every value is bound.
        db.execute(
            "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq "  # noqa: S608
            "WHERE n < :rows - 1) "
            "INSERT INTO contents (sha256, size, extension, state, asset_id, remote_status, "
            "upload_mode, attempts, last_error, next_attempt_at, created_at, updated_at, "
            "uploaded_at, done_at) "
            f"SELECT lower(hex(randomblob(32))), 1000000 + n, 'mp4', {state}, "
            "CASE WHEN n < :backlog_from THEN 're_' || (10000000 + n) END, "
            "CASE WHEN n < :backlog_from THEN 'SUCCESS' END, 'direct', 1, "
            "CASE WHEN n >= :failed_from THEN 'the API refused this file: HTTP 415' END, "
            ":later, :now - :rows + n, :now - :rows + n, :now - :rows + n, :now - :rows + n "
            "FROM seq",
            params,
        )
        path_of = (
            "CAST(:lib || '/d' || printf('%04d', rowid / 1000) || '/f' || rowid || '.mp4' AS BLOB)"
        )
        db.execute(
            "INSERT INTO paths (path, root, state, sha256, first_seen, last_seen, gone_at) "  # noqa: S608
            f"SELECT {path_of}, :lib, CASE WHEN state = 'done' THEN 'gone' ELSE 'present' END, "
            "sha256, :now, :now, CASE WHEN state = 'done' THEN :now END FROM contents",
            params,
        )
        db.execute(
            "INSERT INTO attempts (sha256, path, mode, asset_id, started_at, ended_at, outcome, "  # noqa: S608
            f"http_status, bytes_sent) SELECT sha256, {path_of}, 'direct', asset_id, "
            "updated_at - 2, updated_at, CASE state WHEN 'done' THEN 'ok' ELSE state END, "
            "CASE state WHEN 'done' THEN 200 ELSE 415 END, size FROM contents "
            "WHERE state != 'pending' ORDER BY rowid",
            params,
        )
        for n in range(30):
            kind, reason = (
                ("error", "cannot read: Permission denied")
                if n % 3
                else ("unsettled", "still changing after 86400 s")
            )
            db.execute(
                "INSERT INTO paths (path, root, state, reason, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (f"{watched}/in/{n:03d}.mp4".encode(), str(watched), kind, reason, now, now),
            )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


async def _timed(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    async with session.get(url) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise BenchError(f"dashboard: {url} answered {resp.status}: {body[:200]!r}")
    return time.perf_counter() - t0, len(body)


async def measure(base: str, repeat: int) -> dict[str, list[float]]:
    """Each measurement ``repeat`` times, in milliseconds (see the module docstring)."""
    out: dict[str, list[float]] = {
        "status": [],
        "first_view": [],
        "problems": [],
        "finished": [],
        "search_asset": [],
        "search_miss": [],
    }
    weights: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(repeat):
            await asyncio.sleep(STATUS_CACHE_S + 0.2)  # the counts are computed again
            out["status"].append((await _timed(session, base + "/v1/status"))[0] * 1000)
            await asyncio.sleep(STATUS_CACHE_S + 0.2)
            t0 = time.perf_counter()
            answers = await asyncio.gather(*(_timed(session, base + p) for p in FIRST_VIEW))
            out["first_view"].append((time.perf_counter() - t0) * 1000)
            weights.append(sum(size for _, size in answers[:4]) / 1024)
            page = "/v1/activity?kind=problems&limit=50"
            out["problems"].append((await _timed(session, base + page))[0] * 1000)
            page = "/v1/activity?kind=finished&limit=50"
            out["finished"].append((await _timed(session, base + page))[0] * 1000)
            page = "/v1/search?q=re_10000123"
            out["search_asset"].append((await _timed(session, base + page))[0] * 1000)
            page = "/v1/search?q=no-such-name"
            out["search_miss"].append((await _timed(session, base + page))[0] * 1000)
    out["page_kib"] = weights
    return out


def run(args: argparse.Namespace) -> Result:
    """Run the benchmark; returns its result."""
    rows = args.dashboard_rows or (2000 if args.quick else 1_000_000)
    repeat = args.repeat or (1 if args.quick else 5)
    with workdir(args.work_dir, NAME) as folder:
        watched = folder / "watched"
        watched.mkdir()
        ledger_path = folder / "state" / "ledger.db"
        log(f"{NAME}: writing a ledger of {rows:,} contents")
        t0 = time.monotonic()
        build_ledger(ledger_path, rows, watched)
        log(f"{NAME}: ledger written in {time.monotonic() - t0:.1f} s")
        with Emulator(folder / "emulator") as emulator:
            config = daemon_config(
                folder,
                emulator,
                [watched],
                http={"listen": "127.0.0.1:0"},
                scan={"on_start": False},
            )
            daemon = DaemonProcess(config, folder)
            with daemon:

                def endpoint(line: LogLine) -> bool:
                    return line.msg.startswith("HTTP endpoint on ")

                _, line = daemon.wait_line(endpoint, 300, "the HTTP endpoint")
                base = "http://" + line.msg.removeprefix("HTTP endpoint on ")
                daemon.wait_line(lambda ln: ln.msg.startswith("syncd ready"), 300, "ready")
                ms = asyncio.run(measure(base, repeat))
                cli: list[float] = []
                for _ in range(repeat):
                    argv = syncd_argv("status", "--json", "-c", str(config))
                    cli.append(run_timed(argv) * 1000)
                code, _rss = daemon.stop()
            if code != 0:
                raise BenchError(f"dashboard: the daemon exited {code}: {daemon.tail()}")
        rmtree(folder)
    result = Result(NAME, {"ledger_contents": rows, "repeat": repeat})
    result.figures += [
        Figure(
            key="first_view",
            label="Page's first view (10 requests at once)",
            value=Stat(ms["first_view"], "ms"),
            reference=Stat(cli, "ms"),
            reference_label="`syncd status --json`",
            ratio=Stat([a / b for a, b in zip(ms["first_view"], cli, strict=True)], "x"),
            target=1000.0,
            better="lower",
            target_text="<= 1 s",
        ),
        Figure(
            key="status",
            label="`/v1/status`, counts not cached",
            value=Stat(ms["status"], "ms"),
            better="lower",
        ),
        Figure(
            key="problems",
            label="Problems, first page of 50",
            value=Stat(ms["problems"], "ms"),
            better="lower",
        ),
        Figure(
            key="finished",
            label="Finished uploads, first page of 50",
            value=Stat(ms["finished"], "ms"),
            better="lower",
        ),
        Figure(
            key="search_asset",
            label="Search by asset id",
            value=Stat(ms["search_asset"], "ms"),
            better="lower",
        ),
        Figure(
            key="search_miss",
            label="Search for a part of a path that nothing contains",
            value=Stat(ms["search_miss"], "ms"),
            better="lower",
        ),
        Figure(
            key="page_kib",
            label="Page weight (HTML, script, styles, icon)",
            value=Stat(ms["page_kib"], "KiB"),
            target=100.0,
            better="lower",
            target_text="< 100 KiB",
        ),
    ]
    return result
