"""Figure 5: under the real rate limit (1 upload/s and 1 metadata call/s per account).

The emulator (a subprocess) enforces 1 request/s on every endpoint (``--rate-limit 1``, GCRA:
at least 1 s between two allowed requests, as the service documents) and keeps its default
processing times (1 s WAITING, 2 s UPLOADING). The daemon runs with its default pacing
(``rate_limits`` 1/s per endpoint, burst 1, the 4 % safety margin) and default status
polling (first poll 5 s after the upload, then doubling), 4 upload workers. ``files`` small
files are written into the watched folder at once; the run ends when every asset is SUCCESS.

From the emulator's request log: the achieved upload rate (successful uploads after the first,
divided by the time between the first and the last one's arrival), the share of all API
requests answered 400/429, and the metadata endpoint's own rate and throttles (status polling
must stay inside its budget).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    JPEG_HEAD,
    BenchError,
    DaemonProcess,
    Emulator,
    Figure,
    KiB,
    LogLine,
    Result,
    Stat,
    daemon_config,
    log,
    percentile,
    rmtree,
    workdir,
)

NAME = "ratelimit"
TITLE = "5. Under the real rate limit"
DESCRIPTION = (
    "The emulator enforces 1 upload/s and 1 metadata call/s (and 1/s on every other endpoint); "
    "syncd runs with its default pacing and polling. 120 small files by default "
    "(`--full`: 300) written at once; achieved uploads per second (the spacing of successful "
    "uploads at the emulator), the share of API requests answered 400/429, and the metadata "
    "endpoint's rate and throttles."
)

FILE_BYTES = 16 * KiB
QUIET_S = 0.2
SUCCESS_RE = re.compile(r"^asset re_\d+ is SUCCESS")
API_ENDPOINTS = ("upload", "metadata", "signed_url", "download", "delete")

# What the request logs showed (``"*"`` is always shown in the report).
FINDINGS = {
    "*": (
        "The pacer spaces upload starts 1.04 s apart (1/s plus its 4 % margin), so the best "
        "possible is 0.96/s, and a single throttle (a 2 s cool-down: about two lost slots) in "
        "120 uploads costs ~1.5 %, enough to miss 0.95. On a quiet machine nothing is "
        "throttled and the figure is at that ceiling. Under heavy load from other work (load "
        "average ~6) a run on this machine had two uploads throttled (0.8 % of requests) and "
        "reached 0.932/s: the spacing was kept at the pacer's grant while the API counts "
        "arrivals, and between `pacer.acquire` and the request going out the worker commits "
        "`begin_attempt` through the shared ledger and opens the file in a thread, which "
        "takes a few ms, or tens of ms while the ledger is busy (figure 4). When the previous "
        "request was delayed 40 ms more than this one, this one arrives less than 1 s after "
        "it and is throttled. Fixed since: the client tells the pacer when a request's "
        "headers went out (`Pacer.sent`, from the `on_headers_sent` callback) and the next "
        "start is pushed to at least one interval after that moment, so the spacing holds at "
        "arrival whatever the ledger's latency between grant and send."
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this benchmark's flags."""
    parser.add_argument("--rate-files", type=int, help="files (default 120; --full 300; quick 2)")


def rate_of(times: list[float]) -> float:
    """Given sorted arrival times, return (count - 1) / (last - first); nan for fewer than 2."""
    if len(times) < 2 or times[-1] <= times[0]:
        return float("nan")
    return (len(times) - 1) / (times[-1] - times[0])


