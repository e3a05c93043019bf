"""Ingest end to end: real files, real inotify, real SQLite, the emulator over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pipeline_support import (
    config_data,
    make_config,
    received,
    running,
    sha256_of,
    state_of,
    subprocess_env,
    syncd_cmd,
    wait_done,
    wait_for,
)
from samples import media_bytes, write_media

from syncd.emulator import EmulatorServer
from syncd.errors import EXIT_TEMPFAIL
from syncd.fingerprint import Fingerprint
from syncd.ingest.settle import Settled


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path


async def test_finished_file_copied_in(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        src = tmp_path / "elsewhere.mp4"
        sha = write_media(src, size=50_000)
        dest = root / "clip.mp4"
        await asyncio.to_thread(dest.write_bytes, src.read_bytes())
        asset = await wait_done(d, dest)
    assert received(emulator) == {asset: sha}
    (req,) = emulator.requests("upload")
    assert req.filename == "clip.mp4" and req.body_complete


async def test_slow_writer_is_uploaded_whole(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root], settle={"quiet_s": 0.5})
    data = media_bytes("mov", 400_000, seed=3)
    async with running(cfg, emulator.key) as d:
        dest = root / "slow.mov"
        with open(dest, "wb") as f:
            for i in range(0, len(data), 40_000):
                f.write(data[i : i + 40_000])
                f.flush()
                await asyncio.sleep(0.2)  # shorter than quiet_s: each write restarts the clock
        await wait_done(d, dest)
    assert [a.size for a in emulator.assets()] == [len(data)]
    assert [a.sha256 for a in emulator.assets()] == [sha256_of(dest)]


async def test_rsync_style_temp_file_then_rename(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        temp = root / ".clip.mp4.Xy12Zq"
        write_media(temp, ext="mp4", size=30_000)
        await asyncio.sleep(1.0)  # longer than quiet_s: a temp name is never handed on
        assert emulator.requests("upload") == []
        final = root / "clip.mp4"
        os.rename(temp, final)
        await wait_done(d, final)
    assert [r.filename for r in emulator.requests("upload")] == ["clip.mp4"]
    assert await asyncio.to_thread(lambda: True)


async def test_mv_from_elsewhere_on_the_same_filesystem(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root])
    outside = tmp_path / "downloads"
    outside.mkdir()
    src = outside / "song.mp3"
    sha = write_media(src, size=20_000)
    async with running(cfg, emulator.key) as d:
        os.rename(src, root / "song.mp3")
        asset = await wait_done(d, root / "song.mp3")
    assert received(emulator) == {asset: sha}


async def test_folder_moved_in_is_scanned(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root])
    album = tmp_path / "album"
    (album / "disc1").mkdir(parents=True)
    write_media(album / "disc1" / "a.flac", size=10_000, seed=1)
    write_media(album / "b.ogg", size=10_000, seed=2)
    async with running(cfg, emulator.key) as d:
        os.rename(album, root / "album")
        await wait_done(d, root / "album" / "disc1" / "a.flac")
        await wait_done(d, root / "album" / "b.ogg")
    assert len(emulator.assets()) == 2


async def test_same_content_at_two_paths_costs_one_upload(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        write_media(root / "a.mp4", size=25_000, seed=7)
        a = await wait_done(d, root / "a.mp4")
        write_media(root / "copy of a.mp4", size=25_000, seed=7)

        async def recorded() -> bool:
            return (await state_of(d, root / "copy of a.mp4"))[2] == "present"

        await wait_for(recorded, what="the copy recorded")
        assert (await state_of(d, root / "copy of a.mp4"))[:2] == ("done", a)
        paths = [p for p, _ in await d.ledger.paths_of(sha256_of(root / "a.mp4"))]
        assert sorted(paths) == sorted([str(root / "a.mp4"), str(root / "copy of a.mp4")])
    assert len(emulator.requests("upload")) == 1


async def test_rename_of_a_seen_file_is_not_uploaded_again(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        write_media(root / "old name.mkv", size=25_000)
        asset = await wait_done(d, root / "old name.mkv")
        os.rename(root / "old name.mkv", root / "new name.mkv")

        async def moved() -> bool:
            old = await d.ledger.get_path(str(root / "old name.mkv"))
            return (
                old is not None
                and old.state == "gone"
                and (await state_of(d, root / "new name.mkv")) == ("done", asset, "present")
            )

        await wait_for(moved, what="rename recorded")
    assert len(emulator.requests("upload")) == 1


async def test_temp_name_that_is_never_renamed_is_never_uploaded(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        for name in ("movie.mp4.part", "x.mp4.crdownload", ".hidden.mp4", "~$doc.mp4", "a.!qB"):
            write_media(root / name, ext="mp4", size=5_000)
        write_media(root / "real.mp4", size=5_000, seed=9)
        await wait_done(d, root / "real.mp4")
        await asyncio.sleep(0.8)
    assert [r.filename for r in emulator.requests("upload")] == ["real.mp4"]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("notes.txt", b"hello world\n", "not a supported media format"),
        ("empty.mp4", b"", "empty"),
        ("fake.mp4", b"this is really text, not a video\n" * 10, "not media"),
    ],
)
async def test_preflight_skips_cost_no_request(
    tmp_path: Path, root: Path, emulator: EmulatorServer, name: str, data: bytes, reason: str
) -> None:
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        (root / name).write_bytes(data)

        async def skipped() -> bool:
            rec = await d.ledger.get_path(str(root / name))
            return rec is not None and rec.state == "skipped"

        await wait_for(skipped, what=f"{name} skipped")
        rec = await d.ledger.get_path(str(root / name))
        assert rec is not None and rec.reason is not None and reason in rec.reason
    assert emulator.requests() == []


async def test_a_batch_of_settled_files_gives_each_its_own_outcome(
    tmp_path: Path, root: Path, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A long quiet time: the files below are handed to the stage by the test, as one batch.
    cfg = make_config(tmp_path, emulator, [root], settle={"quiet_s": 60, "max_wait_s": 600})
    async with running(cfg, emulator.key) as d:
        shas = [write_media(root / f"clip{i}.jpg", size=20_000, seed=i) for i in range(3)]
        (root / "notes.jpg").write_bytes(b"not a picture\n" * 100)
        (root / "readme.txt").write_bytes(b"text")
        (root / "folder.mp4").mkdir()
        write_media(root / "gone.mp4")
        write_media(root / "grew.mp4")
        names = [
            "clip0.jpg",
            "gone.mp4",
            "notes.jpg",
            "readme.txt",
            "clip1.jpg",
            "grew.mp4",
            "folder.mp4",
            "clip2.jpg",
        ]
        top = d.cfg.watch[0].path
        batch = [Settled(str(root / n), top, Fingerprint.stat(str(root / n))) for n in names]
        (root / "gone.mp4").unlink()
        with (root / "grew.mp4").open("ab") as f:
            f.write(b"more")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="syncd"):
            await d.ingest._ingest_batch(batch)
        for i, sha in enumerate(shas):
            rec = await d.ledger.get_path(str(root / f"clip{i}.jpg"))
            assert rec is not None and rec.state == "present" and rec.sha256 == sha
        for name, why in (
            ("notes.jpg", "content is not media"),
            ("readme.txt", "not a supported media format"),
            ("folder.mp4", "not a regular file"),
        ):
            rec = await d.ledger.get_path(str(root / name))
            assert rec is not None and rec.state == "skipped" and rec.reason is not None
            assert why in rec.reason, rec.reason
        # Gone before it was opened: nothing recorded; changed since it settled: not hashed
        # with a stale fingerprint, back to settling instead.
        assert await d.ledger.get_path(str(root / "gone.mp4")) is None
        assert await d.ledger.get_path(str(root / "grew.mp4")) is None
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("syncd.ingest")]
        assert sorted(m.split(" ")[1] for m in lines if m.startswith("queued ")) == [
            str(root / f"clip{i}.jpg") for i in range(3)
        ]
        assert len([m for m in lines if m.startswith("skipping ")]) == 2
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert d.counters.hashed == 3 and d.hasher.files_hashed == 3


async def test_file_deleted_before_it_settles_is_never_uploaded(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root], settle={"quiet_s": 0.8})
    async with running(cfg, emulator.key) as d:
        write_media(root / "brief.mp4", size=5_000)
        await asyncio.sleep(0.2)
        (root / "brief.mp4").unlink()
        write_media(root / "stays.mp4", size=5_000, seed=4)
        await wait_done(d, root / "stays.mp4")
        await asyncio.sleep(1.0)
    assert [r.filename for r in emulator.requests("upload")] == ["stays.mp4"]


async def test_restart_over_unchanged_files_hashes_nothing(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    for i in range(1000):
        sub = root / f"d{i % 20}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.jpg").write_bytes(media_bytes("jpg", 1024, seed=i))
    cfg = make_config(tmp_path, emulator, [root], upload={"workers": 8})
    async with running(cfg, emulator.key) as d:

        async def all_done() -> bool:
            return (await d.ledger.counts())["contents"]["done"] == 1000

        await wait_for(all_done, 120, what="1000 files done")
        assert d.counters.hashed == 1000
    uploads = len(emulator.requests("upload"))
    assert uploads == 1000

    # Second start: a stat per file, no read, no request.
    async with running(cfg, emulator.key) as d:

        async def scanned() -> bool:
            return d.counters.unchanged == 1000

        await wait_for(scanned, 60, what="restart scan")
        await asyncio.sleep(0.5)
        assert d.counters.hashed == 0 and d.hasher.files_hashed == 0
        assert d.settler.tracked() == 0
    assert len(emulator.requests("upload")) == uploads


async def test_second_daemon_on_the_same_ledger_exits_naming_the_holder(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    data = config_data(tmp_path, emulator, [root])
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key):
        proc = await asyncio.create_subprocess_exec(
            *syncd_cmd("run", "-c", str(cfg_file)),
            env=subprocess_env(MAVI_API_KEY=emulator.key),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == EXIT_TEMPFAIL
    text = err.decode()
    assert f"owned by process {os.getpid()}" in text
    assert "Traceback" not in text


async def test_a_folder_moved_away_marks_its_files_gone_and_keeps_their_contents(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root])
    (root / "album").mkdir()
    write_media(root / "album" / "a.mp3", seed=1)
    write_media(root / "album" / "b.mp3", seed=2)
    async with running(cfg, emulator.key) as d:
        await wait_done(d, root / "album" / "a.mp3")
        await wait_done(d, root / "album" / "b.mp3")
        os.rename(root / "album", tmp_path / "album-elsewhere")

        async def gone() -> bool:
            states = [(await state_of(d, root / "album" / n))[2] for n in ("a.mp3", "b.mp3")]
            return states == ["gone", "gone"]

        await wait_for(gone, 20, what="files under the moved folder gone")
        assert (await d.ledger.counts())["contents"]["done"] == 2


async def test_overflows_never_pile_up_scans(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    from syncd.ingest.watcher import FsEvent

    for i in range(2000):
        (root / f"f{i}.jpg").write_bytes(media_bytes("jpg", 256, seed=i))
    cfg = make_config(tmp_path, emulator, [root], scan={"on_start": False})
    async with running(cfg, emulator.key) as d:
        state = d.roots[str(root)]
        for _ in range(50):  # an overflow storm, as a huge tree's own walk can cause
            await d.intake.handle_event(FsEvent("overflow", str(root), str(root)))
            assert len(state.scans) <= 1
        assert state.rescan_wanted  # one more scan owed, not fifty

        def settled_down() -> bool:
            return state.full_scan is None and state.pending_rescan is None

        await wait_for(settled_down, 60, what="the owed scan done, nothing more")
        assert not state.rescan_wanted


async def test_restart_writes_nothing_for_unchanged_files_and_finds_what_went_meanwhile(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    for rel in ("keep/a.jpg", "keep/b.jpg", "keep/c.jpg", "album/d.jpg", "album/deep/e.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(media_bytes("jpg", 2048, seed=len(rel) + ord(rel[-5])))
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:

        async def all_done() -> bool:
            return (await d.ledger.counts())["contents"]["done"] == 5

        await wait_for(all_done, 60, what="5 files done")

    def last_seen() -> dict[bytes, float]:
        import sqlite3

        with contextlib.closing(sqlite3.connect(cfg.ledger.path)) as db:
            return dict(db.execute("SELECT path, last_seen FROM paths").fetchall())

    before = last_seen()
    # While syncd is stopped: a file deleted, a folder tree deleted, a file moved away and
    # back (same inode and times, a new ctime), a new file.
    (root / "keep" / "b.jpg").unlink()
    shutil.rmtree(root / "album")
    os.rename(root / "keep" / "c.jpg", tmp_path / "c.jpg")
    os.rename(tmp_path / "c.jpg", root / "keep" / "c.jpg")
    (root / "keep" / "new.jpg").write_bytes(media_bytes("jpg", 2048, seed=99))
    async with running(cfg, emulator.key) as d:

        async def settled() -> bool:
            return (await state_of(d, root / "keep" / "new.jpg"))[0] == "done"

        await wait_for(settled, 60, what="new.jpg done")
        states = {
            rel: (await state_of(d, root / rel))[2]
            for rel in ("keep/a.jpg", "keep/b.jpg", "keep/c.jpg", "album/d.jpg", "album/deep/e.jpg")
        }
        assert d.counters.hashed == 2  # new.jpg, and c.jpg whose ctime moved
    assert states == {
        "keep/a.jpg": "present",
        "keep/b.jpg": "gone",
        "keep/c.jpg": "present",
        "album/d.jpg": "gone",
        "album/deep/e.jpg": "gone",
    }
    after = last_seen()
    # The unchanged file was not written to at all.
    a = os.fsencode(str(root / "keep" / "a.jpg"))
    assert after[a] == before[a]
    assert len(emulator.requests("upload")) == 6


async def test_the_ledger_check_is_skipped_only_after_a_clean_stop_with_nothing_since(
    tmp_path: Path, root: Path, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    from syncd.errors import LedgerCorrupt

    cfg = make_config(tmp_path, emulator, [root])
    write_media(root / "a.mp4", seed=1)
    skipped_msg = "ledger closed cleanly by the last run and untouched since"
    with caplog.at_level(logging.DEBUG, logger="syncd.daemon"):
        async with running(cfg, emulator.key) as d:
            await wait_done(d, root / "a.mp4")
        assert skipped_msg not in caplog.text  # a first start checks
        async with running(cfg, emulator.key):
            pass
        assert skipped_msg in caplog.text
    # Damage after a clean stop (the interior pages; the header stays): the stamp no longer
    # matches, the check runs, and the daemon refuses to start.
    path = Path(cfg.ledger.path)
    data = path.read_bytes()
    path.write_bytes(data[:8192] + os.urandom(len(data) - 16384) + data[-8192:])
    with pytest.raises(LedgerCorrupt):
        async with running(cfg, emulator.key):
            pass
