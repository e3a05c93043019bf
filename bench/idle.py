"""Figure 9: the idle daemon over 10,000 watched folders.

An already-synced library of ``folders`` folders, one small file in each, and a ledger that
knows every file as uploaded and done (written directly into the real schema, as figure 2
does). The daemon (a subprocess) starts, scans, finds everything unchanged and has nothing
to do. Once its ``scan of ROOT done`` line is logged (and ``settle_s`` more, for the start-up
work that trails the scan), the benchmark samples the process from ``/proc`` over
``windows`` consecutive windows of ``window_s`` seconds:

- **CPU**: user + system clock ticks of the whole process (``/proc/PID/stat``, fields 14
  and 15), as a share of one core;
- **wakeups per second**: context switches (``voluntary_ctxt_switches`` plus
  ``nonvoluntary_ctxt_switches``) summed over every thread (``/proc/PID/task/*/status``),
  the difference between the window's ends divided by its length. A thread that ends inside
  a window takes its switches with it; an idle daemon starts and ends none;
- **RSS**: ``VmRSS`` at the end of each window.

No reference: the targets are absolute (an idle daemon should cost nothing noticeable).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench import restart
from bench.harness import (
    BenchError,
    DaemonProcess,
    Emulator,
    Figure,
    Result,
    Stat,
    daemon_config,
    log,
    workdir,
)

NAME = "idle"
TITLE = "10. Idle daemon"
DESCRIPTION = (
    "The daemon over 10,000 watched folders (an already-synced library, one file in each), "
    "after its startup scan found nothing to do: CPU (clock ticks of the whole process), "
    "wakeups per second (context switches summed over its threads) and RSS, sampled from "
    "`/proc` over three consecutive 20 s windows (one minute). No reference: the targets "
    "are absolute."
)

# What profiling found (``"*"`` is always shown; other keys next to a missed target).
FINDINGS = {
    "rss": (
        "RSS grows with the watched folders: 51.5 MB over 200 folders, 56.7 MB over 2,000, "
        "69.4 MB over 10,000 (~1.8 KB a folder). `tracemalloc` in the daemon after its scan "
        "counts 31 MB of live Python objects: 12.4 MB of them the code of the imported "
        "modules, and ~4.5 MB the folders (the watcher's record per folder, ~160 B; watchdog's "
        "two maps between watch descriptors and paths, ~130 B; the path strings). The daemon "
        "also imports the PostgreSQL driver (asyncpg) at start on a SQLite ledger "
        "(`syncd.daemon` imports `syncd.ledger.postgres`): ~3 MB of RSS and ~35 ms of every "
        "start. And ~6.5 MB is heap the scan freed but the allocator kept: `gc.collect()` and "
        "glibc's `malloc_trim(0)` right after the startup scan (an experiment) gave 62.9 MB; "
        "the collection is what matters (it found nothing to collect, but a full one empties "
        "the interpreter's free lists, which lets pymalloc release its arenas): the trim alone "
        "gave back 0.7 MB. Done since: the PostgreSQL store is imported only when `ledger.url` "
        "is set, the fleet's Redis client (new since, ~6 MB) only when `fleet.redis_url` is, "
        "and `syncd/heap.py` runs a full collection and `malloc_trim(0)` in a thread after "
        "each full scan (~30 ms holding the GIL at 10,000 folders). Measured back to back "
        "before the Redis client came: 69.5 MB before, 61.2 MB after (60.9-65.1 MB over four "
        "runs; what makes it vary was not found); with everything since, 73.3 MB with the "
        "Redis client imported at start, 65.2 MB without (one run each). Round 2 (see below): "
        "62.96 MB before, 54.88 MB after."
    ),
    "*": (
        "Who wakes (context switches per thread over 20 s, 500 folders, thread names from "
        "`py-spy dump`): the event loop's thread 1-1.5/s (its timers), the ledger's writer "
        "thread ~1/s (the work the loop hands it), the watcher's monitor thread 0.5/s (its "
        "check interval), the two executor threads ~0.25/s each; watchdog's three threads (the "
        "inotify reader, the move grouper, the dispatcher) and the ledger's reader none. No "
        "thread polls the folders: the count does not grow with them. RSS, round 2 (back to "
        "back with the code before it, alternating, 3 runs each, load average 2.6-7): 62.96 "
        "(61.73-66.92) MB before, 54.88 (53.14-55.12) MB after; wakeups 2.7-3.75/s before, "
        "3.05-3.5/s after. What came off: a start without `http.listen` imports no HTTP server "
        "(aiohttp's server, the dashboard, the emulator's application: ~3 MB and ~25 ms); "
        "and the watches of one inotify "
        "instance share one {id: callback} dict where watchdog gave each its own (~220 B a "
        "watched folder, ~2 MB at 10,000): `tracemalloc` over adding the watches of 10,000 "
        "folders counts 518 B of live Python objects a folder before, 284 B after. What is "
        "left a folder: watchdog's `Watch` object (~100 B), its three maps between watch "
        "descriptors and paths (~90 B), the path (~50 B) and the descriptor (~30 B). Tried and "
        "not kept: building aiohttp's two default TLS contexts without the system's CA roots "
        "(loaded when a URL is `https://`) saved ~2 MB and ~40 ms (in the 'after' above), but "
        "it patched `ssl` while aiohttp was imported: too fragile for a saving that size on "
        "the path that verifies certificates."
    ),
}

WAKEUPS_TARGET_PER_S = 5.0
RSS_TARGET_MB = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this benchmark's flags."""
    parser.add_argument("--idle-folders", type=int, help="watched folders (default 10000)")
    parser.add_argument(
        "--idle-window-s", type=float, help="seconds per sampling window (default 20; quick 1)"
    )


