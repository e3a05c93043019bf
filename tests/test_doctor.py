"""``syncd doctor``: each check against real things (the emulator over HTTP, real ledgers,
real folders), and file-system/inotify checks against a procfs-shaped folder we control."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
from pathlib import Path

import pytest
from samples import write_media

from syncd.config import (
    ApiConfig,
    Config,
    HttpConfig,
    LedgerConfig,
    SettleConfig,
    WatchRoot,
)
from syncd.emulator import EmulatorServer
from syncd.fingerprint import Fingerprint
from syncd.ledger.sqlite import Ledger
from syncd.ops import doctor
from syncd.upload.client import MaviClient

LINE = re.compile(r"^(PASS|WARN|FAIL)  [^:\n]+: [^\n]+$")


def args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    doctor.add_arguments(p)
    return p.parse_args(list(argv))


def fake_proc(tmp_path: Path, mounts: list[tuple[str, str]], watches: int = 8192) -> str:
    """A procfs-shaped folder: ``self/mountinfo`` with ``(mount point, fs type)`` lines and the
    inotify limits."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    lines = [
        f"{20 + i} 1 0:{i} / {point.replace(' ', chr(92) + '040')} rw,relatime shared:{i} - "
        f"{fstype} server:/export{i} rw"
        for i, (point, fstype) in enumerate(mounts)
    ]
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    knobs = proc / "sys" / "fs" / "inotify"
    knobs.mkdir(parents=True)
    (knobs / "max_user_watches").write_text(f"{watches}\n")
    (knobs / "max_user_instances").write_text("128\n")
    return str(proc)


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


async def upload_one(emulator: EmulatorServer, tmp_path: Path) -> str:
    sample = tmp_path / "probe.mp4"
    write_media(sample)
    async with MaviClient(emulator.base_url, emulator.key) as client:
        result = await client.upload(str(sample), filename="probe.mp4")
    assert result.asset_id is not None
    return result.asset_id


# ------------------------------------------------------------------ the API key probe


async def test_key_probe_with_a_dummy_id(emulator: EmulatorServer) -> None:
    cfg = Config(api=ApiConfig(base_url=emulator.base_url))
    check = await doctor.check_key(cfg, {"MAVI_API_KEY": emulator.key}, None)
    assert (check.status, check.detail) == ("PASS", f"accepted by {emulator.base_url}")
    (request,) = emulator.requests()
    assert request.endpoint == "metadata"


async def test_key_probe_on_a_known_asset(emulator: EmulatorServer, tmp_path: Path) -> None:
    asset_id = await upload_one(emulator, tmp_path)
    cfg = Config(api=ApiConfig(base_url=emulator.base_url))
    check = await doctor.check_key(cfg, {"MAVI_API_KEY": emulator.key}, asset_id)
    assert check.status == "PASS"
    assert f"asset {asset_id} is" in check.detail
    async with MaviClient(emulator.base_url, emulator.key) as client:
        await client.delete(asset_id)
    check = await doctor.check_key(cfg, {"MAVI_API_KEY": emulator.key}, asset_id)
    assert check.status == "WARN" and "unknown to the API" in check.detail


async def test_key_probe_failures(emulator: EmulatorServer) -> None:
    cfg = Config(api=ApiConfig(base_url=emulator.base_url))
    check = await doctor.check_key(cfg, {"MAVI_API_KEY": "sk-mavi-wrong"}, None)
    assert check.status == "FAIL" and check.detail.startswith("refused")
    assert "sk-mavi-wrong" not in check.detail
    check = await doctor.check_key(cfg, {}, None)
    assert check.status == "FAIL" and "no API key" in check.detail
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = Config(api=ApiConfig(base_url=f"http://127.0.0.1:{port}/serve/api/v2"))
    check = await doctor.check_key(closed, {"MAVI_API_KEY": emulator.key}, None)
    assert check.status == "FAIL" and "cannot check against" in check.detail


# ------------------------------------------------------------------ the whole run


