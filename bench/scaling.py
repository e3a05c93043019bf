"""Figure 7: figures 2 and 4 at 10x smaller and 10x larger sizes; how cost grows.

Restart over an already-synced library: 10,000 files in 100 folders, 100,000 in 1,000 and
(``--full``) 1,000,000 in 10,000, 100 files per folder throughout. Many small files: bursts of
200, 2,000 and (``--full``) 20,000. The middle points come from ``restart.json`` and
``smallfiles.json`` in the results folder when those were measured at their default sizes
(as in a whole-suite run); otherwise they are measured here. A straight line
``time = fixed + per_item * n`` through the points says how the cost grows.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from bench import restart, smallfiles
from bench.harness import (
    BenchError,
    Emulator,
    Figure,
    Result,
    Stat,
    log,
    ratios,
    rmtree,
    workdir,
)

NAME = "scaling"
TITLE = "7. Scaling"
DESCRIPTION = (
    "Figures 2 and 4 repeated at 10x smaller sizes (and, with `--full`, 10x larger ones: "
    "1,000,000 files on disk; bursts of 20,000 files), with a straight line "
    "`time = fixed + per_item * n` fitted through the medians."
)


FINDINGS = {
    "*": (
        "How cost grows. Restart: a fixed start (~0.3 s: interpreter, imports, the inotify "
        "watches; the ledger's `quick_check`, which grows with the ledger's size, runs only "
        "after an unclean stop) plus a constant cost per file (an `lstat` and the walker "
        "thread's comparison with the ledger, figure 2), so linear in files at ~9.5 µs a "
        "file against find's ~2.6 µs; the ratio falls as the fixed start matters less (15x "
        "at 10,000 files, 4.8x at 100,000, 3.7x at 1,000,000). Peak RSS grows slowly (50 MB "
        "at 10,000 files, 68 MB at 1,000,000 in 10,000 folders): the walk holds one folder's "
        "ledger rows at a time. Many small files: roughly constant per file (5-8 ms against "
        "the bare loop's ~1.9 ms), a little more in long bursts, where status polling (two "
        "more ledger transactions and a request per file, from `poll.initial_s` = 5 s on) "
        "runs alongside the uploads and the one-finisher window (figure 4) is the bound; "
        "peak RSS 49 MB at 200 files, 73 MB at 20,000.\n\n"
        "**1,000,000 files in 10,000 folders.** Until this session a restart at this size "
        "never finished: every walk of 10,000 watched folders queued ~40,000 inotify events "
        "of its own (opening a folder queues an open and a close on its watch and on its "
        "parent's) against the 16,384 the kernel keeps, and watchdog rebuilt every watch in "
        "its reading thread after each overflow, which overflowed the queue again, for ever. "
        "Now every walk that opens watched folders waits for room in the kernel's queue "
        "(`FIONREAD` before each folder), the rebuild after an overflow runs in a thread of "
        "its own and adds only the watches that are missing, and folder open/close events "
        "are dropped as soon as they are read: the restart finishes in ~10 s (3.7x find) "
        "with no overflow, and 100,000 files in 10,000 folders restart in ~3 s."
    ),
}


def _sizes(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 10000,100000, got {text}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this benchmark's flags: the sizes (default: from --quick and --full)."""
    parser.add_argument(
        "--scaling-restart", type=_sizes, metavar="N,N", help="restart sizes (files)"
    )
    parser.add_argument(
        "--scaling-small", type=_sizes, metavar="N,N", help="small-file burst sizes"
    )


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line through ``(n, seconds)`` points; returns (fixed_s, per_item_s)."""
    if len(points) < 2:
        return float("nan"), float("nan")
    mean_n = statistics.fmean(n for n, _ in points)
    mean_t = statistics.fmean(t for _, t in points)
    var = sum((n - mean_n) ** 2 for n, _ in points)
    slope = sum((n - mean_n) * (t - mean_t) for n, t in points) / var
    return mean_t - slope * mean_n, slope


def _sibling(results_dir: Path, name: str, key: str, size: int) -> dict[str, Any] | None:
    path = results_dir / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("quick") or data.get("params", {}).get(key) != size:
        return None
    result: dict[str, Any] = data
    return result


def _restart_point(series: restart.RestartSeries) -> dict[str, Any]:
    ready = [r.ready_s for r in series.runs]
    return {
        "files": series.files,
        "folders": series.folders,
        "ready_s": ready,
        "find_s": series.find_s,
        "rss_mb": [r.rss_kib * 1024 / 1e6 for r in series.runs],
    }


def _small_point(series: smallfiles.Series) -> dict[str, Any]:
    return {
        "files": series.count,
        "e2e_s": [r.e2e_s for r in series.ours],
        "bare_s": series.bare_s,
        "files_per_s": series.files_per_s(),
        "bare_files_per_s": series.bare_files_per_s(),
        "rss_mb": [r.rss_kib * 1024 / 1e6 for r in series.ours],
    }


def run(args: argparse.Namespace) -> Result:
    """Run the benchmark; returns its result."""
    repeat = args.repeat or (1 if args.quick else 3)
    if args.quick:
        restart_sizes = [(20, 1), (50, 1)]
        small_sizes = [3, 6]
        middle_restart, middle_small = -1, -1
    else:
        restart_sizes = [(10_000, 100), (100_000, 1000)]
        small_sizes = [200, 2000]
        middle_restart, middle_small = 100_000, 2000
        if args.full:
            restart_sizes.append((1_000_000, 10_000))
            small_sizes.append(20_000)
    if args.scaling_restart:
        restart_sizes = [(n, max(1, n // 100)) for n in args.scaling_restart]
    if args.scaling_small:
        small_sizes = list(args.scaling_small)
    restart_points: list[dict[str, Any]] = []
    small_points: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    with workdir(args.work_dir, NAME) as folder:
        with Emulator(folder / "emulator") as emulator:
            for files, folders in restart_sizes:
                sibling = (
                    _sibling(args.results_dir, restart.NAME, "files", files)
                    if files == middle_restart
                    else None
                )
                if sibling is not None:
                    fig = sibling["figures"][0]
                    restart_points.append(
                        {
                            "files": files,
                            "folders": folders,
                            "ready_s": fig["value"]["values"],
                            "find_s": fig["reference"]["values"],
                            "rss_mb": sibling["extra"]["rss_mb"],
                            "from": "restart.json",
                        }
                    )
                    continue
                n_repeat = 1 if files >= 1_000_000 else repeat
                log(f"{NAME}: restart at {files} files")
                try:
                    series, _tree = restart.measure(
                        folder / f"restart-{files}",
                        emulator,
                        files,
                        folders,
                        n_repeat,
                        warm_up=not args.quick,
                    )
                except BenchError as exc:
                    log(f"{NAME}: restart at {files} files did not finish: {exc}")
                    failures.append({"what": f"restart, {files:,} files", "error": str(exc)})
                else:
                    restart_points.append(_restart_point(series))
                rmtree(folder / f"restart-{files}")
        for count in small_sizes:
            sibling = (
                _sibling(args.results_dir, smallfiles.NAME, "files", count)
                if count == middle_small
                else None
            )
            if sibling is not None:
                fig = sibling["figures"][0]
                small_points.append(
                    {
                        "files": count,
                        "e2e_s": sibling["extra"]["e2e_s"],
                        "bare_s": sibling["extra"]["bare_s"],
                        "files_per_s": fig["value"]["values"],
                        "bare_files_per_s": fig["reference"]["values"],
                        "rss_mb": sibling["extra"]["rss_mb"],
                        "from": "smallfiles.json",
                    }
                )
                continue
            n_repeat = 1 if count >= 20_000 else repeat
            log(f"{NAME}: many small files at {count}")
            try:
                series_small = smallfiles.measure(folder / f"small-{count}", count, n_repeat)
            except BenchError as exc:
                log(f"{NAME}: {count} small files did not finish: {exc}")
                failures.append({"what": f"many small files, {count:,}", "error": str(exc)})
            else:
                small_points.append(_small_point(series_small))
            rmtree(folder / f"small-{count}")
    result = Result(
        NAME,
        {
            "restart_sizes": [s[0] for s in restart_sizes],
            "small_sizes": small_sizes,
            "repeat": repeat,
            "full": bool(args.full),
        },
    )
    for point in restart_points:
        result.figures.append(
            Figure(
                key=f"restart_{point['files']}",
                label=f"Restart, {point['files']:,} files",
                value=Stat(point["ready_s"], "s"),
                reference=Stat(point["find_s"], "s"),
                reference_label="find",
                ratio=Stat(ratios(point["ready_s"], point["find_s"]), "x"),
            )
        )
    for point in small_points:
        result.figures.append(
            Figure(
                key=f"small_{point['files']}",
                label=f"Many small files, {point['files']:,}",
                value=Stat(point["files_per_s"], "files/s"),
                reference=Stat(point["bare_files_per_s"], "files/s"),
                reference_label="bare aiohttp",
                ratio=Stat(ratios(point["files_per_s"], point["bare_files_per_s"]), "x"),
            )
        )
    fixed_r, per_r = fit([(p["files"], statistics.median(p["ready_s"])) for p in restart_points])
    fixed_f, per_f = fit([(p["files"], statistics.median(p["find_s"])) for p in restart_points])
    fixed_s, per_s = fit([(p["files"], statistics.median(p["e2e_s"])) for p in small_points])
    fixed_b, per_b = fit([(p["files"], statistics.median(p["bare_s"])) for p in small_points])
    result.extra = {
        "restart_points": restart_points,
        "small_points": small_points,
        "restart_fit": {"fixed_s": fixed_r, "per_file_us": per_r * 1e6},
        "find_fit": {"fixed_s": fixed_f, "per_file_us": per_f * 1e6},
        "small_fit": {"fixed_s": fixed_s, "per_file_ms": per_s * 1e3},
        "bare_fit": {"fixed_s": fixed_b, "per_file_ms": per_b * 1e3},
        "failures": failures,
    }
    return result
