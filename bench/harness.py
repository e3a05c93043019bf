"""The parts every benchmark shares: results, statistics, the emulator and daemon processes.

Benchmarks run syncd and the emulator as real subprocesses (each with its own event loop and
CPU time) and talk to them the way an operator would: a YAML config, the daemon's JSON log
lines on stderr, the emulator's inspection endpoints over loopback HTTP. Nothing here touches
the network beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from syncd.emulator import DEMO_KEY
from syncd.errors import SyncdError

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
DOCS_PATH = REPO / "docs" / "benchmarks.md"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# What a real file of each kind starts with: the daemon sniffs it before uploading.
MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


class BenchError(SyncdError):
    """A benchmark could not produce a valid figure (a process failed, a wait timed out).

    Given a one-line message; ``python -m bench`` prints it and moves on to the next benchmark.
    """


# ------------------------------------------------------------------------------ results


@dataclass
class Stat:
    """Repeated measurements of one quantity, in ``unit``."""

    values: list[float]
    unit: str

    def as_json(self) -> dict[str, Any]:
        """Return median, min, max, n and the raw values."""
        if not self.values:
            raise BenchError("no measurements")
        return {
            "median": statistics.median(self.values),
            "min": min(self.values),
            "max": max(self.values),
            "n": len(self.values),
            "values": list(self.values),
            "unit": self.unit,
        }


@dataclass
class Figure:
    """One reported figure: syncd's measurement, its reference's, their ratio and the target.

    ``ratio`` is ``syncd / reference`` per repetition (paired runs); ``better`` says whether a
    higher (``"higher"``) or lower (``"lower"``) value of ``value`` is good; ``target`` is a
    number compared with the median of ``ratio`` when ``target_on`` is ``"ratio"``, or with
    the median of ``value`` when it is ``"value"``.
    """

    key: str
    label: str
    value: Stat
    reference: Stat | None = None
    reference_label: str = ""
    ratio: Stat | None = None
    target: float | None = None
    target_on: str = "value"
    better: str = "higher"
    target_text: str = ""
    goal: float | None = None

    def met(self) -> bool | None:
        """Whether the target is met (None when the figure has no target)."""
        if self.target is None:
            return None
        stat = self.ratio if self.target_on == "ratio" else self.value
        if stat is None:
            return None
        median = statistics.median(stat.values)
        return median >= self.target if self.better == "higher" else median <= self.target

    def as_json(self) -> dict[str, Any]:
        """Return the figure as plain data (what the report reads back)."""
        return {
            "key": self.key,
            "label": self.label,
            "value": self.value.as_json(),
            "reference": None if self.reference is None else self.reference.as_json(),
            "reference_label": self.reference_label,
            "ratio": None if self.ratio is None else self.ratio.as_json(),
            "target": self.target,
            "target_on": self.target_on,
            "better": self.better,
            "target_text": self.target_text,
            "goal": self.goal,
            "met": self.met(),
        }


@dataclass
class Result:
    """Everything one benchmark run produced; written as ``bench/results/<name>.json``."""

    name: str
    params: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self, command: str, started_at: float, duration_s: float) -> dict[str, Any]:
        """Return the result with the command that produced it and the machine it ran on."""
        return {
            "benchmark": self.name,
            "command": command,
            "started_at": started_at,
            "duration_s": duration_s,
            "machine": machine_info(),
            "params": self.params,
            "figures": [f.as_json() for f in self.figures],
            "notes": self.notes,
            "extra": self.extra,
        }


def ratios(values: Sequence[float], references: Sequence[float]) -> list[float]:
    """Given paired measurements, return ``value / reference`` for each pair."""
    return [v / r for v, r in zip(values, references, strict=True) if r > 0]


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q`` quantile (0..1) of ``values`` by linear interpolation."""
    if not values:
        raise BenchError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def machine_info() -> dict[str, Any]:
    """Return what the figures depend on: cores, CPU model, memory, Python, OpenSSL, kernel."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    import ssl

    import aiohttp

    sha_ext = False
    with contextlib.suppress(OSError):
        sha_ext = " sha_ni" in Path("/proc/cpuinfo").read_text()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "sha_extensions": sha_ext,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "aiohttp": aiohttp.__version__,
        "kernel": platform.release(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# ------------------------------------------------------------------------------ files


def write_file(path: Path, head: bytes, size: int, seed: int) -> None:
    """Write ``size`` bytes: ``head``, then distinct bytes derived from ``seed``."""
    body = seed.to_bytes(8, "little") * ((size - len(head)) // 8 + 1)
    with open(path, "wb") as f:
        f.write(head + os.urandom(16) + body[: size - len(head) - 16])


def warm_cache(path: Path) -> None:
    """Read a file once so that it is in the page cache (the figures are for a warm cache)."""
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def rmtree(path: Path) -> None:
    """Remove a folder tree, ignoring what is already gone."""
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def workdir(base: str | None, name: str) -> Iterator[Path]:
    """A fresh folder for one benchmark under ``base`` (default: the system temp folder),
    removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"syncd-bench-{name}-", dir=base))
    try:
        yield folder
    finally:
        rmtree(folder)


