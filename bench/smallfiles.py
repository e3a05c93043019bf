"""Figure 4: many small files dropped at once, rate limits off, vs a bare aiohttp loop.

syncd's side: the daemon (a subprocess, ``upload.workers`` 4) watches an empty folder; the
benchmark writes ``files`` distinct 100 KiB JPEG-looking files into it as fast as it can, then
waits until the daemon has logged ``uploaded ...`` (the asset id committed) for every one.
End to end runs from the first write to the last commit, minus ``settle.quiet_s`` (reported
separately: syncd waits it on purpose, once per burst since the files settle together).
It includes inotify, settling, the ``/proc`` writer check, hashing, the ledger transactions,
the uploads and the status polls that start meanwhile.

Reference: the same files uploaded from a bare ``aiohttp`` loop with the same concurrency (4
tasks, one session, ``POST /upload`` with ``FormData``), no ledger, no hashing. Each side gets
a fresh emulator subprocess; runs alternate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

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
    ratios,
    rmtree,
    workdir,
)

NAME = "smallfiles"
TITLE = "4. Many small files"
DESCRIPTION = (
    "2,000 distinct 100 KiB files written into a watched folder at once, rate limits off: "
    "files per second from the first write to the last asset id committed (settle quiet time "
    "excluded and reported separately), vs a bare aiohttp loop with the same concurrency "
    "(4) uploading the same files to the same emulator."
)

QUIET_S = 0.2
WORKERS = 4
FILE_BYTES = 100 * KiB
UPLOADED_RE = re.compile(r"^uploaded .+ asset=re_\d+ ")

# What profiling found (shown in the report next to a figure that misses its target).
FINDINGS = {
    "files_per_s": (
        "The bound is the direct-upload finish window, not the ledger any more. Only one "
        "upload at a time may send its last bytes (the multipart closing boundary), and it "
        "keeps that right until its outcome is committed: that is what caps remote duplicates "
        "at one per crash (`docs/guarantees.md`). So uploads are serialised on that window "
        "whatever the worker count. Timers in an instrumented daemon (2,000 files) give per "
        "upload, mean: commit `mark_finishing` 1.4 ms, send the boundary and wait for the "
        "emulator's answer 3.8 ms, stat the file again 0.7 ms, commit `finish_upload` 1.2 ms; "
        "7.1 ms x 2,000 = 14 s of a 15.6 s run, while the other three workers wait 15.7 ms "
        "each for the window. The answer alone (the emulator stores the blob and its asset "
        "row before it answers; the bare loop overlaps four of those) caps the figure near "
        "260 files/s with everything of ours at zero. Without the one-finisher rule (an "
        "experiment, not shipped: it breaks the duplicate bound) the same daemon did 164 "
        "files/s against 122 in back-to-back runs. The ledger's part is fixed: each "
        "transaction is one function on the writer connection's thread, transactions queued "
        "together share one COMMIT, reads go to a second read-only connection, and `due_jobs` "
        "selects the path's fingerprint in its own query (109 (106-117) to 121 (119-124) "
        "files/s, 3 runs each on a loaded machine); py-spy `--gil` shows the GIL held ~33 % "
        "of the run. Handing the window over inside the ledger (the next upload's "
        "`mark_finishing` made conditional on no other attempt finishing, and queued as soon "
        "as the holder's outcome is queued) gained nothing measurable (108 vs 107, 100 vs 101 "
        "files/s): the writer thread picks the outcome up alone before the next mark arrives. "
        "Since then `due_jobs` limits the due contents before it looks their paths up (joined "
        "before the LIMIT, each dispatch cost time in the backlog's size: 3.3 ms at 2,000 "
        "pending, now 0.07 ms). The stat stays inside the window: taken earlier (once every "
        "byte is read) it would save ~0.7 ms but narrow the changed-during-upload check to "
        "the reading of the file. **Decision**: "
        "the window stays. syncd guarantees at most N remote duplicates after N "
        "crashes in direct mode; k finishers would allow k per crash, and even with no window "
        "at all the daemon reached 164 files/s here, still short of 300, so the figure would "
        "stay missed at the price of the guarantee. Against the real API (1 upload/s per "
        "account) the window costs nothing: figure 5 reaches the pacer's ceiling. A burst of "
        "small files that must go faster than this can use `api.upload_mode: signed_url`, "
        "where no duplicate is possible and there is no window. Remaining per-file cost "
        "outside the window (~8 ms of daemon CPU a file against the bare loop's ~2 ms: "
        "settling on ~10 inotify events per file, hashing, four ledger transactions, the "
        "streamed multipart body with its own SHA-256 and a thread hop per chunk) was not "
        "profiled further that session. Profiled since (py-spy on a 1,000-file burst, the "
        "event loop's thread; per-thread CPU from `/proc/PID/task/*/stat`): the event loop "
        "spends ~3.5 CPU-ms a file, about half the daemon's CPU; of its busy samples the "
        "upload workers take 29 % (20 % writing the body: the socket writes and the thread "
        "hop per chunk), status polling 16 %, the ingest stage 15 %, log lines 13 % (a "
        "synchronous write to stderr each), the ledger calls ~9 %; most of what shows as "
        "their own time is the wait to get the GIL back after a system call while other "
        "threads hold it. A shorter GIL switch interval (`sys.setswitchinterval(0.0005)`, an "
        "experiment) gave 8-10 % more files per second. The one-pass change (figure 3) "
        "drops the body's SHA-256 for the files whose chunk checksums are still in memory "
        "(the last 1,024 contents hashed). Round 2, the upload side: a file of one chunk is "
        "opened, read and checked (or hashed) in one worker-thread call and sent with its "
        "multipart head in one write (before: two thread hops, open then read, and three "
        "writes, head, body, tail; now one hop and two writes, the tail still held for the "
        "window); the window ends as soon as the outcome is committed (the log line, metrics "
        "and events after `finish_upload` ran inside it); the poller commits the answers of a "
        "batch of polls together, each waiting at most 0.2 s (one group instead of one COMMIT "
        "and one writer-thread hop per asset, which the window's own commits queued behind). "
        "Back to back with the previous main, 3 runs each, alternating, load average 2.8-4.7: "
        "149 (146-150) -> 161 (149-163) files/s, 0.30x (0.28-0.31) -> 0.35x (0.32-0.35) the "
        "bare loop; the daemon's CPU over the run 10.0 (9.4-11.9) -> 10.4 (9.5-10.7) s, "
        "unchanged within the noise, peak RSS 57 MB both. Why it still misses: the window "
        "(answer ~3.8 ms, two commits and a stat) is still what serialises the uploads, and "
        "the emulator's answer alone caps one finisher near 260. Not done in this round: k "
        "finishers (it would need `k` as a setting, a proof of k per crash and the torture "
        "test at k; with no window at all an earlier session measured 164 files/s, still "
        "short of 300); folding the uploader's stat before the pacer into the open (one hop "
        "less a file, outside the window); moving the stat after the answer (it stays inside "
        "the window, as decided above)."
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this benchmark's flags."""
    parser.add_argument("--small-files", type=int, help="files per burst (default 2000)")


