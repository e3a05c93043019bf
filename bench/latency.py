"""Figure 6: latency from a file's close to the start of its upload request.

The daemon (a subprocess, rate limits off) watches an empty folder; the benchmark writes
``files`` small files into it one at a time, ``gap_s`` apart, noting the wall-clock time just
after each ``close``. The emulator (another subprocess, same machine, same clock) logs the
arrival time of every request. Latency = arrival of the file's upload request - its close -
``settle.quiet_s`` (the quiet time syncd waits on purpose before it trusts a file is
complete). Reported: p50 and p99 over the files of a run; median and min-max over runs.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

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

NAME = "latency"
TITLE = "6. Latency"
DESCRIPTION = (
    "200 small files written one at a time, 50 ms apart, into a watched folder (rate limits "
    "off): from each file's close to the arrival of its upload request at the emulator, minus "
    "`settle.quiet_s`; p50 and p99 over the files of a run."
)

QUIET_S = 0.2
FILE_BYTES = 64 * KiB
UPLOADED_RE = re.compile(r"^uploaded .+ asset=re_\d+ ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this benchmark's flags."""
    parser.add_argument("--latency-files", type=int, help="files per run (default 200)")
    parser.add_argument("--latency-gap-s", type=float, default=0.05, help="spacing (s)")


def run_once(folder: Path, count: int, gap_s: float) -> list[float]:
    """One run; returns each file's latency in milliseconds (quiet time subtracted)."""
    inbox = folder / "inbox"
    inbox.mkdir(parents=True)
    closed: dict[str, float] = {}
    with Emulator(folder / "emulator") as emulator:
        config = daemon_config(folder, emulator, [inbox], settle={"quiet_s": QUIET_S})
        daemon = DaemonProcess(config, folder)
        with daemon:
            daemon.wait_line(lambda ln: ln.msg.startswith("scan of"), 60, "the startup scan")
            time.sleep(0.5)  # let the daemon go idle: the figure is for a waiting daemon
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            next_at = time.monotonic()
            for n in range(count):
                name = f"shot{n:05d}.jpg"
                data = JPEG_HEAD + n.to_bytes(8, "little") * ((FILE_BYTES - len(JPEG_HEAD)) // 8)
                fd = os.open(inbox / name, flags, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                closed[name] = time.time()
                next_at += gap_s
                time.sleep(max(0.0, next_at - time.monotonic()))

            def uploaded(line: LogLine) -> bool:
                return UPLOADED_RE.match(line.msg) is not None

            daemon.wait_count(uploaded, count, 60 + count * 0.5, "uploads")
            code, _rss = daemon.stop()
        if code != 0:
            raise BenchError(f"latency: the daemon exited {code}: {daemon.tail()}")
        arrivals: dict[str, float] = {}
        for entry in emulator.requests("upload"):
            filename = entry.get("filename")
            if isinstance(filename, str) and filename not in arrivals:
                arrivals[filename] = float(entry["time_s"])
    rmtree(folder)
    missing = [name for name in closed if name not in arrivals]
    if missing:
        raise BenchError(f"latency: no upload request seen for {len(missing)} file(s)")
    return [(arrivals[name] - closed[name] - QUIET_S) * 1000 for name in closed]


def run(args: argparse.Namespace) -> Result:
    """Run the benchmark; returns its result."""
    count = args.latency_files or (6 if args.quick else 200)
    repeat = args.repeat or (1 if args.quick else 3)
    p50: list[float] = []
    p99: list[float] = []
    all_ms: list[list[float]] = []
    with workdir(args.work_dir, NAME) as folder:
        for i in range(repeat):
            log(f"{NAME}: {count} files {args.latency_gap_s * 1000:.0f} ms apart: run {i + 1}")
            ms = run_once(folder / f"run-{i}", count, args.latency_gap_s)
            all_ms.append(ms)
            p50.append(percentile(ms, 0.5))
            p99.append(percentile(ms, 0.99))
    result = Result(
        NAME,
        {
            "files": count,
            "gap_s": args.latency_gap_s,
            "file_bytes": FILE_BYTES,
            "settle_quiet_s_subtracted": QUIET_S,
            "repeat": repeat,
        },
    )
    result.figures.append(
        Figure(
            key="p50",
            label="Close to upload start, p50",
            value=Stat(p50, "ms"),
            target=50.0,
            better="lower",
            target_text="<= 50 ms",
        )
    )
    result.figures.append(
        Figure(key="p99", label="Close to upload start, p99", value=Stat(p99, "ms"))
    )
    result.extra = {
        "min_ms": [min(ms) for ms in all_ms],
        "max_ms": [max(ms) for ms in all_ms],
    }
    return result
