"""Helpers for tests that run the whole daemon in-process against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from syncd.config import Config, parse_config
from syncd.daemon import Daemon
from syncd.emulator import EmulatorServer

REPO = Path(__file__).resolve().parent.parent


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_data(
    tmp_path: Path, emulator: EmulatorServer, roots: list[Path], **sections: Any
) -> dict[str, Any]:
    """A config for tests: fast settling, fast retries, no HTTP endpoint, rates effectively off."""
    base: dict[str, Any] = {
        "api": {"base_url": emulator.base_url, "upload_mode": "direct", "read_timeout_s": 10},
        "watch": [{"path": str(r)} for r in roots],
        "ledger": {"path": str(tmp_path / "state" / "ledger.db")},
        "settle": {"quiet_s": 0.3, "max_wait_s": 60},
        "scan": {"rescan_interval_s": 0},
        "upload": {
            "backoff_initial_s": 0.1,
            "backoff_max_s": 1,
            "pause_initial_s": 0.5,
            "pause_max_s": 2,
        },
        "rate_limits": {
            "upload_per_s": 1000,
            "metadata_per_s": 1000,
            "signed_url_per_s": 1000,
            "cooldown_initial_s": 0.1,
            "cooldown_max_s": 1,
        },
        "poll": {"initial_s": 0.1, "max_s": 0.5},
        "shutdown": {"grace_s": 5},
        "http": {"listen": None},
        "log": {"level": "debug", "format": "text"},
    }
    return _merge(base, sections)


def make_config(
    tmp_path: Path, emulator: EmulatorServer, roots: list[Path], **sections: Any
) -> Config:
    """Given the emulator and the roots, return a validated test config (see config_data)."""
    return parse_config(config_data(tmp_path, emulator, roots, **sections), "test-config")


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool],
    timeout_s: float = 30.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true; raises AssertionError after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def running(cfg: Config, key: str, **kwargs: Any) -> AsyncIterator[Daemon]:
    """Run a daemon in this event loop; stops it (gracefully) on exit and checks its exit."""
    daemon = Daemon(cfg, key, **kwargs)
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: daemon.ready or task.done(), 20, what="daemon ready")
        if task.done():
            task.result()  # raise its startup error
        yield daemon
    finally:
        daemon.request_stop("test over")
        code = await asyncio.wait_for(task, 30)
        assert code == daemon.exit_code


async def state_of(daemon: Daemon, path: Path) -> tuple[str | None, str | None, str | None]:
    """(content state, asset id, path state) the ledger has for ``path``."""
    rec = await daemon.ledger.get_path(str(path))
    if rec is None:
        return (None, None, None)
    if rec.sha256 is None:
        return (None, None, rec.state)
    content = await daemon.ledger.get_content(rec.sha256)
    assert content is not None
    return (content.state, content.asset_id, rec.state)


async def wait_done(daemon: Daemon, path: Path, timeout_s: float = 30.0) -> str:
    """Wait until ``path``'s content is done; returns its asset id."""

    async def done() -> bool:
        return (await state_of(daemon, path))[0] == "done"

    await wait_for(done, timeout_s, what=f"{path.name} done")
    asset = (await state_of(daemon, path))[1]
    assert asset is not None
    return asset


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_measured(
    argv: list[str], env: dict[str, str], stderr_path: Path, timeout_s: float
) -> tuple[int, int]:
    """Run a child to completion; returns (exit status, its own peak RSS in KiB).

    The peak is the child's ``VmHWM`` from ``/proc``, sampled until it exits: ``ru_maxrss``
    would not do, since Linux carries the parent's RSS at fork over into the child's maxrss,
    and this test process is large by the end of a suite. Blocking: call it in a thread.
    """
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout_s
    peak_kib = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
        except (OSError, ValueError):
            pass  # exiting: the last sample stands
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{argv} did not finish within {timeout_s} s")
        time.sleep(0.05)
    return proc.returncode, peak_kib


def received(emulator: EmulatorServer) -> dict[str, str | None]:
    """asset id -> sha256 of the bytes the emulator stored."""
    return {a.asset_id: a.sha256 for a in emulator.assets()}


def syncd_cmd(*args: str) -> list[str]:
    """The argv of a ``syncd`` subprocess (this interpreter, the repo's package)."""
    return [sys.executable, "-m", "syncd", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAVI_", "NOTIFY_"))}
    env.update(extra)
    return env
