"""After the upload, end to end against the emulator with real files: delete and move once the
asset is SUCCESS, the sidecar, a command hook with the asset id, a signed webhook on a real
server, a file changed before SUCCESS kept, and kill -9 in the middle of a clean-up finished
at the next start."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from daemon_process import DaemonProcess, query
from pipeline_support import config_data, running, sha256_of, wait_done, wait_for
from samples import write_media

from syncd.after.hooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from syncd.config import parse_config
from syncd.daemon import Daemon
from syncd.emulator import EmulatorServer
from syncd.ops import report


class Receiver:
    """A real webhook receiver on 127.0.0.1, port 0."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recv.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield recv
    await runner.cleanup()


def hook_script(out: Path) -> list[str]:
    """A hook that appends its environment and stdin, as one JSON line, to ``out``."""
    code = (
        "import json, os, sys; "
        "env = {k: v for k, v in os.environ.items() if k.startswith('SYNCD_')}; "
        f"open({str(out)!r}, 'a').write(json.dumps({{'env': env, 'stdin': json.load(sys.stdin)}})"
        " + '\\n')"
    )
    return [sys.executable, "-c", code]


async def test_files_are_deleted_or_moved_after_success_and_hooks_get_the_asset_id(
    tmp_path: Path, emulator: EmulatorServer, receiver: Receiver
) -> None:
    inbox, camera, done = tmp_path / "inbox", tmp_path / "camera", tmp_path / "done"
    for folder in (inbox, camera):
        folder.mkdir()
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret\n")
    hooked = tmp_path / "hooked.jsonl"
    data = config_data(
        tmp_path,
        emulator,
        [inbox, camera],
        hooks={
            "on_success": hook_script(hooked),
            "webhook_url": receiver.url,
            "webhook_secret_file": str(secret),
        },
    )
    data["watch"][0]["after_success"] = "delete"
    data["watch"][1].update(after_success="move", move_to=str(done), sidecar=True)
    cfg = parse_config(data, "test")
    async with running(cfg, emulator.key) as daemon:
        assert daemon.after is not None
        (inbox / "sub").mkdir()
        write_media(inbox / "sub" / "a.mp4", seed=1)
        (camera / "2024").mkdir()
        write_media(camera / "2024" / "b.mp4", seed=2)
        b_sha = sha256_of(camera / "2024" / "b.mp4")
        asset_a = await wait_done(daemon, inbox / "sub" / "a.mp4")
        asset_b = await wait_done(daemon, camera / "2024" / "b.mp4")
        moved = done / "2024" / "b.mp4"
        await wait_for(
            lambda: not (inbox / "sub" / "a.mp4").exists() and moved.exists(), 20, what="clean-up"
        )
        await wait_for(lambda: hooked.exists() and len(hooked.read_text().splitlines()) == 2, 20)
        await wait_for(lambda: len(receiver.received) == 2, 20, what="two webhooks")
        ledger = Path(data["ledger"]["path"])
        await wait_for(
            lambda: not query(ledger, "SELECT 1 FROM after_jobs WHERE state != 'done'"),
            20,
            what="every job recorded done",
        )
        status = await report.status_data(daemon.ledger, cfg)
    assert not (camera / "2024" / "b.mp4").exists()
    assert sha256_of(moved) == b_sha
    sidecar = json.loads((done / "2024" / "b.mp4.mavi.json").read_text())
    assert (sidecar["asset_id"], sidecar["sha256"], sidecar["status"]) == (
        asset_b,
        b_sha,
        "SUCCESS",
    )
    seen = [json.loads(line) for line in hooked.read_text().splitlines()]
    by_asset = {s["env"]["SYNCD_ASSET_ID"]: s for s in seen}
    assert set(by_asset) == {asset_a, asset_b}
    assert by_asset[asset_a]["env"]["SYNCD_PATH"] == str(inbox / "sub" / "a.mp4")
    assert by_asset[asset_a]["env"]["SYNCD_STATUS"] == "SUCCESS"
    assert by_asset[asset_a]["stdin"]["asset_id"] == asset_a
    for headers, body in receiver.received:
        assert verify(b"s3cret", body, headers[SIGNATURE_HEADER])
        assert headers[DELIVERY_HEADER]
    assert {json.loads(b)["asset_id"] for _, b in receiver.received} == {asset_a, asset_b}
    assert status["after_upload"] == {
        "deleted": 1,
        "moved": 1,
        "kept": 0,
        "would": 0,
        "hooks_pending": 0,
        "hooks_given_up": 0,
    }


