"""A real ``syncd run`` subprocess for lifecycle and crash tests, and read-only ledger peeks."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import yaml
from pipeline_support import subprocess_env, syncd_cmd, wait_for


class DaemonProcess:
    """``syncd run -c CONFIG`` with JSON logs appended to ``log_path``; subclasses run it
    under a ``wrapper`` command (its arguments come before syncd's)."""

    wrapper: tuple[str, ...] = ()

    def __init__(self, config: dict[str, Any], workdir: Path, key: str) -> None:
        self.config = config
        self.workdir = workdir
        self.key = key
        self.cfg_file = workdir / "config.yaml"
        self.log_path = workdir / "daemon.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.write_config(config)

    def write_config(self, config: dict[str, Any]) -> None:
        config = dict(config)
        config["log"] = {"level": "debug", "format": "json"}
        self.cfg_file.write_text(yaml.safe_dump(config))

    async def start(self, *, may_die: bool = False, **env: str) -> None:
        """Start it; returns once it logged ``syncd ready``.

        Raises if it died first, unless ``may_die`` (a crash point may fire during startup).
        """
        start_at = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.wrapper,
                *syncd_cmd("run", "-c", str(self.cfg_file)),
                env=subprocess_env(MAVI_API_KEY=self.key, **env),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

        def ready() -> bool:
            assert self.proc is not None
            return self.proc.returncode is not None or any(
                "syncd ready" in m for m in self.messages(since=start_at)
            )

        await wait_for(ready, 30, what="daemon ready")
        if self.proc.returncode is not None and not may_die:
            raise AssertionError(f"daemon exited {self.proc.returncode}: {self.tail()}")

    def messages(self, since: int = 0) -> list[str]:
        """The ``msg`` of every JSON log line (plain lines as they are)."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(since)
            raw = f.read().decode("utf-8", "replace")
        out = []
        for line in raw.splitlines():
            try:
                out.append(str(json.loads(line)["msg"]))
            except (ValueError, KeyError, TypeError):
                out.append(line)
        return out

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.messages()[-n:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.wait()

    async def stop(self, timeout_s: float = 40.0) -> int:
        self.signal(signal.SIGTERM)
        return await self.wait(timeout_s)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def query(ledger_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run a read-only query on a ledger another process may be writing (WAL)."""
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True, timeout=10)
    try:
        return list(db.execute(sql, params))
    finally:
        db.close()