@dataclass
class Sample:
    """What ``/proc`` says about the daemon at one moment."""

    at_s: float  # time.monotonic() when read
    ticks: int  # user + system clock ticks, whole process
    switches: int  # voluntary + nonvoluntary context switches, summed over threads
    threads: int
    rss_kib: int


def _status_fields(text: str, *names: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in names:
            out[key] = int(value.split()[0])
    return out


def sample(pid: int) -> Sample:
    """Read the daemon's CPU ticks, context switches over its threads and RSS.

    Raises :class:`BenchError` when the process is gone.
    """
    try:
        at_s = time.monotonic()
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The command name (field 2) may hold spaces: fields are counted after its ')'.
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
        rss = _status_fields(Path(f"/proc/{pid}/status").read_text(), "VmRSS")["VmRSS"]
        switches = 0
        threads = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                text = Path(f"/proc/{pid}/task/{task}/status").read_text()
                counts = _status_fields(
                    text, "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"
                )
                switches += sum(counts.values())
                threads += 1
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise BenchError(f"idle: cannot read /proc/{pid}: {exc}") from None
    return Sample(at_s, ticks, switches, threads, rss)


@dataclass
class Window:
    """One sampling window's results."""

    cpu_percent: float
    wakeups_per_s: float
    rss_mb: float
    threads: int


def between(a: Sample, b: Sample) -> Window:
    """The window from sample ``a`` to sample ``b``."""
    span_s = b.at_s - a.at_s
    if span_s <= 0:
        raise BenchError("idle: an empty sampling window")
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    return Window(
        cpu_percent=100.0 * (b.ticks - a.ticks) * tick_s / span_s,
        wakeups_per_s=(b.switches - a.switches) / span_s,
        rss_mb=b.rss_kib * 1024 / 1e6,
        threads=b.threads,
    )


@dataclass
class Idle:
    """One idle daemon's windows, with what surrounds them."""

    windows: list[Window]
    ready_s: float  # spawn -> the scan's end
    cpu_s: float  # the daemon's CPU seconds over its whole life
    log_lines: int  # lines it logged after the scan (while idle, and its shutdown)


def measure(folder: Path, folders: int, windows: int, window_s: float, settle_s: float) -> Idle:
    """Build the library and its ledger, start the daemon, sample it while idle.

    Raises :class:`BenchError` when the scan does not find every file unchanged or the
    daemon sends any API request.
    """
    log(f"{NAME}: writing {folders} folders with a file each, and their ledger")
    tree = restart.build_tree(folder / "library", folders, folders)
    with Emulator(folder / "emulator") as emulator:
        config = daemon_config(folder, emulator, [tree.root], upload={"workers": 4})
        restart.build_ledger(folder / "state" / "ledger.db", tree, 0)
        daemon = DaemonProcess(config, folder)
        with daemon:
            _, line = daemon.wait_line(
                lambda ln: restart.SCAN_DONE_RE.search(ln.msg) is not None,
                120 + folders / 200,
                "the startup scan",
            )
            ready_s = line.ts_s - daemon.started_s
            match = restart.SCAN_DONE_RE.search(line.msg)
            assert match is not None
            if int(match["unchanged"]) != folders:
                raise BenchError(f"idle: expected {folders} unchanged files: {line.msg}")
            time.sleep(settle_s)
            proc = daemon.proc
            assert proc is not None
            log(f"{NAME}: sampling {windows} windows of {window_s:g} s")
            samples = [sample(proc.pid)]
            for _ in range(windows):
                time.sleep(window_s)
                samples.append(sample(proc.pid))
            lines_while_idle = daemon.count(lambda ln: ln.received_s > line.received_s)
            code, _rss = daemon.stop()
        if code != 0:
            raise BenchError(f"idle: the daemon exited {code}: {daemon.tail()}")
        requests = emulator.requests("upload", "signed_url", "metadata", "storage")
    if requests:
        raise BenchError(f"idle: the daemon sent {len(requests)} API request(s)")
    found = [between(a, b) for a, b in itertools.pairwise(samples)]
    return Idle(found, ready_s, daemon.cpu_s, lines_while_idle)


def run(args: argparse.Namespace) -> Result:
    """Run the benchmark; returns its result."""
    folders = args.idle_folders or (200 if args.quick else 10_000)
    window_s = args.idle_window_s or (1.0 if args.quick else 20.0)
    windows = args.repeat or 3
    settle_s = 0.5 if args.quick else 5.0
    with workdir(args.work_dir, NAME) as folder:
        idle = measure(folder, folders, windows, window_s, settle_s)
    found, ready_s = idle.windows, idle.ready_s
    result = Result(
        NAME,
        {
            "folders": folders,
            "files": folders,
            "windows": windows,
            "window_s": window_s,
            "settle_after_scan_s": settle_s,
            "ledger": "rows written directly into the real schema",
        },
    )
    result.figures += [
        Figure(
            key="wakeups",
            label="Wakeups per second (context switches, all threads)",
            value=Stat([w.wakeups_per_s for w in found], "/s"),
            target=WAKEUPS_TARGET_PER_S,
            better="lower",
            target_text=f"<= {WAKEUPS_TARGET_PER_S:g}/s",
        ),
        Figure(
            key="rss",
            label="RSS while idle",
            value=Stat([w.rss_mb for w in found], "MB"),
            target=RSS_TARGET_MB,
            better="lower",
            target_text=f"<= {RSS_TARGET_MB:g} MB",
        ),
        Figure(
            key="cpu",
            label="CPU while idle (share of one core)",
            value=Stat([w.cpu_percent for w in found], "%"),
        ),
    ]
    result.extra = {
        "ready_s": ready_s,
        "threads": [w.threads for w in found],
        "daemon_cpu_s_whole_run": idle.cpu_s,
        "log_lines_after_scan": idle.log_lines,
        "clock_ticks_per_s": os.sysconf("SC_CLK_TCK"),
    }
    result.notes.append(
        f"The startup scan of {folders:,} folders was done {ready_s:.2f} s after the spawn; "
        f"sampling began {settle_s:g} s later. Threads in the daemon: "
        f"{max(w.threads for w in found)}. One clock tick is "
        f"{1000 / os.sysconf('SC_CLK_TCK'):g} ms of CPU, so over a {window_s:g} s window "
        f"the CPU share has a resolution of "
        f"{100 / os.sysconf('SC_CLK_TCK') / window_s:.2g} %."
    )
    return result
