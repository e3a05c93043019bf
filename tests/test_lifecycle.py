"""Lifecycle of a real ``syncd run`` process: SIGTERM, SIGINT twice, SIGHUP, corrupt ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, query
from pipeline_support import config_data, sha256_of, subprocess_env, syncd_cmd, wait_for
from samples import write_media

from syncd.emulator import EmulatorServer
from syncd.errors import EXIT_CONFIG, EXIT_DATAERR


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path


def done_count(ledger: Path) -> int:
    return query(ledger, "SELECT COUNT(*) FROM contents WHERE state = 'done'")[0][0]


async def test_sigterm_drains_in_flight_uploads_and_logs_one_summary(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    data = config_data(tmp_path, emulator, [root], shutdown={"grace_s": 15})
    ledger = Path(data["ledger"]["path"])
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    # Every upload takes 1.5 s at the emulator, so SIGTERM lands while bodies are in flight.
    emulator.add_faults({"endpoint": "upload", "latency_s": 1.5, "count": 100})
    for i in range(8):
        write_media(root / f"clip{i}.mp4", size=200_000, seed=i)
    await daemon.start()
    await wait_for(
        lambda: any(not r.done for r in emulator.requests("upload")), 20, what="uploads in flight"
    )
    in_flight = [r for r in emulator.requests("upload") if not r.done]
    assert await daemon.stop() == 0
    messages = daemon.messages()
    summaries = [m for m in messages if m.startswith("syncd stopped (SIGTERM)")]
    assert len(summaries) == 1 and "cancelled_in_flight=0" in summaries[0]
    # What was in flight finished and was recorded; nothing was cut off.
    finished = {r.asset_id for r in in_flight}
    recorded = {row[0] for row in query(ledger, "SELECT asset_id FROM contents")}
    assert finished <= recorded

    emulator.clear_faults()
    await daemon.start()
    await wait_for(lambda: done_count(ledger) == 8, 30, what="all done after restart")
    assert await daemon.stop() == 0
    shas = [a.sha256 for a in emulator.assets()]
    assert sorted(shas) == sorted(sha256_of(root / f"clip{i}.mp4") for i in range(8))  # no dups


async def test_a_second_sigint_exits_at_once(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    data = config_data(tmp_path, emulator, [root], shutdown={"grace_s": 60})
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    emulator.add_faults({"endpoint": "upload", "hang": True, "count": 10})
    write_media(root / "stuck.mp4", size=10_000)
    await daemon.start()
    await wait_for(lambda: len(emulator.requests("upload")) >= 1, 20, what="a hung upload")
    daemon.signal(signal.SIGINT)
    await asyncio.sleep(0.5)
    assert daemon.alive  # the first SIGINT waits for the in-flight upload (grace 60 s)
    daemon.signal(signal.SIGINT)
    assert await daemon.wait(10) == 130
    # Its lines are written by a thread of their own, but a warning is out before the call
    # returns: the one logged just before os._exit is not lost.
    assert any(m.startswith("second SIGINT: exiting at once") for m in daemon.messages())
    # The ledger survived the abrupt exit and the interrupted upload is retried next time.
    ledger = Path(data["ledger"]["path"])
    assert query(ledger, "PRAGMA integrity_check") == [("ok",)]
    assert query(ledger, "SELECT state FROM contents") == [("uploading",)]


async def test_sighup_reloads_roots_and_keeps_the_old_config_when_the_new_is_invalid(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    second = tmp_path / "second"
    second.mkdir()
    data = config_data(tmp_path, emulator, [root])
    ledger = Path(data["ledger"]["path"])
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    await daemon.start()
    write_media(root / "a.mp4", seed=1)
    await wait_for(lambda: done_count(ledger) == 1, 20, what="a.mp4 done")

    # Add a root: it takes effect without a restart.
    daemon.write_config(config_data(tmp_path, emulator, [root, second]))
    daemon.signal(signal.SIGHUP)
    await wait_for(lambda: any("now watching" in m for m in daemon.messages()), 10, what="reload")
    write_media(second / "b.mp4", seed=2)
    await wait_for(lambda: done_count(ledger) == 2, 20, what="b.mp4 done")

    # A fleet setting cannot change under a running daemon: it says so instead of ignoring it.
    daemon.write_config(
        config_data(tmp_path, emulator, [root, second], fleet={"host_name": "renamed"})
    )
    daemon.signal(signal.SIGHUP)
    await wait_for(
        lambda: any("fleet take effect at the next restart" in m for m in daemon.messages()),
        10,
        what="the restart warning",
    )

    # An invalid config is rejected with its errors; the old one stays in force.
    daemon.cfg_file.write_text("watch: [ {path: relative/dir} ]\nupload: {workers: 0}\n")
    daemon.signal(signal.SIGHUP)
    await wait_for(
        lambda: any("new config is invalid" in m for m in daemon.messages()), 10, what="rejected"
    )
    rejected = next(m for m in daemon.messages() if "new config is invalid" in m)
    assert "watch[0].path" in rejected and "upload.workers" in rejected
    write_media(second / "c.mp4", seed=3)
    await wait_for(lambda: done_count(ledger) == 3, 20, what="c.mp4 done with the old config")
    assert daemon.alive
    assert await daemon.stop() == 0


async def test_corrupt_ledger_refuses_to_start_with_the_recovery_command(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    data = config_data(tmp_path, emulator, [root])
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    ledger = Path(data["ledger"]["path"])
    ledger.parent.mkdir(mode=0o700)
    ledger.write_bytes(os.urandom(100_000))
    res = await asyncio.to_thread(
        subprocess.run,
        syncd_cmd("run", "-c", str(daemon.cfg_file)),
        env=subprocess_env(MAVI_API_KEY=emulator.key),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == EXIT_DATAERR
    assert f"mv {ledger} {ledger}.corrupt" in res.stderr
    assert "Traceback" not in res.stderr
    assert ledger.stat().st_size == 100_000  # never silently replaced


async def test_missing_key_and_bad_config_exit_with_the_config_code(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    data = config_data(tmp_path, emulator, [root])
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    res = await asyncio.to_thread(
        subprocess.run,
        syncd_cmd("run", "-c", str(daemon.cfg_file)),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == EXIT_CONFIG and "no API key" in res.stderr
    assert "Traceback" not in res.stderr


async def test_ledger_backup_command_while_the_daemon_runs(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    data = config_data(tmp_path, emulator, [root])
    ledger = Path(data["ledger"]["path"])
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    await daemon.start()
    write_media(root / "a.mp4", seed=5)
    await wait_for(lambda: done_count(ledger) == 1, 20, what="a.mp4 done")
    dest = tmp_path / "backups" / "ledger-copy.db"
    res = await asyncio.to_thread(
        subprocess.run,
        syncd_cmd("ledger", "backup", str(dest), "-c", str(daemon.cfg_file)),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert daemon.alive
    assert await daemon.stop() == 0
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    assert query(dest, "SELECT state, asset_id IS NOT NULL FROM contents") == [("done", 1)]