def analyse(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise the emulator's request log of a run (API endpoints only)."""
    api = [r for r in requests if r["endpoint"] in API_ENDPOINTS]
    throttled = [r for r in api if r["throttled"] or r["status"] in (400, 429)]
    ok_uploads = sorted(
        r["time_s"] for r in api if r["endpoint"] == "upload" and r["status"] == 200
    )
    meta = [r for r in api if r["endpoint"] == "metadata"]
    meta_times = sorted(r["time_s"] for r in meta if r["status"] == 200)
    gaps = [b - a for a, b in itertools.pairwise(ok_uploads)]
    return {
        "api_requests": len(api),
        "throttled": len(throttled),
        "throttled_share": len(throttled) / len(api) if api else float("nan"),
        "uploads_ok": len(ok_uploads),
        "upload_rate_per_s": rate_of(ok_uploads),
        "upload_gap_min_s": min(gaps) if gaps else float("nan"),
        "upload_gap_max_s": max(gaps) if gaps else float("nan"),
        "metadata_requests": len(meta),
        "metadata_throttled": sum(1 for r in meta if r["throttled"]),
        "metadata_rate_per_s": rate_of(meta_times),
        "by_status": {
            str(status): sum(1 for r in api if r["status"] == status)
            for status in sorted({r["status"] for r in api}, key=str)
        },
    }


def send_delays(ledger_path: Path, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """How long after the pacer's grant each upload request reached the emulator.

    The ledger's ``attempts.started_at`` is taken right after the upload pacer granted the
    start (at the beginning of ``begin_attempt``); the emulator logs each request's arrival.
    Matched by file name, in order. Returns the delays (ms) and, for every throttled upload,
    the gap between the grants and between the arrivals of it and the request before it.
    """
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        attempts = db.execute(
            "SELECT path, started_at FROM attempts WHERE mode = 'direct' ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    uploads = [r for r in requests if r["endpoint"] == "upload"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in uploads:
        by_name.setdefault(str(r["filename"]), []).append(r)
    pairs: list[tuple[float, dict[str, Any]]] = []
    for path, started_at in attempts:
        queue = by_name.get(os.path.basename(os.fsdecode(path)))
        if queue:
            pairs.append((float(started_at), queue.pop(0)))
    pairs.sort(key=lambda p: p[1]["time_s"])
    delays = [(r["time_s"] - started) * 1000 for started, r in pairs]
    throttled = []
    for (g0, r0), (g1, r1) in itertools.pairwise(pairs):
        if r1["throttled"]:
            throttled.append(
                {
                    "grant_gap_s": g1 - g0,
                    "arrival_gap_s": r1["time_s"] - r0["time_s"],
                    "delay_before_ms": (r0["time_s"] - g0) * 1000,
                    "delay_ms": (r1["time_s"] - g1) * 1000,
                }
            )
    return {
        "matched": len(pairs),
        "delay_ms_median": statistics.median(delays) if delays else float("nan"),
        "delay_ms_p99": percentile(delays, 0.99) if delays else float("nan"),
        "delay_ms_max": max(delays) if delays else float("nan"),
        "throttled_uploads": throttled,
    }


def run_once(folder: Path, count: int, quick: bool) -> tuple[dict[str, Any], float]:
    """One run; returns the request-log summary and the seconds from drop to all SUCCESS."""
    inbox = folder / "inbox"
    inbox.mkdir(parents=True)
    # Quick runs shorten processing; real ones keep the emulator's defaults (1 s and 2 s).
    processing_s = 0.05 if quick else None
    emulator = Emulator(
        folder / "emulator",
        rate_limit=1.0,
        waiting_s=processing_s or 1.0,
        uploading_s=processing_s or 2.0,
    )
    with emulator:
        config = daemon_config(
            folder,
            emulator,
            [inbox],
            settle={"quiet_s": QUIET_S},
            rate_limits={"upload_per_s": 1, "metadata_per_s": 1, "signed_url_per_s": 1},
            poll={"initial_s": 0.5} if quick else {},
        )
        daemon = DaemonProcess(config, folder)
        with daemon:
            daemon.wait_line(lambda ln: ln.msg.startswith("scan of"), 60, "the startup scan")
            t0 = time.time()
            for n in range(count):
                body = n.to_bytes(8, "little") * ((FILE_BYTES - len(JPEG_HEAD)) // 8)
                (inbox / f"clip{n:05d}.jpg").write_bytes(JPEG_HEAD + body)

            def success(line: LogLine) -> bool:
                return SUCCESS_RE.match(line.msg) is not None

            last = daemon.wait_count(success, count, 120 + count * 3, "assets SUCCESS")
            code, _rss = daemon.stop()
        if code != 0:
            raise BenchError(f"ratelimit: the daemon exited {code}: {daemon.tail()}")
        requests = emulator.requests()
        summary = analyse(requests)
        summary["send_delay"] = send_delays(folder / "state" / "ledger.db", requests)
    rmtree(folder)
    if summary["uploads_ok"] != count:
        raise BenchError(f"ratelimit: {summary['uploads_ok']} uploads succeeded, not {count}")
    return summary, last.ts_s - t0


def run(args: argparse.Namespace) -> Result:
    """Run the benchmark; returns its result."""
    count = args.rate_files or (2 if args.quick else 300 if args.full else 120)
    repeat = args.repeat or 1
    runs: list[tuple[dict[str, Any], float]] = []
    with workdir(args.work_dir, NAME) as folder:
        for i in range(repeat):
            log(f"{NAME}: {count} files at 1 request/s: run {i + 1}/{repeat} (~{count} s)")
            runs.append(run_once(folder / f"run-{i}", count, args.quick))
    result = Result(
        NAME,
        {
            "files": count,
            "file_bytes": FILE_BYTES,
            "repeat": repeat,
            "emulator": "--rate-limit 1 (GCRA), WAITING 1 s, UPLOADING 2 s"
            if not args.quick
            else "--rate-limit 1, processing 0.05 s",
            "daemon": "default rate_limits and poll settings, 4 workers",
        },
    )
    result.figures.append(
        Figure(
            key="uploads_per_s",
            label="Achieved uploads per second",
            value=Stat([r[0]["upload_rate_per_s"] for r in runs], "uploads/s"),
            target=0.95,
            better="higher",
            target_text=">= 0.95/s",
        )
    )
    result.figures.append(
        Figure(
            key="throttled_share",
            label="Requests answered 400/429",
            value=Stat([100 * r[0]["throttled_share"] for r in runs], "%"),
            target=2.0,
            better="lower",
            target_text="<= 2 %",
        )
    )
    result.figures.append(
        Figure(
            key="metadata_throttled",
            label="Status polls answered 400/429",
            value=Stat([float(r[0]["metadata_throttled"]) for r in runs], "requests"),
            target=0.0,
            better="lower",
            target_text="0 (polling inside its own budget)",
        )
    )
    result.extra = {"runs": [r[0] for r in runs], "drop_to_all_success_s": [r[1] for r in runs]}
    return result
