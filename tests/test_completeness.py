"""A file still open for writing is never uploaded, however quiet it is (daemon end to end).

The writers are real processes, so the daemon sees them the way it sees ffmpeg or a download
client: through inotify's open/modify/close events and through /proc.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_support import make_config, running, sha256_of, state_of, wait_done, wait_for
from samples import media_bytes

from syncd.emulator import EmulatorServer

QUIET_S = 0.5

# Writes the header, flushes, pauses with the file open (longer than quiet_s), then the rest.
PAUSING_WRITER = """
import sys, time
path, pause_s, header_len = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
data = sys.stdin.buffer.read()
with open(path, "wb") as f:
    f.write(data[:header_len]); f.flush()
    print("header", flush=True)
    time.sleep(pause_s)
    f.write(data[header_len:]); f.flush()
print("closed", flush=True)
"""


async def start_writer(path: Path, data: bytes, pause_s: float) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PAUSING_WRITER,
        str(path),
        str(pause_s),
        "64",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(data)
    proc.stdin.close()
    assert (await proc.stdout.readline()).strip() == b"header"
    return proc


async def finish(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"closed"
    await proc.wait()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path


async def test_a_writer_pausing_with_the_file_open_is_waited_for(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root], settle={"quiet_s": QUIET_S})
    data = media_bytes("mp4", 300_000, seed=11)
    path = root / "recording.mp4"
    async with running(cfg, emulator.key) as d:
        writer = await start_writer(path, data, pause_s=QUIET_S * 6)
        await asyncio.sleep(QUIET_S * 4)  # quiet for 4x quiet_s, but open for writing
        assert emulator.requests("upload") == []
        assert str(path) in d.settler.open_for_write()
        await finish(writer)
        await wait_done(d, path)
    (asset,) = emulator.assets()
    assert asset.size == len(data) and asset.sha256 == sha256_of(path)


async def test_a_file_already_open_at_startup_is_waited_for(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root], settle={"quiet_s": QUIET_S})
    data = media_bytes("mkv", 200_000, seed=12)
    path = root / "capture.mkv"
    writer = await start_writer(path, data, pause_s=QUIET_S * 8)
    await asyncio.sleep(QUIET_S * 2)  # the header is already older than quiet_s at startup
    async with running(cfg, emulator.key) as d:
        await asyncio.sleep(QUIET_S * 3)  # found by the startup scan; /proc shows the writer
        assert emulator.requests("upload") == []
        await finish(writer)
        await wait_done(d, path)
    (asset,) = emulator.assets()
    assert asset.size == len(data) and asset.sha256 == sha256_of(path)


async def test_opened_for_writing_and_closed_without_writing_settles(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    path = root / "existing.jpg"
    path.write_bytes(media_bytes("jpg", 5000, seed=13))
    cfg = make_config(tmp_path, emulator, [root], settle={"quiet_s": QUIET_S})
    async with running(cfg, emulator.key) as d:
        await wait_done(d, path)
        new = root / "touched.png"
        new.write_bytes(media_bytes("png", 5000, seed=14))
        await wait_done(d, new)
        with open(new, "r+b"):
            pass  # open for writing, write nothing, close
        await asyncio.sleep(QUIET_S * 3)
    assert len(emulator.assets()) == 2


async def test_a_writer_that_never_closes_ends_never_settled_with_the_reason(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root], settle={"quiet_s": QUIET_S, "max_wait_s": 2.0})
    path = root / "stalled.mp4"
    writer = await start_writer(path, media_bytes("mp4", 10_000), pause_s=60)
    try:
        async with running(cfg, emulator.key) as d:

            async def unsettled() -> bool:
                return (await state_of(d, path))[2] == "unsettled"

            await wait_for(unsettled, 20, what="never settled")
            rec = await d.ledger.get_path(str(path))
            assert rec is not None and rec.reason is not None
            assert "still open for writing since" in rec.reason
            assert rec.open_since is not None
    finally:
        writer.kill()
        await writer.wait()
    assert emulator.requests("upload") == []
