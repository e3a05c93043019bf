"""``syncd plan`` over real folders, a real ledger and a real emulator it must not call."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from samples import write_media

from syncd.config import ApiConfig, Config, LedgerConfig, RateLimitsConfig, WatchRoot
from syncd.emulator import EmulatorServer
from syncd.fingerprint import Fingerprint
from syncd.ledger.sqlite import Ledger
from syncd.ops import plan

OLD = time.time() - 3600


def aged(path: Path) -> Path:
    """Give ``path`` an mtime an hour ago, so it counts as settled."""
    os.utime(path, (OLD, OLD))
    return path


def args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    plan.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Path]:
    """A file another process holds open for writing (and that looks old and valid)."""
    path = tmp_path / "media" / "recording.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_media(path)
    aged(path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; f=open(sys.argv[1],'ab'); print('open', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    yield path
    proc.kill()
    proc.wait()
    proc.stdout.close()


async def test_plan_sorts_every_file(
    tmp_path: Path,
    writer: Path,
    emulator: EmulatorServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    ledger_path = tmp_path / "state" / "ledger.db"
    cfg = Config(
        watch=(WatchRoot(path=str(media)), WatchRoot(path=str(tmp_path / "unplugged"))),
        api=ApiConfig(base_url=emulator.base_url, upload_mode="auto", signed_url_min_bytes=10_000),
        ledger=LedgerConfig(path=str(ledger_path)),
        rate_limits=RateLimitsConfig(upload_per_s=0.5, signed_url_per_s=1.0, metadata_per_s=2.0),
    )

    def media_file(name: str, size: int = 4096, seed: int = 0) -> Path:
        path = media / name
        write_media(path, size=size, seed=seed)
        return aged(path)

    new_small = media_file("new.mp4", seed=1)
    new_big = media_file("sub/big.mov", size=20_000, seed=2)
    changed = media_file("changed.mp4", seed=3)
    done = media_file("done.mp4", seed=4)
    queued_a = media_file("queued-a.jpg", seed=5)
    queued_b = media_file("sub/queued-b.jpg", seed=5)  # same bytes: one content, one upload
    failed = media_file("failed.png", seed=6)
    (media / "notes.txt").write_text("hello")
    aged(media / "notes.txt")
    (media / "empty.mp4").touch()
    aged(media / "empty.mp4")
    (media / "fake.mp4").write_text("this is not a video at all")
    aged(media / "fake.mp4")
    fresh = media / "fresh.mp4"
    write_media(fresh, seed=7)  # written just now: not settled
    (media / "clip.mp4.part").write_bytes(b"x")  # a temporary name: not even a candidate

    led = await Ledger.open(str(ledger_path))
    try:

        async def record(path: Path, sha: str) -> None:
            ext = path.suffix.lstrip(".")
            await led.record_content(str(path), str(media), Fingerprint.stat(str(path)), sha, ext)

        await record(done, "d0" * 32)
        att = await led.begin_attempt("d0" * 32, str(done), "direct")
        await led.finish_upload(
            "d0" * 32, att, "re_1", bytes_sent=1, http_status=200, next_poll_at=0
        )
        await record(queued_a, "a0" * 32)
        await record(queued_b, "a0" * 32)
        await record(failed, "f0" * 32)
        await led.give_up("f0" * 32, None, state="failed", outcome="error", error="boom")
        await record(changed, "c0" * 32)
        await led.record_path_state(
            str(media / "notes.txt"),
            str(media),
            "skipped",
            "not a supported media format (.txt)",
            Fingerprint.stat(str(media / "notes.txt")),
        )
    finally:
        await led.close()
    with changed.open("ab") as f:
        f.write(b"more")  # the ledger's fingerprint no longer matches
    aged(changed)
    ledger_before = hashlib.sha256(ledger_path.read_bytes()).hexdigest()

    assert await plan.run(args("--json"), cfg) == 1  # one root is unavailable
    doc = json.loads(capsys.readouterr().out)
    cats = {name: c["files"] for name, c in doc["categories"].items()}
    assert cats == {
        "upload": 3,  # new, big, changed
        "queued": 2,
        "duplicate": 1,
        "failed": 1,
        "waiting": 2,  # fresh, and the one open for writing
        "rejected": 3,  # notes.txt (known skip), empty, fake
    }
    assert doc["categories"]["upload"]["bytes"] == (
        new_small.stat().st_size + new_big.stat().st_size + changed.stat().st_size
    )
    assert doc["rejected_reasons"]["empty file"] == 1
    assert doc["rejected_reasons"]["not a supported media format (.txt)"] == 1
    assert any(r.startswith("content is not media") for r in doc["rejected_reasons"])
    # Uploads: 2 small new/changed + 1 queued content direct; 1 big through a signed URL.
    assert doc["requests"] == {"upload": 3, "signed_url": 1, "storage": 1, "metadata": 4}
    assert doc["estimated_s"] == 6.0  # 3 uploads at 0.5/s
    assert doc["roots"][0] == {"path": str(media), "available": True, "error": None, "files": 12}
    assert doc["roots"][1]["available"] is False and doc["roots"][1]["error"]
    assert doc["ledger"] == {"path": str(ledger_path), "exists": True}
    assert any("not hashed" in n for n in doc["notes"])

    # It touched neither the API nor the ledger.
    assert emulator.requests() == []
    assert hashlib.sha256(ledger_path.read_bytes()).hexdigest() == ledger_before

    assert await plan.run(args(), cfg) == 1
    text = capsys.readouterr().out
    assert "UNAVAILABLE" in text
    assert "upload            3 files" in text
    assert "time       6s at the configured rates" in text


async def test_plan_without_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    media = tmp_path / "media"
    media.mkdir()
    for i in range(3):
        write_media(media / f"{i}.mp4", seed=i)
        aged(media / f"{i}.mp4")
    cfg = Config(
        watch=(WatchRoot(path=str(media)),),
        ledger=LedgerConfig(path=str(tmp_path / "state" / "ledger.db")),
    )
    assert await plan.run(args("--json"), cfg) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["categories"]["upload"]["files"] == 3
    assert doc["ledger"]["exists"] is False
    assert doc["notes"][0].startswith("no ledger at")
    assert doc["estimated_s"] == 3.0
    assert not (tmp_path / "state").exists()  # nothing was created


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        ("auto", 10, "direct"),
        ("auto", 64 * 1024 * 1024, "signed_url"),
        ("direct", 10**12, "direct"),
        ("signed_url", 1, "signed_url"),
    ],
)
def test_upload_mode_for(mode: str, size: int, expected: str) -> None:
    cfg = Config(api=ApiConfig(upload_mode=mode))  # type: ignore[arg-type]
    assert plan.upload_mode_for(cfg, size) == expected