def make_sources(count: int) -> list[tuple[str, bytes]]:
    """Return ``count`` (name, bytes) pairs of distinct 100 KiB JPEG-looking files."""
    body = os.urandom(FILE_BYTES - len(JPEG_HEAD) - 8)
    return [(f"img{n:06d}.jpg", JPEG_HEAD + n.to_bytes(8, "little") + body) for n in range(count)]


def write_all(folder: Path, sources: list[tuple[str, bytes]]) -> None:
    """Write every source file into ``folder`` (create, write, close), as a copy would."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    prefix = str(folder) + "/"
    for name, data in sources:
        fd = os.open(prefix + name, flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


@dataclass
class SyncdRun:
    """One burst through the daemon."""

    e2e_s: float  # first write -> last asset id committed, minus quiet_s
    write_s: float  # how long writing the burst took
    rss_kib: int
    cpu_s: float


def syncd_once(folder: Path, sources: list[tuple[str, bytes]]) -> SyncdRun:
    """Drop the burst into a watched folder and wait until every file is uploaded."""
    inbox = folder / "inbox"
    inbox.mkdir(parents=True)
    count = len(sources)
    with Emulator(folder / "emulator") as emulator:
        config = daemon_config(
            folder,
            emulator,
            [inbox],
            settle={"quiet_s": QUIET_S},
            upload={"workers": WORKERS},
        )
        daemon = DaemonProcess(config, folder)
        with daemon:
            daemon.wait_line(lambda ln: ln.msg.startswith("scan of"), 60, "the startup scan")
            t0 = time.time()
            write_all(inbox, sources)
            write_s = time.time() - t0

            def uploaded(line: LogLine) -> bool:
                return UPLOADED_RE.match(line.msg) is not None

            last = daemon.wait_count(uploaded, count, 120 + count / 20, "uploads")
            code, rss_kib = daemon.stop()
        if code != 0:
            raise BenchError(f"smallfiles: the daemon exited {code}: {daemon.tail()}")
        held = len(emulator.assets())
    rmtree(folder)
    if held != count:
        raise BenchError(f"smallfiles: the emulator holds {held} assets, expected {count}")
    return SyncdRun(last.ts_s - t0 - QUIET_S, write_s, rss_kib, daemon.cpu_s)


async def _bare_upload(emulator: Emulator, folder: Path, names: list[str]) -> float:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for name in names:
        queue.put_nowait(name)
    url = emulator.base_url + "/upload"
    headers = {"Authorization": emulator.key}
    failures: list[int] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            name = queue.get_nowait()
            with open(folder / name, "rb") as f:
                form = aiohttp.FormData()
                form.add_field("file", f, filename=name, content_type="image/jpeg")
                async with session.post(url, data=form, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures.append(resp.status)

    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(WORKERS)))
        elapsed = time.perf_counter() - t0
    if failures:
        raise BenchError(f"bare aiohttp: {len(failures)} uploads failed ({failures[0]})")
    return elapsed


def bare_once(folder: Path, sources: list[tuple[str, bytes]]) -> float:
    """Upload the burst from a bare aiohttp loop to a fresh emulator; returns seconds."""
    files = folder / "files"
    files.mkdir(parents=True)
    write_all(files, sources)
    with Emulator(folder / "emulator") as emulator:
        elapsed = asyncio.run(_bare_upload(emulator, files, [n for n, _ in sources]))
        held = len(emulator.assets())
    rmtree(folder)
    if held != len(sources):
        raise BenchError(f"bare aiohttp: the emulator holds {held} assets, not {len(sources)}")
    return elapsed


@dataclass
class Series:
    """Paired runs at one size."""

    count: int
    ours: list[SyncdRun]
    bare_s: list[float]

    def files_per_s(self) -> list[float]:
        """syncd's end-to-end files per second, per run."""
        return [self.count / r.e2e_s for r in self.ours]

    def bare_files_per_s(self) -> list[float]:
        """The reference's files per second, per run."""
        return [self.count / s for s in self.bare_s]