# ------------------------------------------------------------------------------ processes


def syncd_argv(*args: str) -> list[str]:
    """The argv of a ``syncd`` subprocess run by this interpreter."""
    return [sys.executable, "-m", "syncd", *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: ours without MAVI_*/NOTIFY_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAVI_", "NOTIFY_"))}
    env.update(extra)
    return env


def vm_hwm_kib(pid: int) -> int | None:
    """Return a live process's peak resident set size (``VmHWM``) in KiB, or None."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


@dataclass
class Usage:
    """What ``os.wait4`` says about one reaped child: exit code and CPU seconds."""

    code: int
    cpu_s: float


def exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has exited, without reaping it (so :func:`wait4` can, later)."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def wait4(proc: subprocess.Popen[bytes], timeout_s: float) -> Usage:
    """Reap ``proc``; returns its exit code and its own user+system CPU time (NaN when
    something else reaped it first).

    Kills it after ``timeout_s`` and raises :class:`BenchError`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            proc.wait()  # reaped elsewhere: Popen knows the code
            return Usage(proc.returncode, float("nan"))
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return Usage(proc.returncode, usage.ru_utime + usage.ru_stime)
        if time.monotonic() > deadline:
            proc.kill()
            _pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise BenchError(f"process {proc.args!r} did not exit within {timeout_s:.0f} s")
        time.sleep(0.02)


class Emulator:
    """The bundled emulator as a subprocess on 127.0.0.1 (a free port), for one benchmark.

    Given the folder for its data, port file and log, and extra ``syncd emulator`` flags
    (``--rate-limit 0`` unless ``rate_limit`` is given). Use as a context manager.
    """

    def __init__(
        self,
        folder: Path,
        *,
        rate_limit: float = 0.0,
        waiting_s: float = 0.05,
        uploading_s: float = 0.05,
        extra: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.argv = syncd_argv(
            "emulator",
            "--port",
            "0",
            "--port-file",
            str(folder / "port"),
            "--data-dir",
            str(folder / "data"),
            "--rate-limit",
            repr(rate_limit),
            "--waiting-s",
            repr(waiting_s),
            "--uploading-s",
            repr(uploading_s),
            *extra,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.key = DEMO_KEY
        self.usage: Usage | None = None

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL syncd is configured with."""
        return self.root_url + "/serve/api/v2"

    def __enter__(self) -> Emulator:
        log = open(self.folder / "emulator.log", "wb")
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=child_env()
            )
        finally:
            log.close()
        port_file = self.folder / "port"
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if exited(self.proc) or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                text = (self.folder / "emulator.log").read_text(errors="replace")[-500:]
                raise BenchError(f"the emulator did not start: {text.strip()}")
            time.sleep(0.02)
        self.port = int(port_file.read_text().strip())
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(BenchError):
            self.usage = wait4(proc, 30)

    def get(self, path: str) -> Any:
        """GET an inspection endpoint (``/_emulator/...``); returns the decoded JSON."""
        with urllib.request.urlopen(self.root_url + path, timeout=60) as resp:  # noqa: S310
            return json.loads(resp.read())

    def requests(self, *endpoints: str) -> list[dict[str, Any]]:
        """The emulator's request log (oldest first), only ``endpoints`` if given."""
        query = "&".join(f"endpoint={e}" for e in endpoints)
        return list(self.get("/_emulator/requests" + (f"?{query}" if query else ""))["requests"])

    def assets(self) -> list[dict[str, Any]]:
        """Every asset the emulator holds."""
        return list(self.get("/_emulator/assets")["assets"])


def daemon_config(
    folder: Path,
    emulator: Emulator,
    roots: Sequence[Path],
    **sections: Mapping[str, Any],
) -> Path:
    """Write a daemon config for a benchmark and return its path.

    Defaults: the emulator's URL, a ledger in ``folder``, ``settle.quiet_s`` 0.2, no periodic
    rescan, rate limits effectively off, JSON logs at info, no HTTP endpoint. ``sections``
    override whole keys of a section (``upload={"workers": 8}``).
    """
    data: dict[str, Any] = {
        "api": {"base_url": emulator.base_url},
        "watch": [{"path": str(r)} for r in roots],
        "ledger": {"path": str(folder / "state" / "ledger.db")},
        "settle": {"quiet_s": 0.2},
        "scan": {"rescan_interval_s": 0},
        "rate_limits": {
            "upload_per_s": 1_000_000,
            "metadata_per_s": 1_000_000,
            "signed_url_per_s": 1_000_000,
        },
        "http": {"listen": None},
        "log": {"level": "info", "format": "json"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class LogLine:
    """One log line of the daemon: when the parent read it, its own timestamp, its message."""

    received_s: float
    ts_s: float
    level: str
    logger: str
    msg: str


class DaemonProcess:
    """``syncd run -c CONFIG`` (or ``sync --once``) as a subprocess whose log lines we read.

    Given the config path and the folder for its raw log. ``start`` records the wall time just
    before the process was spawned (``started_s``); :meth:`wait_line` waits for a log line;
    :meth:`stop` sends SIGTERM and returns the exit code and the daemon's peak RSS in KiB.

    The peak RSS is ``VmHWM`` from ``/proc/PID/status``, read every 20 ms until the process
    exits. ``os.wait4``'s ``ru_maxrss`` is not used: Linux carries the high-water mark over
    ``exec``, so a child forked from a big parent (this benchmark, holding its test files)
    reports the parent's size. ``VmHWM`` belongs to the address space ``exec`` created.
    """

    def __init__(self, config: Path, folder: Path, *, once: bool = False) -> None:
        self.config = config
        self.folder = folder
        self.argv = (
            syncd_argv("sync", "--once", "-c", str(config))
            if once
            else syncd_argv("run", "-c", str(config))
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[LogLine] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._monitor: threading.Thread | None = None
        self.started_s = 0.0
        self.exit_code: int | None = None
        self.peak_rss_kib = 0
        self.cpu_s = 0.0

    def start(self) -> DaemonProcess:
        """Spawn the daemon; returns self."""
        self.started_s = time.time()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env(MAVI_API_KEY=DEMO_KEY),
        )
        self._reader = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._reader.start()
        self._monitor = threading.Thread(target=self._watch_rss, name="daemon-rss", daemon=True)
        self._monitor.start()
        return self

    def _watch_rss(self) -> None:
        proc = self.proc
        assert proc is not None
        while not exited(proc):
            hwm = vm_hwm_kib(proc.pid)
            if hwm is None:
                break
            self.peak_rss_kib = max(self.peak_rss_kib, hwm)
            time.sleep(0.02)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with open(self.folder / "daemon.log", "ab") as raw:
            for line in self.proc.stderr:
                now = time.time()
                raw.write(line)
                try:
                    data = json.loads(line)
                    ts = _iso_to_epoch(data["ts"])
                    entry = LogLine(now, ts, data["level"], data["logger"], data["msg"])
                except (ValueError, KeyError, TypeError):
                    entry = LogLine(now, now, "raw", "", line.decode(errors="replace").strip())
                with self._cond:
                    self.lines.append(entry)
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(
        self, match: Callable[[LogLine], bool], timeout_s: float, what: str, start: int = 0
    ) -> tuple[int, LogLine]:
        """Wait for the first line from index ``start`` on that ``match`` accepts.

        Returns its index and the line; raises :class:`BenchError` after ``timeout_s`` or when
        the daemon exits first (quoting its last lines).
        """
        deadline = time.monotonic() + timeout_s
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    if match(self.lines[index]):
                        return index, self.lines[index]
                    index += 1
                if self.proc is None or exited(self.proc):
                    self._cond.wait(0.2)  # the reader may still hold unread lines
                    if index >= len(self.lines):
                        raise BenchError(f"the daemon exited before {what}: {self.tail()}")
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
                self._cond.wait(min(left, 0.5))

    def wait_count(
        self, match: Callable[[LogLine], bool], n: int, timeout_s: float, what: str
    ) -> LogLine:
        """Wait until ``n`` lines matched; returns the ``n``-th. Raises like :meth:`wait_line`."""
        deadline = time.monotonic() + timeout_s
        index = -1
        for done in range(n):
            left = deadline - time.monotonic()
            index, line = self.wait_line(match, left, f"{what} ({done} of {n} so far)", index + 1)
        return line

    def count(self, match: Callable[[LogLine], bool]) -> int:
        """How many lines so far ``match`` accepts."""
        with self._cond:
            return sum(1 for line in self.lines if match(line))

    def matching(self, match: Callable[[LogLine], bool]) -> list[LogLine]:
        """The lines so far that ``match`` accepts."""
        with self._cond:
            return [line for line in self.lines if match(line)]

    def tail(self, n: int = 5) -> str:
        """The daemon's last ``n`` log messages, on one line."""
        with self._cond:
            return " | ".join(line.msg for line in self.lines[-n:]) or "(no output)"

    def stop(self, timeout_s: float = 60.0) -> tuple[int, int]:
        """SIGTERM (if still running), reap; returns (exit code, peak RSS KiB)."""
        proc = self.proc
        if proc is None:
            return self.exit_code or 0, self.peak_rss_kib
        if not exited(proc):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            usage = wait4(proc, timeout_s)
        finally:
            if self._monitor is not None:
                self._monitor.join(10)
            if self._reader is not None:
                self._reader.join(10)
            if proc.stderr is not None:
                proc.stderr.close()
            self.proc = None
        self.exit_code, self.cpu_s = usage.code, usage.cpu_s
        return usage.code, self.peak_rss_kib

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            with contextlib.suppress(BenchError):
                self.stop()


def _iso_to_epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def summary_counts(msg: str) -> dict[str, int]:
    """Parse the daemon's ``syncd stopped (...): key=value ...`` line into its counters."""
    counts: dict[str, int] = {}
    for word in msg.split():
        key, sep, value = word.partition("=")
        if sep and value.replace(".", "", 1).isdigit():
            counts[key] = int(float(value))
    return counts


def is_stopped_line(line: LogLine) -> bool:
    """Whether ``line`` is the daemon's shutdown summary."""
    return line.msg.startswith("syncd stopped")


def run_timed(argv: Sequence[str], timeout_s: float = 600.0) -> float:
    """Run a command with its output discarded; returns its wall time in seconds.

    Raises :class:`BenchError` when it fails.
    """
    t0 = time.perf_counter()
    done = subprocess.run(
        list(argv),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout_s,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise BenchError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-300:]!r}")
    return elapsed


def log(message: str) -> None:
    """Progress for the person running the suite (stderr, flushed)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
