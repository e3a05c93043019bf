"""The emulator's storage: persistence across restarts, temp dirs, streaming with flat memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from conftest import MakeEmulator
from samples import media_bytes
from test_emulator_support import (
    auth,
    call,
    check_envelope,
    file_form,
    metadata,
    upload_ok,
    wait_until,
)

from syncd.emulator import DEMO_KEY, FakeClock


async def test_state_survives_a_restart_on_the_same_data_dir(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    clock = FakeClock()
    settings = {"data_dir": str(tmp_path), "waiting_s": 1.0, "uploading_s": 1.0}
    emu = await make_emulator(clock=clock, **settings)
    kept = media_bytes("mp4", 50_000, seed=1)
    kept_id = await upload_ok(http_session, emu, kept, "kept.mp4")
    failed_id = await upload_ok(http_session, emu, media_bytes("mp4", 100, seed=2), "f.mp4")
    await emu.state.force_status(emu.state.assets[failed_id], "FAILED")
    gone_id = await upload_ok(http_session, emu, media_bytes("png", 100), "gone.png")
    await call(http_session, "DELETE", f"{emu.base_url}/{gone_id}", headers=auth(emu.key))
    _, body = await call(
        http_session,
        "POST",
        emu.base_url + "/upload/signed-url",
        json={"original_filename": "later.mov"},
        headers=auth(emu.key),
    )
    signed = check_envelope(body, 200)
    await emu.close()
    # A temp file left by a killed emulator is cleaned up at start.
    (tmp_path / "tmp" / "leftover.part").write_bytes(b"partial")

    clock.advance(5.0)
    emu = await make_emulator(clock=clock, **settings)
    assert sorted(emu.state.assets) == sorted([kept_id, failed_id, signed["asset_id"]])
    assert list((tmp_path / "tmp").iterdir()) == []
    resource = (await metadata(http_session, emu, kept_id))[1]["data"]["resource"][0]
    assert resource["upload_status"] == "SUCCESS"
    assert resource["file_size"] == str(len(kept))
    assert (await metadata(http_session, emu, failed_id))[1]["data"]["resource"][0][
        "upload_status"
    ] == "FAILED"
    assert (await metadata(http_session, emu, gone_id))[1]["msg"] == "Asset not found"
    async with http_session.get(
        f"{emu.base_url}/{kept_id}/download", headers=auth(emu.key)
    ) as resp:
        assert await resp.read() == kept
    # The signed URL handed out before the restart still works.
    later = media_bytes("mov", 2000)
    old_url = str(signed["signed_url"])
    new_url = emu.root_url + old_url[old_url.index("/_storage/") :]  # the port changed
    async with http_session.post(new_url, data=file_form(later, "later.mov")) as resp:
        assert resp.status == 204
    assert emu.state.assets[str(signed["asset_id"])].sha256 == hashlib.sha256(later).hexdigest()
    new_id = await upload_ok(http_session, emu, media_bytes("mp4", 100, seed=3), "new.mp4")
    assert new_id not in (kept_id, failed_id, gone_id, signed["asset_id"])


async def test_without_a_data_dir_storage_is_temporary(make_emulator: MakeEmulator) -> None:
    emu = await make_emulator()
    data_dir = emu.state.data_dir
    assert data_dir is not None and data_dir.is_dir()
    await emu.close()
    assert not data_dir.exists()


async def test_concurrent_uploads_each_store_their_own_bytes(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    emu = await make_emulator()
    payloads = [media_bytes("mp4", 3_000_000 + i, seed=i) for i in range(6)]
    ids = await asyncio.gather(
        *(upload_ok(http_session, emu, data, f"c{i}.mp4") for i, data in enumerate(payloads))
    )
    assert len(set(ids)) == len(ids)
    for asset_id, data in zip(ids, payloads, strict=True):
        record = emu.state.assets[asset_id]
        assert record.sha256 == hashlib.sha256(data).hexdigest()
        path = emu.state.blob_path(record)
        assert path is not None and path.stat().st_size == len(data)


# --------------------------------------------------------------------------------------------
# A 1 GiB upload and download against an emulator in its own process: integrity, flat memory

BIG_BYTES = 1 << 30
BLOCK_BYTES = 1 << 20
RSS_GROWTH_LIMIT_KIB = 50 * 1024


def memory_kib(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


async def test_a_1_gib_upload_streams_through_with_flat_memory(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd.emulator",
            "--port=0",
            f"--port-file={port_file}",
            "--rate-limit=0",
            "--waiting-s=0",
            "--uploading-s=0",
            f"--data-dir={tmp_path / 'data'}",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        await wait_until(port_file.exists, what="the emulator to listen")
        root = f"http://127.0.0.1:{int(port_file.read_text())}"
        async with aiohttp.ClientSession() as session:
            # Warm up every code path first, so that the baseline includes imported code.
            small = media_bytes("mp4", 300_000)
            _, body = await call(
                session,
                "POST",
                root + "/serve/api/v2/upload",
                data=file_form(small, "warm.mp4"),
                headers=auth(DEMO_KEY),
            )
            warm_id = check_envelope(body, 200)["asset_id"]
            async with session.get(
                f"{root}/serve/api/v2/{warm_id}/download", headers=auth(DEMO_KEY)
            ) as resp:
                assert await resp.read() == small
            baseline = memory_kib(proc.pid)

            sent = hashlib.sha256()
            boundary = "emulator-test-boundary"
            head = (
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="file"; filename="huge.mp4"\r\n'
                "Content-Type: video/mp4\r\n\r\n"
            ).encode()
            tail = f"\r\n--{boundary}--\r\n".encode()
            block = os.urandom(BLOCK_BYTES)

            async def body_stream() -> AsyncIterator[bytes]:
                yield head
                for i in range(BIG_BYTES // BLOCK_BYTES):
                    chunk = i.to_bytes(8, "big") + block[8:]  # every block differs
                    sent.update(chunk)
                    yield chunk
                yield tail

            async with session.post(
                root + "/serve/api/v2/upload",
                data=body_stream(),
                headers={
                    **auth(DEMO_KEY),
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": str(len(head) + BIG_BYTES + len(tail)),
                },
            ) as resp:
                asset_id = check_envelope(await resp.json(), 200)["asset_id"]
            after_upload = memory_kib(proc.pid)

            _, asset = await call(session, "GET", f"{root}/_emulator/assets/{asset_id}")
            assert asset["sha256"] == sent.hexdigest()
            assert asset["size"] == BIG_BYTES

            received = hashlib.sha256()
            async with session.get(
                f"{root}/serve/api/v2/{asset_id}/download", headers=auth(DEMO_KEY)
            ) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Length"] == str(BIG_BYTES)
                async for chunk in resp.content.iter_chunked(BLOCK_BYTES):
                    received.update(chunk)
            assert received.hexdigest() == sent.hexdigest()
            after_download = memory_kib(proc.pid)

        growth = after_download["VmHWM"] - baseline["VmHWM"]
        assert after_upload["VmHWM"] - baseline["VmHWM"] < RSS_GROWTH_LIMIT_KIB, after_upload
        assert growth < RSS_GROWTH_LIMIT_KIB, (baseline, after_upload, after_download)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