def measure(folder: Path, count: int, repeat: int) -> Series:
    """Run ``repeat`` paired bursts of ``count`` files."""
    sources = make_sources(count)
    ours: list[SyncdRun] = []
    bare: list[float] = []
    for i in range(repeat):
        log(f"{NAME}: {count} files: run {i + 1}/{repeat}")
        order = ("bare", "syncd") if i % 2 else ("syncd", "bare")
        for side in order:
            if side == "syncd":
                ours.append(syncd_once(folder / f"syncd-{count}-{i}", sources))
            else:
                bare.append(bare_once(folder / f"bare-{count}-{i}", sources))
    return Series(count, ours, bare)


def run(args: argparse.Namespace) -> Result:
    """Run the benchmark; returns its result."""
    count = args.small_files or (20 if args.quick else 2000)
    repeat = args.repeat or (1 if args.quick else 3)
    with workdir(args.work_dir, NAME) as folder:
        series = measure(folder, count, repeat)
    ours = series.files_per_s()
    bare = series.bare_files_per_s()
    result = Result(
        NAME,
        {
            "files": count,
            "file_bytes": FILE_BYTES,
            "workers": WORKERS,
            "repeat": repeat,
            "settle_quiet_s": QUIET_S,
        },
    )
    result.figures.append(
        Figure(
            key="files_per_s",
            label=f"{count:,} files end to end",
            value=Stat(ours, "files/s"),
            reference=Stat(bare, "files/s"),
            reference_label="bare aiohttp loop, 4 tasks",
            ratio=Stat(ratios(ours, bare), "x"),
            target=300.0,
            target_on="value",
            better="higher",
            target_text=">= 300 files/s",
        )
    )
    result.extra = {
        "settle_quiet_s_excluded": QUIET_S,
        "write_s": [r.write_s for r in series.ours],
        "e2e_s": [r.e2e_s for r in series.ours],
        "bare_s": series.bare_s,
        "rss_mb": [r.rss_kib * 1024 / 1e6 for r in series.ours],
        "syncd_cpu_s": [r.cpu_s for r in series.ours],
    }
    return result