async def test_doctor_run_end_to_end(
    emulator: EmulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    media = tmp_path / "media"
    (media / "a" / "b").mkdir(parents=True)
    ledger_path = tmp_path / "state" / "ledger.db"
    asset_id = await upload_one(emulator, tmp_path)
    led = await Ledger.open(str(ledger_path))
    try:
        sha = "ab" * 32
        await led.record_content(
            str(media / "x.mp4"), str(media), Fingerprint(1, 1, 1, 1, 1), sha, "mp4"
        )
        att = await led.begin_attempt(sha, str(media / "x.mp4"), "direct")
        await led.finish_upload(sha, att, asset_id, bytes_sent=1, http_status=200, next_poll_at=0)
        await led.record_status(sha, asset_id, "SUCCESS", next_poll_at=None)
    finally:
        await led.close()
    cfg = Config(
        watch=(WatchRoot(path=str(media)),),
        api=ApiConfig(base_url=emulator.base_url),
        ledger=LedgerConfig(path=str(ledger_path)),
        http=HttpConfig(listen="127.0.0.1:0"),
        source="/etc/syncd/config.yaml",
    )
    monkeypatch.setenv("MAVI_API_KEY", emulator.key)
    before = ledger_path.read_bytes()
    status = await doctor.run(args(), cfg)
    lines = capsys.readouterr().out.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    names = [line.split("  ", 1)[1].split(":", 1)[0] for line in lines]
    assert names == [
        "config", f"folder {media}", "inotify", "ledger", "disk", "http", "api key",
    ]  # fmt: skip
    assert status == (1 if any(line.startswith("FAIL") for line in lines) else 0)
    assert not any(line.startswith("FAIL") for line in lines), lines
    ledger_line = next(line for line in lines if " ledger: " in line)
    assert "integrity ok, 1 content(s)" in ledger_line
    key_line = lines[-1]
    assert f"asset {asset_id} is" in key_line  # probed the known asset, not the dummy
    inotify_line = next(line for line in lines if " inotify: " in line)
    assert "3 folder(s) to watch" in inotify_line
    assert ledger_path.read_bytes() == before

    assert await doctor.run(args("--json"), cfg) == status
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is (status == 0)
    assert [c["name"] for c in doc["checks"]] == names
    assert set(doc["checks"][0]) == {"status", "name", "detail"}


async def test_doctor_fails_on_a_bad_key_and_exits_1(
    emulator: EmulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = Config(
        api=ApiConfig(base_url=emulator.base_url),
        ledger=LedgerConfig(path=str(tmp_path / "state" / "ledger.db")),
    )
    monkeypatch.setenv("MAVI_API_KEY", "sk-mavi-revoked")
    assert await doctor.run(args(), cfg) == 1
    out = capsys.readouterr().out
    assert "FAIL  api key: refused" in out
    assert "WARN  config:" in out  # no folder to watch
    assert "PASS  ledger:" in out and "will be created" in out
    assert not (tmp_path / "state").exists()


# ------------------------------------------------------------------ file systems and inotify


async def test_network_roots_need_polling_and_a_longer_quiet_time(tmp_path: Path) -> None:
    nas = tmp_path / "nas share"
    local = tmp_path / "local"
    nas.mkdir()
    local.mkdir()
    proc = fake_proc(tmp_path, [("/", "ext4"), (str(nas), "nfs4"), (str(tmp_path / "na"), "cifs")])
    table = doctor.mounts(os.path.join(proc, "self/mountinfo"))
    assert (str(nas), "nfs4", "server:/export1") in table

    cfg = Config(watch=(WatchRoot(path=str(nas)), WatchRoot(path=str(local))))
    checks = by_name(doctor.check_roots(cfg, table))
    nas_check = checks[f"folder {nas}"]
    assert nas_check.status == "WARN"
    assert "polling: true" in nas_check.detail and "settle.quiet_s" in nas_check.detail
    assert checks[f"folder {local}"].status == "PASS"
    assert "ext4" in checks[f"folder {local}"].detail

    polled = Config(watch=(WatchRoot(path=str(nas), polling=True),))
    (only,) = doctor.check_roots(polled, table)
    assert only.status == "WARN" and "polling" not in only.detail.split(":", 1)[1].split(";")[0]
    assert "settle.quiet_s" in only.detail
    tuned = Config(watch=(WatchRoot(path=str(nas), polling=True),), settle=SettleConfig(quiet_s=60))
    (only,) = doctor.check_roots(tuned, table)
    assert only.status == "PASS"


def test_missing_and_unusable_roots(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cfg = Config(watch=(WatchRoot(path=str(tmp_path / "gone")), WatchRoot(path=str(a_file))))
    checks = doctor.check_roots(cfg, [("/", "ext4", "/dev/sda1")])
    assert [c.status for c in checks] == ["WARN", "FAIL"]
    assert "missing" in checks[0].detail and "not a folder" in checks[1].detail


def test_real_mountinfo_names_the_tmp_file_system(tmp_path: Path) -> None:
    table = doctor.mounts("/proc/self/mountinfo")
    found = doctor.fs_type_of(os.path.realpath(tmp_path), table)
    assert found is not None and found[0]


@pytest.mark.parametrize(
    ("watches", "status"),
    [(3, "FAIL"), (7, "WARN"), (100_000, "PASS")],
)
def test_inotify_limit_against_folders(tmp_path: Path, watches: int, status: str) -> None:
    media = tmp_path / "media"
    for sub in ("a/b", "c", ".hidden/deep", "Private"):
        (media / sub).mkdir(parents=True)
    # Watched: media, a, a/b, c. Not: the temporary-named .hidden (and below), excluded Private.
    root = WatchRoot(path=str(media), exclude=("Private/",))
    assert doctor.count_watch_dirs(root, SettleConfig().temp_patterns, 1000) == 4
    proc = fake_proc(tmp_path, [("/", "ext4")], watches=watches)
    check = doctor.check_inotify(Config(watch=(root,)), proc)
    assert check.status == status, check
    if status != "PASS":
        assert "sysctl fs.inotify.max_user_watches=" in check.detail
    polled = Config(watch=(WatchRoot(path=str(media), polling=True),))
    assert doctor.check_inotify(polled, proc).status == "PASS"


# ------------------------------------------------------------------ ledger, disk, http


async def test_corrupt_ledger_fails(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    led = await Ledger.open(str(path))
    for i in range(300):
        await led.set_kv(f"k{i}", "v" * 200)
    await led.close()
    data = path.read_bytes()
    # Garbage over the interior pages (the header stays), so the b-trees no longer add up.
    path.write_bytes(data[:8192] + os.urandom(len(data) - 16384) + data[-8192:])
    check = await doctor.check_ledger(Config(ledger=LedgerConfig(path=str(path))))
    assert check.status == "FAIL", check
    not_sqlite = tmp_path / "junk.db"
    not_sqlite.write_bytes(os.urandom(8192))
    check = await doctor.check_ledger(Config(ledger=LedgerConfig(path=str(not_sqlite))))
    assert check.status == "FAIL"


async def test_ledger_folder_must_be_creatable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        cfg = Config(ledger=LedgerConfig(path=str(locked / "state" / "ledger.db")))
        check = await doctor.check_ledger(cfg)
        expected = "PASS" if os.geteuid() == 0 else "FAIL"  # root writes anywhere
        assert check.status == expected
    finally:
        locked.chmod(0o700)


def test_disk_check(tmp_path: Path) -> None:
    check = doctor.check_disk(Config(ledger=LedgerConfig(path=str(tmp_path / "x" / "l.db"))))
    vfs = os.statvfs(tmp_path)
    free = vfs.f_bavail * vfs.f_frsize
    expected = (
        "FAIL"
        if free < doctor.DISK_FAIL_MIN_BYTES
        else "WARN"
        if free < doctor.DISK_WARN_MIN_BYTES
        else "PASS"
    )
    assert check.status == expected and str(tmp_path) in check.detail


@pytest.mark.parametrize(
    ("listen", "status"),
    [
        (None, "PASS"),
        ("127.0.0.1:9477", "PASS"),
        ("[::1]:9477", "PASS"),
        ("0.0.0.0:9477", "WARN"),
        ("unix:/nonexistent-folder/syncd.sock", "FAIL"),
    ],
)
def test_http_check(listen: str | None, status: str) -> None:
    assert doctor.check_http(Config(http=HttpConfig(listen=listen))).status == status


def test_mountinfo_escapes() -> None:
    assert doctor.unescape_mountinfo(r"/mnt/my\040share\134x") == "/mnt/my share\\x"
    assert doctor.unescape_mountinfo("/plain") == "/plain"
    assert doctor.unescape_mountinfo("/end\\04") == "/end\\04"


async def test_probe_does_not_hang_on_a_silent_server() -> None:
    # A server that accepts and never answers: the probe must give up with FAIL, not hang.
    release = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []
    finished: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await release.wait()
        writer.close()
        await writer.wait_closed()
        finished.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = Config(
            api=ApiConfig(base_url=f"http://127.0.0.1:{port}/serve/api/v2", read_timeout_s=0.5)
        )
        check = await doctor.check_key(cfg, {"MAVI_API_KEY": "sk-mavi-x"}, None)
        assert check.status == "FAIL"
        assert writers, "the probe never connected"
    finally:
        release.set()
        server.close()
        await server.wait_closed()
        for _ in range(500):  # the handlers close their side once released
            if len(finished) == len(writers):
                break
            await asyncio.sleep(0.01)
