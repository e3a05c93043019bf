"""show / ls / status / retry / forget against a real ledger file, and the ledger's operator
queries (streaming in pages, upload activity, the oldest waiting content)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from syncd.config import Config, LedgerConfig, RateLimitsConfig
from syncd.errors import SyncdError
from syncd.fingerprint import Fingerprint
from syncd.ledger.sqlite import Ledger
from syncd.ops import report

T0 = 1_700_000_000.0
SHA_PENDING = "aa" * 32
SHA_DONE = "bb" * 32
SHA_FAILED = "cc" * 32
SHA_REJECTED = "dd" * 32
SHA_UPLOADED = "ee" * 32
ODD_NAME = os.fsdecode(b"caf\xe9\nnew.mp4")


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fp(size: int = 100, ino: int = 1) -> Fingerprint:
    return Fingerprint(1, ino, size, 100, 100)


@dataclass
class World:
    cfg: Config
    ledger_path: str
    media: Path
    clock: Clock
    odd_path: str


def parser(add: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncd")
    add(p)
    return p


def args_for(add: Callable[[argparse.ArgumentParser], None], *argv: str) -> argparse.Namespace:
    return parser(add).parse_args(list(argv))


async def populate(led: Ledger, clock: Clock, media: Path) -> str:
    """One content in each interesting state, each held by a real file in ``media``."""
    root = str(media)

    def file(name: str, size: int = 100) -> str:
        path = media / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        return str(path)

    await led.record_content(file("a/pending.mp4"), root, fp(100, 1), SHA_PENDING, "mp4")
    clock.now += 10
    done = file("b/done.mp4", 200)
    await led.record_content(done, root, fp(200, 2), SHA_DONE, "mp4")
    await led.record_content(file("b/copy-of-done.mp4", 200), root, fp(200, 3), SHA_DONE, "mp4")
    att = await led.begin_attempt(SHA_DONE, done, "direct")
    await led.supersede(SHA_DONE, att, "re_111", sent_sha256="ff" * 32, path=done, reason="moved")
    clock.now += 5
    att = await led.begin_attempt(SHA_DONE, done, "direct")
    clock.now += 2
    await led.finish_upload(
        SHA_DONE, att, "re_222", bytes_sent=200, http_status=200, next_poll_at=0
    )
    await led.record_status(SHA_DONE, "re_222", "SUCCESS", next_poll_at=None)
    clock.now += 10
    failed = file("a/failed.mov", 300)
    await led.record_content(failed, root, fp(300, 4), SHA_FAILED, "mov")
    att = await led.begin_attempt(SHA_FAILED, failed, "direct")
    await led.give_up(
        SHA_FAILED,
        att,
        state="failed",
        outcome="error",
        error="HTTP 500 from upload",
        http_status=500,
    )
    rejected = file("a/rejected.png", 50)
    await led.record_content(rejected, root, fp(50, 5), SHA_REJECTED, "png")
    await led.give_up(SHA_REJECTED, None, state="rejected", outcome="rejected", error="400 x3")
    uploaded = file("c/uploaded.mp4", 400)
    await led.record_content(uploaded, root, fp(400, 6), SHA_UPLOADED, "mp4")
    att = await led.begin_attempt(SHA_UPLOADED, uploaded, "signed_url")
    await led.finish_upload(
        SHA_UPLOADED, att, "re_333", bytes_sent=400, http_status=200, next_poll_at=T0 + 1e6
    )
    await led.record_path_state(
        file("notes.txt", 7), root, "skipped", "not a supported media format (.txt)", fp(7, 7)
    )
    odd = file(ODD_NAME, 10)
    await led.record_path_state(odd, root, "unsettled", None, fp(10, 8))
    await led.mark_gone(done)
    return odd


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = Clock()
    media = tmp_path / "media"
    media.mkdir()
    path = str(tmp_path / "state" / "ledger.db")
    led = await Ledger.open(path, clock=clock)
    try:
        odd = await populate(led, clock, media)
    finally:
        await led.close()
    cfg = Config(ledger=LedgerConfig(path=path), rate_limits=RateLimitsConfig(upload_per_s=2.0))
    yield World(cfg, path, media, clock, odd)


@pytest.fixture
async def readonly(world: World) -> AsyncIterator[Ledger]:
    led = await report.open_readonly(world.cfg)
    yield led
    await led.close()


# ------------------------------------------------------------------ ledger operator queries


async def test_iter_assets_streams_20000_rows_in_bounded_pages(tmp_path: Path) -> None:
    path = str(tmp_path / "big.db")
    led = await Ledger.open(path)
    await led.record_content("/m/first.mp4", "/m", fp(), "00" * 32, "mp4")
    await led.close()
    # 20,000 rows through the API would take most of a minute; copy the one real row instead.
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO contents (sha256, size, extension, state, created_at, updated_at) "
            "VALUES (?, 10, 'mp4', ?, 1, 1)",
            [(f"{i:064x}", "done" if i % 2 else "pending") for i in range(1, 20_000)],
        )
        db.executemany(
            "INSERT INTO paths (path, root, state, sha256, first_seen, last_seen) "
            "VALUES (?, '/m', 'present', ?, 1, 1)",
            [(f"/m/{i:06d}.mp4".encode(), f"{i:064x}") for i in range(1, 20_000)],
        )
    pages: list[int] = []
    led = await Ledger.open(path, readonly=True)
    try:
        seen = 0
        last = ""
        async for rec, content in led.iter_assets(page_size=500, on_page=pages.append):
            assert rec.path > last
            last = rec.path
            assert content is not None and content.sha256 == rec.sha256
            seen += 1
        assert seen == 20_000
        assert max(pages) == 500 and len(pages) == 41  # 40 full pages and one empty one
        # Lazy: taking one row costs one page, not the table.
        pages.clear()
        rows = led.iter_assets(page_size=500, on_page=pages.append)
        await anext(rows)
        await rows.aclose()
        assert pages == [500]
        pending = [r async for r, _ in led.iter_assets(states=["pending"], page_size=999)]
        assert len(pending) == 10_000
    finally:
        await led.close()


async def test_iter_assets_filters(world: World, readonly: Ledger) -> None:
    async def paths(**kw: object) -> list[str]:
        return [
            os.path.relpath(r.path, world.media)
            async for r, _ in readonly.iter_assets(page_size=2, **kw)  # type: ignore[arg-type]
        ]

    assert await paths(states=["failed", "skipped"]) == ["a/failed.mov", "notes.txt"]
    assert await paths(states=["gone"]) == ["b/done.mp4"]
    assert await paths(root=str(world.media / "a")) == [
        "a/failed.mov",
        "a/pending.mp4",
        "a/rejected.png",
    ]
    # A sibling folder whose name starts the same is not "under" the root.
    assert await paths(root=str(world.media / "a") + "/") == await paths(
        root=str(world.media / "a")
    )
    assert await paths(root=str(world.media / "b"), states=["done"]) == [
        "b/copy-of-done.mp4",
        "b/done.mp4",
    ]
    assert len(await paths(since=T0 + 20)) == 6
    assert await paths(since=T0 + 1e6) == []
    with pytest.raises(ValueError, match="unknown state"):
        await paths(states=["bogus"])


async def test_upload_activity_and_oldest(world: World, readonly: Ledger) -> None:
    activity = await readonly.upload_activity(0)
    assert activity["direct"] == {"requests": 3, "ok": 1, "bytes": 200}
    assert activity["signed_url"] == {"requests": 1, "ok": 1, "bytes": 400}
    assert await readonly.upload_activity(T0 + 1e6) == {}
    oldest = await readonly.oldest_waiting_content()
    assert oldest is not None
    content, path = oldest
    assert content.sha256 == SHA_PENDING and path == str(world.media / "a/pending.mp4")
    unsettled = await readonly.oldest_unsettled_path()
    assert unsettled is not None and unsettled.path == world.odd_path
    assert await readonly.due_count(T0 + 1e6) == 1
    assert [a for a, _, _ in await readonly.superseded_of(SHA_DONE)] == ["re_111"]


# ------------------------------------------------------------------ show


@pytest.mark.parametrize(
    "key",
    ["b/done.mp4", "re_222", "re_111", SHA_DONE, SHA_DONE[:8], SHA_DONE.upper()],
)
async def test_show_resolves_every_kind_of_key(
    world: World, key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(world.media)  # "b/done.mp4" is relative to here
    assert await report.run_show(args_for(report.add_show_arguments, key, "--json"), world.cfg) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sha256"] == SHA_DONE
    assert doc["asset_id"] == "re_222"
    assert (doc["state"], doc["remote_status"]) == ("done", "SUCCESS")


async def test_show_json_document(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    await report.run_show(args_for(report.add_show_arguments, SHA_DONE, "--json"), world.cfg)
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {
        "sha256", "size", "extension", "state", "asset_id", "remote_status", "upload_mode",
        "attempt_count", "throttle_count", "remote_failures", "possible_duplicates",
        "last_error", "next_attempt_at", "created_at", "updated_at", "uploaded_at", "done_at",
        "paths", "attempts", "superseded_assets",
    }  # fmt: skip
    assert doc["created_at"] == "2023-11-14T22:13:30Z"  # T0 + 10 s, in UTC
    assert sorted((p["path"], p["state"]) for p in doc["paths"]) == [
        (str(world.media / "b/copy-of-done.mp4"), "present"),
        (str(world.media / "b/done.mp4"), "gone"),
    ]
    assert [a["outcome"] for a in doc["attempts"]] == ["superseded", "ok"]
    assert doc["attempts"][1]["duration_s"] == 2.0
    assert doc["superseded_assets"] == [
        {"asset_id": "re_111", "reason": "moved", "at": "2023-11-14T22:13:30Z"}
    ]
    assert doc["attempt_count"] == 1 and doc["next_attempt_at"] is None


async def test_show_failed_content_says_why(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(world.media / "a/failed.mov")
    assert await report.run_show(args_for(report.add_show_arguments, path), world.cfg) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == path
    assert "state: failed" in out and "HTTP 500 from upload" in out
    assert "#" in out and "error" in out  # the attempt line


async def test_show_path_without_content(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    await report.run_show(
        args_for(report.add_show_arguments, str(world.media / "notes.txt"), "--json"), world.cfg
    )
    doc = json.loads(capsys.readouterr().out)
    assert (doc["sha256"], doc["state"]) == (None, "skipped")
    assert doc["last_error"] == "not a supported media format (.txt)"


async def test_show_undecodable_path(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    await report.run_show(args_for(report.add_show_arguments, world.odd_path, "--json"), world.cfg)
    (entry,) = json.loads(capsys.readouterr().out)["paths"]
    raw = os.fsencode(world.odd_path)
    assert entry["path"] == raw.decode("utf-8", "backslashreplace")
    assert entry["path"].endswith("caf\\xe9\nnew.mp4")
    assert bytes.fromhex(entry["path_bytes_hex"]) == raw
    await report.run_show(args_for(report.add_show_arguments, world.odd_path), world.cfg)
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("caf\\xe9\\nnew.mp4")  # one line for humans, newline escaped


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("re_999", "unknown path, asset id or sha256"),
        ("0123456789", "unknown path, asset id or sha256"),
        ("abc", "unknown path, asset id or sha256"),  # too short to be a prefix
        ("/no/such/file.mp4", "unknown path, asset id or sha256"),
    ],
)
async def test_show_unknown_is_exit_1(world: World, key: str, message: str) -> None:
    with pytest.raises(SyncdError, match=message) as info:
        await report.run_show(args_for(report.add_show_arguments, key), world.cfg)
    assert info.value.exit_code == 1
    assert "\n" not in str(info.value)


async def test_show_existing_untracked_file_and_ambiguous_prefix(
    world: World, tmp_path: Path
) -> None:
    stray = tmp_path / "stray.mp4"
    stray.write_bytes(b"1")
    with pytest.raises(SyncdError, match="exists but the ledger does not know it"):
        await report.run_show(args_for(report.add_show_arguments, str(stray)), world.cfg)
    led = await Ledger.open(world.ledger_path)
    try:
        await led.record_content("/x/1.mp4", "/x", fp(), "abcdef01" + "0" * 56, "mp4")
        await led.record_content("/x/2.mp4", "/x", fp(), "abcdef01" + "1" * 56, "mp4")
    finally:
        await led.close()
    with pytest.raises(SyncdError, match="ambiguous prefix"):
        await report.run_show(args_for(report.add_show_arguments, "abcdef01"), world.cfg)
    with pytest.raises(SyncdError, match="no ledger at"):
        await report.run_show(
            args_for(report.add_show_arguments, "x"),
            Config(ledger=LedgerConfig(path=str(tmp_path / "none.db"))),
        )


# ------------------------------------------------------------------ ls


async def test_ls_table(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert await report.run_ls(args_for(report.add_ls_arguments), world.cfg, page_size=3) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["STATE", "FILE", "SIZE", "ASSET", "ID", "PATH"]
    assert len(lines) == 1 + 8
    done = next(line for line in lines if line.endswith("b/done.mp4"))
    assert done.split()[:5] == ["done", "gone", "200", "B", "re_222"]
    failed = next(line for line in lines if "failed.mov" in line)
    assert failed.endswith("(HTTP 500 from upload)")
    assert any(line.endswith("caf\\xe9\\nnew.mp4") for line in lines)


async def test_ls_json_jsonl_csv_agree(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    await report.run_ls(args_for(report.add_ls_arguments, "--json"), world.cfg, page_size=2)
    rows = json.loads(capsys.readouterr().out)
    await report.run_ls(args_for(report.add_ls_arguments, "--jsonl"), world.cfg, page_size=2)
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == rows
    await report.run_ls(args_for(report.add_ls_arguments, "--csv"), world.cfg, page_size=2)
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(table) == 8
    for row, line in zip(rows, table, strict=True):
        assert list(line) == list(report.LS_COLUMNS)
        assert line["path"] == row["path"] and line["state"] == row["state"]
        assert line["size"] == ("" if row["size"] is None else str(row["size"]))
    odd = next(r for r in rows if "path_bytes_hex" in r)
    assert bytes.fromhex(odd["path_bytes_hex"]) == os.fsencode(world.odd_path)
    assert odd["state"] == odd["path_state"] == "unsettled"
    uploaded = next(r for r in rows if r["path"].endswith("uploaded.mp4"))
    assert uploaded["asset_id"] == "re_333" and uploaded["remote_status"] == "WAITING"


async def test_ls_filters_and_empty_results(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(world.media)
    await report.run_ls(
        args_for(report.add_ls_arguments, "--state", "failed,rejected", "--root", "a", "--json"),
        world.cfg,
    )
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["state"] for r in rows) == ["failed", "rejected"]
    await report.run_ls(
        args_for(report.add_ls_arguments, "--since", "@9999999999", "--json"), world.cfg
    )
    assert json.loads(capsys.readouterr().out) == []
    await report.run_ls(args_for(report.add_ls_arguments, "--since", "1h", "--csv"), world.cfg)
    assert capsys.readouterr().out.splitlines() == [",".join(report.LS_COLUMNS)]
    with pytest.raises(SyncdError, match="--state 'finished'"):
        await report.run_ls(args_for(report.add_ls_arguments, "--state", "finished"), world.cfg)


def test_ls_into_a_closed_pipe_is_quiet(world: World) -> None:
    script = (
        "import asyncio, sys\n"
        "from syncd.ops import report\n"
        "from syncd.config import Config, LedgerConfig\n"
        "cfg = Config(ledger=LedgerConfig(path=sys.argv[1]))\n"
        "p = __import__('argparse').ArgumentParser(); report.add_ls_arguments(p)\n"
        "for _ in range(300):\n"
        "    asyncio.run(report.run_ls(p.parse_args([]), cfg))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, world.ledger_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"STATE")
    proc.stdout.close()  # like `syncd ls | head -1`
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, stderr
    assert b"Traceback" not in stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", T0 - 90),
        ("30m", T0 - 1800),
        ("1h30m", T0 - 5400),
        ("2d", T0 - 172800),
        ("1w", T0 - 604800),
        ("@1600000000", 1_600_000_000.0),
        ("2023-11-14T22:13:20Z", T0),
        ("2023-11-14T23:13:20+01:00", T0),
    ],
)
def test_parse_since(text: str, expected: float) -> None:
    assert report.parse_since(text, now=T0) == expected


@pytest.mark.parametrize("text", ["yesterday", "5 parsecs", "@soon", "3x"])
def test_parse_since_rejects_nonsense(text: str) -> None:
    with pytest.raises(SyncdError, match="--since"):
        report.parse_since(text, now=T0)


# ------------------------------------------------------------------ status


async def test_status_without_daemon(world: World, readonly: Ledger) -> None:
    doc = await report.status_data(readonly, world.cfg, now=world.clock.now + 30)
    assert doc["files"] == {
        "pending": 1, "allocated": 0, "uploading": 0, "uploaded": 1, "done": 1,
        "failed": 1, "rejected": 1,
    }  # fmt: skip
    assert doc["paths"]["skipped"] == 1 and doc["paths"]["gone"] == 1
    assert doc["backlog"] == {"files": 1, "bytes": 100}
    assert doc["due_now"] == 1
    minute = doc["rate"]["upload"]["last_minute"]
    assert (minute["requests"], minute["uploaded"], minute["bytes"]) == (3, 1, 200)
    assert minute["requests_per_s"] == pytest.approx(3 / 60, abs=1e-3)
    assert doc["rate"]["upload"]["limit_per_s"] == 2.0
    assert doc["rate"]["signed_url"]["last_hour"]["uploaded"] == 1
    assert doc["daemon"]["running"] is False
    assert doc["cooldowns"] == []
    oldest = doc["oldest_waiting"]
    assert oldest["sha256"] == SHA_PENDING
    assert oldest["why"] == "due now, but no daemon is running"
    assert report.status_exit_code(doc) == 0
    out = io.StringIO()
    report.render_status(doc, out)
    text = out.getvalue()
    assert "not running" in text and "1 files, 100 B" in text and "limit 2/s" in text


class Holder:
    """A real other process that owns the ledger (holds its lock), like a running daemon."""

    def __init__(self, ledger_path: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys,time; from syncd.ledger.sqlite import LedgerLock; "
                "LedgerLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
                ledger_path,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def holder(world: World) -> Iterator[Holder]:
    h = Holder(world.ledger_path)
    yield h
    h.stop()


async def write_heartbeat(world: World, **beat: object) -> None:
    led = await Ledger.open(world.ledger_path)
    try:
        await led.set_kv("daemon", beat)
        now = time.time()
        await led.set_kv(
            "pacer",
            {
                "upload": {"level_s": 4.0, "until_epoch_s": now + 30},
                "metadata": {"level_s": 0.0, "until_epoch_s": 0.0},
            },
        )
    finally:
        await led.close()


def beat(owner: int, **over: object) -> dict[str, object]:
    now = time.time()
    data: dict[str, object] = {
        "pid": owner,
        "started_at": now - 100,
        "updated_at": now,
        "healthy": True,
        "ready": True,
        "reason": "",
        "paused": None,
        "queue": {"settling": 2, "hashing": 0, "upload_queued": 1, "uploading": 1},
        "open_for_write": {},
    }
    data.update(over)
    return data


async def test_status_healthy_daemon(
    world: World, holder: Holder, capsys: pytest.CaptureFixture[str]
) -> None:
    writing = str(world.media / "still-copying.mov")
    await write_heartbeat(world, **beat(holder.proc.pid, open_for_write={writing: T0 - 3600}))
    args = args_for(report.add_status_arguments, "--json")
    assert await report.run_status(args, world.cfg) == 0
    doc = json.loads(capsys.readouterr().out)
    d = doc["daemon"]
    assert (d["running"], d["pid"], d["healthy"], d["ready"]) == (True, holder.proc.pid, True, True)
    assert d["queue"]["uploading"] == 1
    oldest = doc["oldest_waiting"]
    assert (oldest["path"], oldest["state"]) == (writing, "settling")
    assert oldest["why"].startswith("open for writing since 2023-11-14T21:13:20Z")
    (cd,) = doc["cooldowns"]
    assert cd["endpoint"] == "upload" and 0 < cd["remaining_s"] <= 30
    assert await report.run_status(args_for(report.add_status_arguments), world.cfg) == 0
    text = capsys.readouterr().out
    assert f"running, pid {holder.proc.pid}, healthy" in text
    assert re.search(r"^cool-downs +upload [0-9]+s$", text, re.M)


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"updated_at": time.time() - 600}, "heartbeat is stale"),
        ({"healthy": False, "reason": "API key refused (401)"}, "API key refused (401)"),
        ({"pid": 1}, "no heartbeat from pid"),
    ],
)
async def test_status_unhealthy_daemon_exits_1(
    world: World,
    holder: Holder,
    override: dict[str, object],
    reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await write_heartbeat(world, **beat(holder.proc.pid, **override))
    assert await report.run_status(args_for(report.add_status_arguments), world.cfg) == 1
    assert reason in capsys.readouterr().out


# ------------------------------------------------------------------ retry and forget


async def content_state(world: World, sha: str) -> str:
    led = await report.open_readonly(world.cfg)
    try:
        content = await led.get_content(sha)
    finally:
        await led.close()
    assert content is not None
    return content.state


async def test_retry_failed_by_default(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert await report.run_retry(args_for(report.add_retry_arguments), world.cfg) == 0
    assert "re-queued 1 failed content" in capsys.readouterr().out
    assert await content_state(world, SHA_FAILED) == "pending"
    assert await content_state(world, SHA_REJECTED) == "rejected"
    await report.run_retry(args_for(report.add_retry_arguments, "--state", "rejected"), world.cfg)
    assert await content_state(world, SHA_REJECTED) == "pending"


async def test_retry_named_keys(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    args = args_for(
        report.add_retry_arguments,
        str(world.media / "a/rejected.png"),
        SHA_DONE[:10],
        "re_404",
        str(world.media / "notes.txt"),
    )
    assert await report.run_retry(args, world.cfg) == 1
    captured = capsys.readouterr()
    assert "re-queued 1 failed or rejected content" in captured.out
    assert "1 named content(s) were not failed or rejected" in captured.out
    assert "re_404: unknown" in captured.err and "holds no content" in captured.err
    assert await content_state(world, SHA_REJECTED) == "pending"
    assert await content_state(world, SHA_DONE) == "done"
    assert await content_state(world, SHA_FAILED) == "failed"


async def test_forget(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(world.media / "b/copy-of-done.mp4")
    assert await report.run_forget(args_for(report.add_forget_arguments, path), world.cfg) == 0
    assert "forgot" in capsys.readouterr().out
    led = await report.open_readonly(world.cfg)
    try:
        assert await led.get_path(path) is None
        content = await led.get_content(SHA_DONE)
        assert content is not None and content.asset_id == "re_222"  # nothing remote changed
        history = dict(await led.paths_of(SHA_DONE))
        assert path in history and history[path] is None  # still in the history, untracked
    finally:
        await led.close()
    with pytest.raises(SyncdError, match="does not track") as info:
        await report.run_forget(args_for(report.add_forget_arguments, path), world.cfg)
    assert info.value.exit_code == 1


async def test_writes_never_create_a_ledger(tmp_path: Path) -> None:
    cfg = Config(ledger=LedgerConfig(path=str(tmp_path / "missing.db")))
    with pytest.raises(SyncdError, match="no ledger at"):
        await report.run_retry(args_for(report.add_retry_arguments), cfg)
    with pytest.raises(SyncdError, match="no ledger at"):
        await report.run_forget(args_for(report.add_forget_arguments, "/x"), cfg)
    assert not (tmp_path / "missing.db").exists()


def test_command_table_is_complete() -> None:
    names = [c.name for c in report.COMMANDS]
    assert names == ["show", "ls", "status", "retry", "forget"]
    for command in report.COMMANDS:
        command.add_arguments(argparse.ArgumentParser())