async def test_a_file_changed_before_its_asset_is_success_is_kept_and_reported(
    tmp_path: Path, make_emulator: Any
) -> None:
    emulator = await make_emulator(waiting_s=1.5, uploading_s=0.1)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = config_data(tmp_path, emulator, [inbox])
    data["watch"][0]["after_success"] = "delete"
    ledger = Path(data["ledger"]["path"])
    async with running(parse_config(data, "test"), emulator.key) as daemon:
        clip = inbox / "a.mp4"
        write_media(clip, seed=3)

        async def uploaded() -> bool:
            rec = await daemon.ledger.get_path(str(clip))
            if rec is None or rec.sha256 is None:
                return False
            content = await daemon.ledger.get_content(rec.sha256)
            return content is not None and content.state == "uploaded"

        await wait_for(uploaded, 20, what="a.mp4 uploaded")
        first = sha256_of(clip)
        with clip.open("ab") as f:
            f.write(b"appended after the upload")
        second = sha256_of(clip)

        async def first_done() -> bool:
            content = await daemon.ledger.get_content(first)
            return content is not None and content.state == "done"

        await wait_for(first_done, 20, what="the first content SUCCESS")
        await wait_for(
            lambda: len(cleanups(ledger)) == 2 and all(o for _, o in cleanups(ledger)),
            30,
            what="the clean-ups of both versions",
        )
    verdicts = dict(cleanups(ledger))
    # The version hashed first was not deleted: the file had changed. The new version was
    # uploaded in its turn, and deleted once it was SUCCESS and unchanged.
    assert verdicts[first] == "kept: the path now holds newer content"
    assert verdicts[second] == "deleted"
    assert not clip.exists()


def cleanups(ledger: Path) -> list[tuple[str, str | None]]:
    return [
        (str(sha), outcome)
        for sha, outcome in query(
            ledger, "SELECT sha256, outcome FROM after_jobs WHERE kind = 'cleanup' ORDER BY id"
        )
    ]


@pytest.mark.parametrize(
    ("action", "point"),
    [
        ("move", "cleanup_committed"),
        ("move", "cleanup_placed"),
        ("move", "cleanup_unlinked"),
        ("delete", "cleanup_committed"),
        ("delete", "cleanup_unlinked"),
    ],
)
async def test_kill_9_at_each_step_of_a_clean_up_is_finished_at_the_next_start(
    action: str, point: str, tmp_path: Path, emulator: EmulatorServer
) -> None:
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    data = config_data(tmp_path, emulator, [inbox])
    data["watch"][0]["after_success"] = action
    if action == "move":
        data["watch"][0]["move_to"] = str(done)
    ledger = Path(data["ledger"]["path"])
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    await daemon.start(SYNCD_FAILPOINTS=f"{point}:1")
    clip = inbox / "a.mp4"
    write_media(clip, seed=4)
    sha = sha256_of(clip)
    assert await daemon.wait(30) == -9  # killed itself in the middle of the clean-up
    assert query(ledger, "SELECT state FROM after_jobs WHERE kind = 'cleanup'") == [("acting",)]
    assert clip.exists() is (point != "cleanup_unlinked")

    await daemon.start()
    try:
        await wait_for(
            lambda: (
                query(ledger, "SELECT state FROM after_jobs WHERE kind = 'cleanup'") == [("done",)]
            ),
            20,
            what="the clean-up settled",
        )
        said = [m for m in daemon.messages() if "interrupted by a crash" in m]
        assert said and ": finished (" in said[0], said
    finally:
        assert await daemon.stop() == 0
    assert not clip.exists()
    if action == "move":
        assert sha256_of(done / "a.mp4") == sha
        assert os.listdir(done) == ["a.mp4"]
    else:
        assert not done.exists()


