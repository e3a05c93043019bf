"""Walking roots: real trees on disk with hostile names, symlinks, special files, permissions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
import threading
import unicodedata
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import pytest
from samples import write_media
from unprivileged import run_unprivileged, shared_folder

from syncd.config import DEFAULT_TEMP_PATTERNS, WatchRoot
from syncd.fingerprint import Fingerprint
from syncd.ingest.pathfilter import PathFilter
from syncd.ingest.scanner import RootUnavailable, ScanEntry, scan_dir, scan_root


def make_root(path: Path | str, **kwargs: object) -> tuple[WatchRoot, PathFilter]:
    root = WatchRoot(path=str(path), **kwargs)  # type: ignore[arg-type]
    return root, PathFilter(root, DEFAULT_TEMP_PATTERNS)


async def collect(agen: AsyncGenerator[list[ScanEntry], None]) -> list[ScanEntry]:
    entries: list[ScanEntry] = []
    async with contextlib.aclosing(agen) as batches:
        async for batch in batches:
            assert batch, "batches are never empty"
            entries.extend(batch)
    return entries


async def scan(path: Path | str, **kwargs: object) -> list[ScanEntry]:
    follow = kwargs.pop("follow", None)
    all_roots = kwargs.pop("all_roots", ())
    root, filt = make_root(path, **kwargs)
    return await collect(
        scan_root(root, filt, follow_symlinks=follow, all_roots=all_roots)  # type: ignore[arg-type]
    )


def rel_paths(entries: list[ScanEntry], top: Path) -> set[str]:
    prefix = str(top) + "/"
    paths = [e.path for e in entries]
    assert len(paths) == len(set(paths)), "a file was reported twice"
    assert all(p.startswith(prefix) for p in paths)
    return {p[len(prefix) :] for p in paths}


def scan_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("syncd-scan")]


async def no_scan_threads_left(deadline_s: float = 10.0) -> bool:
    """Poll until every walker thread has exited (it may still be unwinding right after it
    handed over its last word); False if one is still there at the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while scan_threads():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_finds_regular_files_with_their_fingerprints(tmp_path: Path) -> None:
    for rel in ("a.mp4", "sub/b.jpg", "sub/deeper/c.wav", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_media(tmp_path / rel, ext="mp4")
    (tmp_path / "empty-folder").mkdir()
    entries = await scan(tmp_path)
    assert rel_paths(entries, tmp_path) == {"a.mp4", "sub/b.jpg", "sub/deeper/c.wav", "notes.txt"}
    for entry in entries:
        assert entry.root == str(tmp_path)
        assert entry.fingerprint == Fingerprint.stat(entry.path)


async def test_temporary_names_and_filter_globs(tmp_path: Path) -> None:
    names = [
        "keep.mp4",
        ".clip.mp4.a1B2c3",
        "clip.mp4.part",
        "clip.partial",
        "x.tmp",
        "y.crdownload",
        "z.!qB",
        "~$doc.mp4",
        ".v.swp",
        ".rsync-partial/inside.mp4",
        "Private/secret.mp4",
        "Camera/raw/r.mp4",
        "Camera/ok.mov",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write_media(tmp_path / name, ext="mp4")
    entries = await scan(tmp_path, exclude=("Private", "Camera/raw/"))
    assert rel_paths(entries, tmp_path) == {"keep.mp4", "Camera/ok.mov"}
    entries = await scan(tmp_path, include=("*.mov",))
    assert rel_paths(entries, tmp_path) == {"Camera/ok.mov"}


async def test_non_recursive_root(tmp_path: Path) -> None:
    write_media(tmp_path / "top.mp4")
    (tmp_path / "sub").mkdir()
    write_media(tmp_path / "sub" / "below.mp4")
    assert rel_paths(await scan(tmp_path, recursive=False), tmp_path) == {"top.mp4"}


async def test_hostile_names_keep_their_exact_bytes(tmp_path: Path) -> None:
    top = os.fsencode(tmp_path)
    nfc = unicodedata.normalize("NFC", "café.mp4").encode()
    nfd = unicodedata.normalize("NFD", "café.mp4").encode()
    assert nfc != nfd
    names = [
        b"with space.mp4",
        b'quote\'s "double".mp4',
        b"semi;colon && $(echo hi).mp4",
        b"new\nline.mp4",
        b"-leading-dash.mp4",
        b"--help",
        b"latin1-\xe9\xe8.mp4",  # not UTF-8
        b"\xff\xfe.mp4",
        b"n" * 251 + b".mp4",  # a 255-byte name
        nfc,
        nfd,  # a different name on disk, though it looks the same
        b"tab\tand\x1bescape.mp4",
    ]
    os.mkdir(top + b"/dir \xe9\n")
    created = {top + b"/" + n for n in names} | {top + b"/dir \xe9\n/" + n for n in names}
    for raw in created:
        with open(raw, "wb") as f:
            f.write(b"\x00\x00\x00\x18ftypmp42")
    entries = await scan(tmp_path)
    found = {os.fsencode(e.path) for e in entries}
    assert found == created
    for entry in entries:
        # The reported path opens the very file that is on disk.
        assert entry.fingerprint == Fingerprint.stat(entry.path)


async def test_special_files_are_skipped_without_hanging(tmp_path: Path) -> None:
    write_media(tmp_path / "real.mp4")
    os.mkfifo(tmp_path / "fifo.mp4")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "socket.mp4"))
        with contextlib.suppress(PermissionError):  # device nodes need CAP_MKNOD
            os.mknod(tmp_path / "null.mp4", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        # A scanner that opened the FIFO would hang: the timeout turns that into a failure.
        entries = await asyncio.wait_for(scan(tmp_path), timeout=30)
    assert rel_paths(entries, tmp_path) == {"real.mp4"}


@pytest.fixture
def symlink_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """root/ with links inside, outside, dangling and looping; outside/ and other/ beside it."""
    root, outside, other = tmp_path / "root", tmp_path / "outside", tmp_path / "other"
    for folder in (root / "sub", outside / "deep", other):
        folder.mkdir(parents=True)
    write_media(root / "real.mp4")
    write_media(root / "sub" / "inner.mp4")
    write_media(outside / "out.mp4")
    write_media(outside / "deep" / "out2.mp4")
    write_media(other / "theirs.mp4")
    (root / "link-inside.mp4").symlink_to(root / "real.mp4")
    (root / "link-outside.mp4").symlink_to(outside / "out.mp4")
    (root / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (root / "self-loop.mp4").symlink_to(root / "self-loop.mp4")
    (root / "sub" / "loop").symlink_to(root)  # a folder link back up the tree
    (root / "outside-dir").symlink_to(outside)
    (root / "other-root").symlink_to(other)
    return root, outside, other


async def test_symlinks_are_not_followed_by_default(symlink_tree: tuple[Path, Path, Path]) -> None:
    root, _, other = symlink_tree
    entries = await asyncio.wait_for(scan(root, all_roots=(str(root), str(other))), 30)
    assert rel_paths(entries, root) == {"real.mp4", "sub/inner.mp4"}


async def test_symlinks_followed_when_configured(symlink_tree: tuple[Path, Path, Path]) -> None:
    root, outside, other = symlink_tree
    entries = await asyncio.wait_for(
        scan(root, follow_symlinks=True, all_roots=(str(root), str(other))), 30
    )
    assert rel_paths(entries, root) == {
        "real.mp4",
        "sub/inner.mp4",
        "link-inside.mp4",
        "link-outside.mp4",
        "outside-dir/out.mp4",
        "outside-dir/deep/out2.mp4",
        # not dangling.mp4 nor self-loop.mp4; sub/loop leads back to the root, already walked;
        # other-root leads into another watched root, which its own scan covers.
    }
    by_rel = {e.path[len(str(root)) + 1 :]: e for e in entries}
    assert by_rel["link-outside.mp4"].fingerprint == Fingerprint.stat(str(outside / "out.mp4"))
    # The per-call override wins over the root's setting.
    root_cfg, filt = make_root(root, follow_symlinks=True)
    plain = await collect(scan_root(root_cfg, filt, follow_symlinks=False))
    assert rel_paths(plain, root) == {"real.mp4", "sub/inner.mp4"}


async def test_followed_links_into_another_root_when_it_is_not_watched(
    symlink_tree: tuple[Path, Path, Path],
) -> None:
    root, _, _ = symlink_tree
    entries = await scan(root, follow_symlinks=True, all_roots=(str(root),))
    assert "other-root/theirs.mp4" in rel_paths(entries, root)


async def test_root_that_is_a_symlink_is_walked(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    write_media(real / "a.mp4")
    (tmp_path / "alias").symlink_to(real)
    entries = await scan(tmp_path / "alias")
    assert rel_paths(entries, tmp_path / "alias") == {"a.mp4"}


async def test_root_that_is_a_file_or_missing(tmp_path: Path) -> None:
    write_media(tmp_path / "file.mp4")
    with pytest.raises(RootUnavailable, match=r"file\.mp4: is not a folder \(it is a regular"):
        await scan(tmp_path / "file.mp4")
    with pytest.raises(RootUnavailable, match="missing: does not exist"):
        await scan(tmp_path / "missing")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(RootUnavailable, match="it is a FIFO"):
        await asyncio.wait_for(scan(tmp_path / "fifo"), 30)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RootUnavailable, match="does not exist"):
        await scan(tmp_path / "dangling")
    assert await no_scan_threads_left()


async def test_ten_thousand_files_in_one_folder(tmp_path: Path) -> None:
    for i in range(10_000):
        (tmp_path / f"clip{i:05d}.mp4").touch()
    root, filt = make_root(tmp_path)
    sizes: list[int] = []
    seen: set[str] = set()
    async with contextlib.aclosing(scan_root(root, filt, batch_size=512)) as batches:
        async for batch in batches:
            sizes.append(len(batch))
            seen.update(e.path for e in batch)
    assert len(seen) == 10_000 == sum(sizes)
    assert max(sizes) <= 512 and len(sizes) >= 10_000 // 512


async def test_two_hundred_levels_deep(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(["d"] * 200))
    deep.mkdir(parents=True)
    write_media(deep / "bottom.mp4")
    write_media(tmp_path / "d" / "top.mp4")
    entries = await scan(tmp_path)
    assert rel_paths(entries, tmp_path) == {"d/top.mp4", "/".join(["d"] * 200) + "/bottom.mp4"}


async def test_closing_early_stops_the_thread(tmp_path: Path) -> None:
    for i in range(2_000):
        (tmp_path / f"clip{i:05d}.mp4").touch()
    root, filt = make_root(tmp_path)
    batches = scan_root(root, filt, batch_size=10)
    first = await anext(batches)
    assert len(first) == 10
    # Backpressure: with nobody taking batches the walker waits instead of racing through the
    # 2,000 files (which takes it a few milliseconds).
    await asyncio.sleep(0.3)
    assert len(scan_threads()) == 1
    await batches.aclose()
    assert await no_scan_threads_left()


async def test_cancelling_the_consumer_stops_the_thread(tmp_path: Path) -> None:
    for i in range(2_000):
        (tmp_path / f"clip{i:05d}.mp4").touch()
    root, filt = make_root(tmp_path)
    started = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(scan_root(root, filt, batch_size=10)) as batches:
            async for _ in batches:
                started.set()
                await asyncio.sleep(3600)

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await no_scan_threads_left()


async def test_scan_dir_walks_one_sub_folder(tmp_path: Path) -> None:
    for rel in ("top.mp4", "new/a.mp4", "new/deeper/b.mp4", "new/.hidden/c.mp4", "Private/d.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_media(tmp_path / rel)
    (tmp_path / "linked").symlink_to(tmp_path / "new")
    root, filt = make_root(tmp_path, exclude=("Private",))
    found = await collect(scan_dir(root, filt, str(tmp_path / "new")))
    assert rel_paths(found, tmp_path) == {"new/a.mp4", "new/deeper/b.mp4"}
    assert await collect(scan_dir(root, filt, str(tmp_path / "Private"))) == []
    assert await collect(scan_dir(root, filt, str(tmp_path / "new" / ".hidden"))) == []
    assert await collect(scan_dir(root, filt, str(tmp_path / "gone"))) == []
    assert await collect(scan_dir(root, filt, str(tmp_path / "linked"))) == []
    assert await collect(scan_dir(root, filt, "/somewhere/else")) == []
    followed = await collect(scan_dir(root, filt, str(tmp_path / "linked"), follow_symlinks=True))
    assert rel_paths(followed, tmp_path) == {"linked/a.mp4", "linked/deeper/b.mp4"}
    flat_root, flat_filt = make_root(tmp_path, recursive=False)
    assert await collect(scan_dir(flat_root, flat_filt, str(tmp_path / "new"))) == []


# -- permissions: root reads everything, so these checks run as an unprivileged user ----------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with shared_folder() as path:
        yield path


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_permission_denied_folders_are_skipped_with_one_warning(shared_dir: Path) -> None:
    for rel in ("ok/a.mp4", "locked/b.mp4", "locked/c.mp4", "nosearch/d.mp4", "nosearch/e.mp4"):
        (shared_dir / rel).parent.mkdir(exist_ok=True)
        write_media(shared_dir / rel)
    (shared_dir / "ok").chmod(0o755)
    write_media(shared_dir / "ok" / "unreadable.mp4")
    (shared_dir / "ok" / "unreadable.mp4").chmod(0o000)
    (shared_dir / "locked").chmod(0o000)
    (shared_dir / "nosearch").chmod(0o644)  # names can be listed, but not stat-ed

    def check() -> dict[str, object]:
        handler = _Records()
        logger = logging.getLogger("syncd.ingest.scanner")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        entries = asyncio.run(scan(shared_dir))
        warnings = [r.getMessage() for r in handler.records if r.levelno >= logging.WARNING]
        return {"found": sorted(rel_paths(entries, shared_dir)), "warnings": warnings}

    out = run_unprivileged(check)
    assert out["euid"] != 0
    # A file without read permission is still a candidate: hashing reports it, not the scan.
    assert out["found"] == ["ok/a.mp4", "ok/unreadable.mp4"]
    warnings = out["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 2
    assert any("locked" in w and "Permission denied" in w for w in warnings)
    assert any("nosearch" in w and "Permission denied" in w for w in warnings)


def test_unreadable_root(shared_dir: Path) -> None:
    root = shared_dir / "root"
    root.mkdir(mode=0o000)

    def check() -> dict[str, object]:
        try:
            asyncio.run(scan(root))
        except RootUnavailable as exc:
            return {"error": str(exc)}
        return {"error": None}

    out = run_unprivileged(check)
    assert out["euid"] != 0
    assert out["error"] == f"watched folder {root}: cannot be read: Permission denied"


# ------------------------------------------------------------------ comparing with the ledger


async def test_a_walk_compared_with_the_ledger_hands_on_only_new_and_changed_files(
    tmp_path: Path,
) -> None:
    from syncd.ingest.scanner import ScanReport
    from syncd.ledger.sqlite import Ledger, PathReader

    top = tmp_path / "media"
    for rel in ("a.mp4", "b.mp4", "sub/c.mp4", "sub/deep/d.mp4", "gone-dir/e.mp4", "x/f.mp4"):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        write_media(top / rel, seed=len(rel))
    (top / "skipped.txt").write_text("not media")
    (top / "sub" / "deeper").mkdir()
    ledger_path = str(tmp_path / "state" / "ledger.db")
    led = await Ledger.open(ledger_path)
    try:
        root = str(top)

        async def record(rel: str, sha: str) -> None:
            path = str(top / rel)
            fp = await asyncio.to_thread(Fingerprint.stat, path)
            await led.record_content(path, root, fp, sha, "mp4")

        for i, rel in enumerate(("a.mp4", "b.mp4", "sub/c.mp4", "sub/deep/d.mp4")):
            await record(rel, f"{i:064x}")
        await record("gone-dir/e.mp4", "e" * 64)
        await record("x/f.mp4", "f" * 64)
        skipped = str(top / "skipped.txt")
        await led.record_path_state(
            skipped,
            root,
            "skipped",
            "not media",
            await asyncio.to_thread(Fingerprint.stat, skipped),
        )
        # Tracked, then deleted while nobody watched: a file, and a whole folder.
        (top / "b.mp4").unlink()
        shutil.rmtree(top / "gone-dir")
        # Changed since it was recorded; new; a tracked file that is now a folder.
        write_media(top / "sub" / "c.mp4", size=4096, seed=9)
        write_media(top / "sub" / "new.mp4", seed=10)
        shutil.rmtree(top / "x")
        (top / "x" / "f.mp4").mkdir(parents=True)
        # A path recorded under another (nested) root is that root's business.
        other = str(top / "sub" / "other.mp4")
        await led.record_content(
            other, str(top / "sub"), Fingerprint(1, 2, 3, 4, 5), "0" * 64, "mp4"
        )
        # A path already gone stays out of it.
        await led.record_content(
            str(top / "old.mp4"), root, Fingerprint(1, 2, 3, 4, 5), "1" * 64, "mp4"
        )
        await led.mark_gone(str(top / "old.mp4"))
    finally:
        await led.close()

    report = ScanReport()
    root_cfg, filt = make_root(top)
    entries = await collect(
        scan_root(
            root_cfg,
            filt,
            known=lambda: PathReader(ledger_path),
            report=report,
        )
    )
    assert rel_paths(entries, top) == {"sub/c.mp4", "sub/new.mp4"}
    assert report.compared and not report.unreadable
    assert report.seen == 5 and report.unchanged == 3  # a, skipped.txt, sub/deep/d
    # other.mp4 is listed as missing too; marking it gone is left to its own root.
    assert sorted(report.missing) == [
        str(top / "b.mp4"),
        str(top / "sub" / "other.mp4"),
        str(top / "x" / "f.mp4"),
    ]
    assert report.vanished == [str(top / "gone-dir")]
    assert await no_scan_threads_left()


@pytest.mark.parametrize("chunk", [4, 4096])
async def test_a_folder_compared_a_slice_at_a_time_finds_each_difference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    # An unchanged slice of a listing is taken out with one comparison; a slice with any
    # difference is decided entry by entry. Small slices put differences in some slices
    # and not in others; one slice holding the whole folder mixes them all in one.
    from syncd.ingest import scanner
    from syncd.ingest.scanner import ScanReport
    from syncd.ledger.sqlite import Ledger, PathReader

    monkeypatch.setattr(scanner, "LIST_CHUNK", chunk)
    top = tmp_path / "media"
    (top / "sub").mkdir(parents=True)
    (top / "t").mkdir()
    names = [f"f{i:02d}.mp4" for i in range(20)]
    for i, name in enumerate(names):
        write_media(top / name, seed=i)
    write_media(top / "sub" / "s.mp4", seed=30)
    # A folder where nothing changed but the filter: x.tmp was tracked once, and is a
    # temporary name to the filter now (that makes it gone, as a file deleted would be).
    write_media(top / "t" / "ok.mp4", seed=31)
    (top / "t" / "x.tmp").write_bytes(b"x" * 100)
    ledger_path = str(tmp_path / "ledger.db")
    led = await Ledger.open(ledger_path)
    try:
        root = str(top)
        for i, rel in enumerate([*names, "sub/s.mp4", "t/ok.mp4", "t/x.tmp"]):
            path = str(top / rel)
            fp = await asyncio.to_thread(Fingerprint.stat, path)
            if rel == "f11.mp4":
                await led.record_path_state(path, root, "unsettled", "still written", fp)
            else:
                await led.record_content(path, root, fp, f"{i:064x}", "mp4")
    finally:
        await led.close()
    write_media(top / "f05.mp4", size=4096, seed=40)  # changed since it was recorded
    write_media(top / "new.mp4", seed=41)
    (top / "f17.mp4").unlink()

    report = ScanReport()
    root_cfg, filt = make_root(top)
    entries = await collect(
        scan_root(root_cfg, filt, known=lambda: PathReader(ledger_path), report=report)
    )
    assert rel_paths(entries, top) == {"f05.mp4", "f11.mp4", "new.mp4"}
    changed = next(e for e in entries if e.path.endswith("f05.mp4"))
    assert changed.fingerprint == Fingerprint.stat(str(top / "f05.mp4"))
    assert report.compared and not report.unreadable and not report.vanished
    assert report.seen == 22 and report.unchanged == 19  # 17 of the 20, sub/s.mp4, t/ok.mp4
    assert sorted(report.missing) == [str(top / "f17.mp4"), str(top / "t" / "x.tmp")]


async def test_a_folder_excluded_or_beyond_a_non_recursive_root_is_not_there(
    tmp_path: Path,
) -> None:
    from syncd.ingest.scanner import ScanReport
    from syncd.ledger.sqlite import Ledger, PathReader

    top = tmp_path / "media"
    (top / "sub").mkdir(parents=True)
    write_media(top / "keep.mp4")
    write_media(top / "sub" / "a.mp4")
    ledger_path = str(tmp_path / "ledger.db")
    led = await Ledger.open(ledger_path)
    try:
        for rel in ("keep.mp4", "sub/a.mp4"):
            path = str(top / rel)
            fp = await asyncio.to_thread(Fingerprint.stat, path)
            await led.record_content(path, str(top), fp, rel.ljust(64, "0")[:64], "mp4")
    finally:
        await led.close()
    report = ScanReport()
    root_cfg, filt = make_root(top, recursive=False)
    entries = await collect(
        scan_root(root_cfg, filt, known=lambda: PathReader(ledger_path), report=report)
    )
    assert entries == [] and report.unchanged == 1
    assert report.vanished == [str(top / "sub")] and report.missing == []


async def test_a_walk_whose_ledger_cannot_be_read_hands_everything_on(tmp_path: Path) -> None:
    import sqlite3

    from syncd.ingest.scanner import KnownFiles, ScanReport

    write_media(tmp_path / "a.mp4")

    def broken() -> KnownFiles:
        raise sqlite3.OperationalError("unable to open database file")

    report = ScanReport()
    root_cfg, filt = make_root(tmp_path)
    entries = await collect(scan_root(root_cfg, filt, known=broken, report=report))
    assert rel_paths(entries, tmp_path) == {"a.mp4"}
    assert not report.compared and report.unchanged == 0 and report.seen == 1


async def test_the_walk_is_paced_before_each_folder_it_opens(tmp_path: Path) -> None:
    # The daemon passes the watcher's wait_for_room: opening a watched folder queues inotify
    # events, and the walk must let the reader keep up. It is called in the walker thread.
    for sub in ("a", "a/b", "c"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        write_media(tmp_path / sub / "f.mp4")
    calls: list[int] = []
    root, filt = make_root(tmp_path)

    def pace() -> None:
        calls.append(threading.get_ident())

    entries = await collect(scan_root(root, filt, pace=pace))
    assert rel_paths(entries, tmp_path) == {"a/f.mp4", "a/b/f.mp4", "c/f.mp4"}
    assert len(calls) == 4  # the root and its three folders
    assert threading.get_ident() not in calls
