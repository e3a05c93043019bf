"""The ledger on a full, read-only or locked file system: the daemon pauses, loses nothing,
and resumes by itself. Real tmpfs mounts (the tests run as root, as CI does)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pipeline_support import (
    config_data,
    make_config,
    running,
    sha256_of,
    subprocess_env,
    syncd_cmd,
    wait_for,
)
from samples import write_media

from syncd.config import parse_config
from syncd.daemon import Daemon
from syncd.emulator import EmulatorServer
from syncd.errors import EXIT_CANTCREAT


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "syncd-ledger", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system holding ``folder``; returns the filler file."""
    junk = folder / "junk"
    with open(junk, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return junk


async def all_done(d: Daemon, n: int) -> bool:
    return (await d.ledger.counts())["contents"]["done"] == n


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path


async def test_full_disk_pauses_and_resumes_when_space_returns(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    with tmpfs(tmp_path / "state", "4m") as state:
        cfg = make_config(tmp_path, emulator, [root], ledger={"path": str(state / "ledger.db")})
        async with running(cfg, emulator.key) as d:
            write_media(root / "first.mp4", seed=1)
            await wait_for(lambda: all_done(d, 1), 20, what="first done")
            junk = await asyncio.to_thread(fill, state)
            dropped = 0
            while d.ledger.stalled is None and dropped < 60:
                write_media(root / f"more{dropped:02d}.mp4", size=20_000, seed=100 + dropped)
                dropped += 1
                await asyncio.sleep(0.1)
            await wait_for(lambda: d.ledger.stalled is not None, 20, what="ledger stalled")
            health = d.health()
            assert not health.healthy and "disk full" in health.reason
            await asyncio.sleep(1.0)  # it stays up, waiting
            junk.unlink()
            await wait_for(lambda: all_done(d, 1 + dropped), 60, what="resumed after space")
            assert d.ledger.stalled is None and d.health().healthy
            assert await d.ledger.integrity_problems() == []
    # Nothing lost, nothing doubled: each file once, under the right asset.
    shas = sorted(a.sha256 for a in emulator.assets() if a.sha256)
    assert shas == sorted({sha256_of(p) for p in root.iterdir()})


async def test_read_only_ledger_refuses_to_start_with_a_clear_error(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    # A busy file system cannot be remounted read-only under a running daemon, so the case an
    # operator meets is a ledger on a read-only mount at start: one line, exit 73, no change.
    with tmpfs(tmp_path / "state", "8m") as state:
        data = config_data(tmp_path, emulator, [root], ledger={"path": str(state / "ledger.db")})
        cfg = parse_config(data, "t")
        async with running(cfg, emulator.key) as d:
            write_media(root / "a.mp4", seed=1)
            await wait_for(lambda: all_done(d, 1), 20, what="a done")
        before = (state / "ledger.db").read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(yaml.safe_dump(data))
        res = await asyncio.to_thread(
            subprocess.run,
            syncd_cmd("run", "-c", str(cfg_file)),
            env=subprocess_env(MAVI_API_KEY=emulator.key),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == EXIT_CANTCREAT, res.stderr
        assert "read-only" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert (state / "ledger.db").read_bytes() == before


async def test_ledger_locked_by_another_writer_waits_for_it(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        write_media(root / "a.mp4", seed=1)
        await wait_for(lambda: all_done(d, 1), 20, what="a done")
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(8)\n",
            cfg.ledger.path,
            stdout=subprocess.PIPE,
        )
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"locked"
        write_media(root / "b.mp4", seed=2)
        await wait_for(lambda: d.ledger.stalled is not None, 20, what="stalled on the lock")
        assert "locked by another process" in d.health().reason
        await holder.wait()
        await wait_for(lambda: all_done(d, 2), 60, what="done after the lock went")
        assert d.ledger.stalled is None
    assert os.path.exists(cfg.ledger.path)