@pytest.mark.timeout(120)
async def test_a_short_kill_9_torture_with_moves_loses_and_doubles_nothing(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """40 files, moved after SUCCESS, while the daemon is killed at random moments and at every
    step of a clean-up: in the end each file is at its destination, whole, and only there."""
    rng = random.Random("after-torture")
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    data = config_data(tmp_path, emulator, [inbox], upload={"workers": 4})
    data["watch"][0].update(after_success="move", move_to=str(done), sidecar=True)
    ledger = Path(data["ledger"]["path"])
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    expected: dict[str, str] = {}
    points = ["cleanup_committed", "cleanup_placed", "cleanup_unlinked"]
    fired = 0
    for run in range(6):
        for i in range(run * 7, run * 7 + 7):
            rel = f"sub{i % 3}/clip{i:02d}.mp4"
            (inbox / rel).parent.mkdir(exist_ok=True)
            expected[rel] = write_media(inbox / rel, size=rng.randint(2_000, 60_000), seed=i)
        point = points[run % 3]
        await daemon.start(may_die=True, SYNCD_FAILPOINTS=f"{point}:{rng.randint(1, 3)}")
        deadline = asyncio.get_running_loop().time() + rng.uniform(1.0, 3.0)
        while daemon.alive and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        fired += not daemon.alive
        if daemon.alive:
            await daemon.kill()
    assert fired >= 2, f"only {fired} crash points fired"
    await daemon.start()
    try:

        def converged() -> bool:
            return all(
                (done / rel).exists() and not (inbox / rel).exists() for rel in expected
            ) and not query(ledger, "SELECT 1 FROM after_jobs WHERE state != 'done'")

        await wait_for(converged, 60, interval_s=0.25, what="every file moved")
    finally:
        assert await daemon.stop() == 0
    for rel, sha in expected.items():
        assert sha256_of(done / rel) == sha, rel
        assert json.loads((done / (rel + ".mavi.json")).read_text())["sha256"] == sha
    left = [p for p in inbox.rglob("*") if p.is_file()]
    assert left == []
    moved = sorted(str(p.relative_to(done)) for p in done.rglob("*.mp4"))
    assert moved == sorted(expected)  # no file twice, no temporary copy left
    assert not [p for p in done.rglob(".*")]
    assert query(ledger, "PRAGMA integrity_check") == [("ok",)]


async def test_a_rejected_file_runs_the_on_failed_hook_and_the_webhook(
    tmp_path: Path, emulator: EmulatorServer, receiver: Receiver
) -> None:
    emulator.add_faults({"reject_filenames": ["bad.mp4"]})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    hooked = tmp_path / "failed.jsonl"
    data = config_data(
        tmp_path,
        emulator,
        [inbox],
        upload={"reject_after": 1},
        hooks={"on_failed": hook_script(hooked), "webhook_url": receiver.url},
    )
    data["watch"][0]["after_success"] = "delete"
    async with running(parse_config(data, "test"), emulator.key):
        write_media(inbox / "bad.mp4", seed=5)
        sha = sha256_of(inbox / "bad.mp4")
        await wait_for(lambda: hooked.exists() and hooked.read_text().strip() != "", 20)
        await wait_for(lambda: len(receiver.received) == 1, 20, what="the webhook")
    (seen,) = [json.loads(line) for line in hooked.read_text().splitlines()]
    assert seen["env"] == {
        "SYNCD_EVENT": "failed",
        "SYNCD_PATH": str(inbox / "bad.mp4"),
        "SYNCD_SHA256": sha,
        "SYNCD_ASSET_ID": "",
        "SYNCD_STATUS": "rejected",
    }
    assert seen["stdin"]["asset_id"] is None
    headers, body = receiver.received[0]
    assert headers["X-Syncd-Event"] == "failed" and json.loads(body)["status"] == "rejected"
    assert (inbox / "bad.mp4").exists()  # never cleaned up: its content failed


async def test_a_dry_run_says_what_it_would_do_and_touches_nothing(
    tmp_path: Path, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = config_data(tmp_path, emulator, [inbox])
    data["watch"][0].update(after_success="delete", after_success_dry_run=True)
    cfg = parse_config(data, "test")
    caplog.set_level(logging.INFO, logger="syncd")
    async with running(cfg, emulator.key) as daemon:
        write_media(inbox / "a.mp4", seed=6)
        await wait_done(daemon, inbox / "a.mp4")
        ledger = Path(data["ledger"]["path"])
        await wait_for(
            lambda: query(ledger, "SELECT outcome FROM after_jobs") == [("would delete",)], 20
        )
        status = await report.status_data(daemon.ledger, cfg)
    assert (inbox / "a.mp4").exists()
    assert status["after_upload"]["would"] == 1 and status["after_upload"]["deleted"] == 0
    assert any(
        "clean-up (dry run): would delete" in r.getMessage() and "a.mp4" in r.getMessage()
        for r in caplog.records
    )


async def test_sync_once_stops_after_the_clean_up_is_done(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    for i in range(3):
        write_media(inbox / f"{i}.mp4", seed=10 + i)
        os.utime(inbox / f"{i}.mp4", (time.time() - 60,) * 2)
    data = config_data(tmp_path, emulator, [inbox])
    data["watch"][0].update(after_success="move", move_to=str(done))
    daemon = Daemon(parse_config(data, "test"), emulator.key, once=True)
    assert await asyncio.wait_for(daemon.run(), 60) == 0
    assert sorted(os.listdir(done)) == ["0.mp4", "1.mp4", "2.mp4"]
    assert os.listdir(inbox) == []
