"""The daemon's own integrations: sd_notify to a real socket, scheduled backups, log formats."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import socket
from pathlib import Path

from daemon_process import DaemonProcess
from pipeline_support import config_data, make_config, running, wait_for
from samples import write_media

from syncd.emulator import EmulatorServer
from syncd.ledger.sqlite import Ledger
from syncd.logs import add_secret, choose_format, setup_logging


async def test_sd_notify_lifecycle_through_a_real_socket(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    root = tmp_path / "media"
    root.mkdir()
    sock_path = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(sock_path))
    systemd.setblocking(False)
    received: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                received.append(systemd.recv(4096).decode())
            except BlockingIOError:
                return received

    try:
        daemon = DaemonProcess(config_data(tmp_path, emulator, [root]), tmp_path, emulator.key)
        await daemon.start(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="2000000")
        await wait_for(lambda: any("READY=1" in m for m in drain()), 10, what="READY=1")
        ready = next(m for m in received if "READY=1" in m)
        assert "STATUS=" in ready
        await wait_for(lambda: any(m == "WATCHDOG=1" for m in drain()), 10, what="WATCHDOG=1")
        daemon.signal(signal.SIGHUP)
        await wait_for(lambda: any("RELOADING=1" in m for m in drain()), 10, what="RELOADING=1")
        reloading = next(m for m in received if "RELOADING=1" in m)
        assert "MONOTONIC_USEC=" in reloading
        await wait_for(
            lambda: sum("READY=1" in m for m in drain()) >= 2, 10, what="READY=1 after reload"
        )
        assert await daemon.stop() == 0
        assert any("STOPPING=1" in m for m in drain())
    finally:
        systemd.close()


async def test_scheduled_backups_are_written_and_pruned(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    root = tmp_path / "media"
    root.mkdir()
    backups = tmp_path / "backups"
    cfg = make_config(
        tmp_path,
        emulator,
        [root],
        ledger={"backup_dir": str(backups), "backup_interval_s": 1.1, "backup_keep": 2},
    )
    async with running(cfg, emulator.key):
        write_media(root / "a.mp4")
        await wait_for(
            lambda: backups.exists() and len(list(backups.glob("ledger-*.db"))) >= 2,
            20,
            what="two backups",
        )
        await asyncio.sleep(2.5)  # at least two more rounds: pruned to backup_keep
        names = sorted(p.name for p in backups.glob("ledger-*.db"))
    assert len(names) == 2
    newest = backups / names[-1]
    assert oct(newest.stat().st_mode & 0o777) == "0o600"
    copy = await Ledger.open(str(newest), readonly=True)
    try:
        assert await copy.integrity_problems() == []
    finally:
        await copy.close()


def test_log_formats_and_redaction() -> None:
    root_logger = logging.getLogger()
    saved = (list(root_logger.handlers), root_logger.level, logging.getLogger("syncd").level)
    try:
        check_log_formats()
    finally:
        for handler in list(root_logger.handlers):
            root_logger.removeHandler(handler)
        for handler in saved[0]:
            root_logger.addHandler(handler)
        root_logger.setLevel(saved[1])
        logging.getLogger("syncd").setLevel(saved[2])


def check_log_formats() -> None:
    tty = io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    assert choose_format("auto", tty, {}) == "text"
    assert choose_format("auto", io.StringIO(), {}) == "json"
    assert choose_format("auto", tty, {"JOURNAL_STREAM": "8:123"}) == "journal"
    assert choose_format("json", tty, {"JOURNAL_STREAM": "8:123"}) == "json"

    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    add_secret("sk-mavi-topsecret")
    log = logging.getLogger("syncd.test")
    try:
        raise RuntimeError("request failed with key sk-mavi-topsecret")
    except RuntimeError:
        log.exception("upload of %s failed", "a.mp4")
    log.debug("not shown at info")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "error" and record["msg"] == "upload of a.mp4 failed"
    assert "sk-mavi-topsecret" not in lines[0] and "[redacted]" in record["exc"]

    out = io.StringIO()
    setup_logging("info", "journal", stream=out)
    logging.getLogger("syncd.test").warning("careful")
    assert out.getvalue() == "<4>syncd.test: careful\n"  # syslog priority, no timestamp
