"""Completeness on real files: the settler fed by the real watcher, real writer processes and
the real /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from samples import media_bytes, write_media

from syncd.config import WatchRoot
from syncd.fingerprint import Fingerprint
from syncd.ingest.settle import Settled, Settler
from syncd.ingest.watcher import FsEvent, Watcher
from syncd.ingest.writers import WriterCheck

QUIET_S = 0.3
WAIT_S = 10.0
SIZE = 64 * 1024
HEAD = 16  # bytes the pausing writers write before their pause

# Writes the first HEAD bytes of a source file to the target, says "header", waits for a line
# on stdin, writes the rest, closes, says "closed", then waits for stdin to close.
PAUSING_WRITER = """
import sys
src, dest, mode, head = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data = open(src, "rb").read()
f = open(dest, mode)
f.write(data[:head])
f.flush()
print("header", flush=True)
sys.stdin.readline()
f.write(data[head:])
f.close()
print("closed", flush=True)
sys.stdin.read()
"""

# Writes the source file in chunks with a pause shorter than quiet_s between them.
CHUNKED_WRITER = """
import sys, time
src, dest, chunks, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
data = open(src, "rb").read()
step = len(data) // chunks
with open(dest, "wb") as f:
    for i in range(0, len(data), step):
        f.write(data[i:i + step])
        f.flush()
        time.sleep(pause)
"""

# Reads the file over and over, and holds a second descriptor open all along, until stdin closes.
READER = """
import sys, threading
path = sys.argv[1]
held = open(path, "rb")
stop = threading.Event()
def loop():
    while not stop.wait(0.05):
        with open(path, "rb") as f:
            f.read()
threading.Thread(target=loop, daemon=True).start()
print("reading", flush=True)
sys.stdin.read()
stop.set()
held.close()
"""

# Appends one byte per open/close, every 0.1 s, until stdin closes.
APPENDER = """
import sys, threading
path = sys.argv[1]
stop = threading.Event()
print("appending", flush=True)
def loop():
    while not stop.wait(0.1):
        with open(path, "ab") as f:
            f.write(b"x")
threading.Thread(target=loop, daemon=True).start()
sys.stdin.read()
stop.set()
"""


class Proc:
    """A helper process speaking one word per line on stdout, driven through stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, script: str, *args: str) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT_S):
            line = await self.proc.stdout.readline()
        assert line.decode().strip() == word

    async def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def finish(self, kill: bool = False) -> None:
        if kill and self.proc.returncode is None:
            self.proc.kill()
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # end of input: the scripts finish
        async with asyncio.timeout(WAIT_S):
            await self.proc.communicate()


@dataclass
class Harness:
    """Records what the settler hands on; reads each settled file like the hasher would."""

    settled: list[Settled] = field(default_factory=list)
    unsettled: list[tuple[str, str, str]] = field(default_factory=list)
    open_at_unsettled: dict[str, float] = field(default_factory=dict)
    settler: Settler | None = None

    async def on_settled(self, s: Settled) -> None:
        self.settled.append(s)
        await asyncio.to_thread(Path(s.path).read_bytes)  # syncd's own read must not re-trigger

    async def on_unsettled(self, path: str, root: str, reason: str) -> None:
        assert self.settler is not None
        self.open_at_unsettled.update(self.settler.open_for_write())
        self.unsettled.append((path, root, reason))

    def paths(self) -> list[str]:
        return [s.path for s in self.settled]

    async def wait_for(self, pred: Callable[[], bool], what: str) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT_S):
                while not pred():
                    await asyncio.sleep(0.02)
        assert pred(), what


@contextlib.asynccontextmanager
async def pipeline(
    root: Path | None,
    *,
    polling: bool = False,
    quiet_s: float = QUIET_S,
    max_wait_s: float = 60.0,
    writers: WriterCheck | None = None,
    max_tracked: int = 10000,
) -> AsyncIterator[tuple[Harness, Settler]]:
    """A running settler, fed by a watcher on ``root`` (None: no watcher) that drops
    dot-files the way the daemon's name filter does."""
    h = Harness()
    settler = Settler(
        quiet_s=quiet_s,
        max_wait_s=max_wait_s,
        on_settled=h.on_settled,
        on_unsettled=h.on_unsettled,
        writers=writers,
        max_tracked=max_tracked,
    )
    h.settler = settler

    def on_event(ev: FsEvent) -> None:
        if not os.path.basename(ev.path).startswith("."):
            settler.event(ev)

    watcher = Watcher(asyncio.get_running_loop(), on_event, poll_interval_s=0.1)
    task = asyncio.create_task(settler.run())
    try:
        if root is not None:
            await asyncio.to_thread(watcher.add_root, WatchRoot(str(root), polling=polling))
        yield h, settler
    finally:
        await asyncio.to_thread(watcher.stop)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.mp4"
    path.write_bytes(media_bytes("mp4", SIZE))
    return path


async def test_finished_file_copied_in_settles_once(root: Path, source: Path) -> None:
    async with pipeline(root, writers=WriterCheck()) as (h, _):
        proc = await asyncio.create_subprocess_exec("cp", str(source), str(root / "clip.mp4"))
        assert await proc.wait() == 0
        await h.wait_for(lambda: bool(h.settled), "settled")
        await asyncio.sleep(4 * QUIET_S)  # the harness read it: that must not settle it again
    assert h.paths() == [str(root / "clip.mp4")]
    assert h.settled[0].root == str(root)
    assert h.settled[0].fingerprint == Fingerprint.stat(root / "clip.mp4")
    assert h.settled[0].fingerprint.size == SIZE


async def test_slow_chunked_writer_is_handed_on_after_its_last_byte(
    root: Path, source: Path
) -> None:
    async with pipeline(root) as (h, settler):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHUNKED_WRITER, str(source), str(root / "clip.mp4"), "8",
            str(QUIET_S / 3),
        )  # fmt: skip
        assert await proc.wait() == 0
        await h.wait_for(lambda: bool(h.settled), "settled")
        await asyncio.sleep(2 * QUIET_S)
    assert len(h.settled) == 1
    assert h.settled[0].fingerprint.size == SIZE
    assert settler.tracked() == 0


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
async def test_writer_pausing_with_the_file_open_is_waited_for(
    root: Path, source: Path, polling: bool
) -> None:
    # On an inotify root the events alone must hold the file back (no /proc check); a polling
    # root has no open/close events, so there /proc does it.
    writers = WriterCheck() if polling else None
    clip = root / "clip.mp4"
    async with pipeline(root, polling=polling, writers=writers) as (h, settler):
        writer = await Proc.start(PAUSING_WRITER, str(source), str(clip), "wb", str(HEAD))
        try:
            await writer.expect("header")
            await h.wait_for(lambda: str(clip) in settler.open_for_write(), "seen open")
            await asyncio.sleep(4 * QUIET_S)  # far longer than quiet_s, the file still open
            assert h.settled == []
            assert h.unsettled == []
            assert settler.open_for_write()[str(clip)] <= time.time()
            await writer.go()
            await writer.expect("closed")
            await h.wait_for(lambda: bool(h.settled), "settled after the close")
        finally:
            await writer.finish(kill=True)
    assert h.paths() == [str(clip)]
    assert h.settled[0].fingerprint.size == SIZE


@pytest.mark.parametrize("age", ["fresh", "old"])
async def test_file_already_open_when_syncd_starts_is_waited_for(
    root: Path, source: Path, age: str
) -> None:
    # The writer is at work before the daemon starts; the startup scan offers the file.
    clip = root / "clip.mp4"
    mode = "wb"
    if age == "old":
        # An existing file, opened for writing but not written yet: its mtime says "quiet".
        shutil.copy(source, clip)
        os.truncate(clip, HEAD)
        os.utime(clip, (time.time() - 3600, time.time() - 3600))
        mode = "r+b"
    writer = await Proc.start(PAUSING_WRITER, str(source), str(clip), mode, str(HEAD))
    try:
        await writer.expect("header")
        if age == "old":
            os.utime(clip, (time.time() - 3600, time.time() - 3600))
        async with pipeline(root, writers=WriterCheck()) as (h, settler):
            await settler.offer(str(clip), str(root), Fingerprint.stat(clip))
            await h.wait_for(lambda: str(clip) in settler.open_for_write(), "seen open")
            await asyncio.sleep(4 * QUIET_S)
            assert h.settled == []
            await writer.go()
            await writer.expect("closed")
            await h.wait_for(lambda: bool(h.settled), "settled after the close")
            await asyncio.sleep(2 * QUIET_S)
    finally:
        await writer.finish(kill=True)
    assert h.paths() == [str(clip)]
    assert h.settled[0].fingerprint.size == SIZE


async def test_quiet_file_offered_by_a_scan_is_handed_on_at_once(root: Path) -> None:
    clip = root / "old.mp4"
    write_media(clip)
    os.utime(clip, (time.time() - 3600, time.time() - 3600))
    # quiet_s far beyond the wait: only the "already quiet" path can settle it in time.
    async with pipeline(None, quiet_s=120.0, writers=WriterCheck()) as (h, settler):
        await settler.offer(str(clip), str(root), Fingerprint.stat(clip))
        await h.wait_for(lambda: bool(h.settled), "settled at once")
    assert h.paths() == [str(clip)]


async def test_open_for_writing_then_closed_without_writing_settles(root: Path) -> None:
    existing = root / "existing.mp4"
    write_media(existing)
    before = Fingerprint.stat(existing)
    async with pipeline(root, writers=WriterCheck()) as (h, _):
        for script in (
            f"open({str(existing)!r}, 'ab').close()",
            f"open({str(root / 'empty.mp4')!r}, 'wb').close()",
        ):
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
            assert await proc.wait() == 0
        await h.wait_for(lambda: len(h.settled) == 2, "both settled")
        await asyncio.sleep(2 * QUIET_S)
    by_path = {s.path: s.fingerprint for s in h.settled}
    assert by_path[str(existing)] == before
    assert by_path[str(root / "empty.mp4")].size == 0
    assert len(h.settled) == 2


@pytest.mark.parametrize("seen_by", ["events", "proc"])
async def test_writer_that_never_closes_ends_unsettled_with_the_reason(
    root: Path, source: Path, seen_by: str
) -> None:
    clip = root / "clip.mp4"
    max_wait_s = 1.5
    writers = WriterCheck() if seen_by == "proc" else None
    mode = "wb"
    start = time.time()
    writer = None
    try:
        if seen_by == "proc":
            # Opened before syncd looks; found by a scan, caught by /proc.
            writer = await Proc.start(PAUSING_WRITER, str(source), str(clip), mode, str(HEAD))
            await writer.expect("header")
        async with pipeline(root, writers=writers, max_wait_s=max_wait_s) as (h, settler):
            if writer is None:
                writer = await Proc.start(PAUSING_WRITER, str(source), str(clip), mode, str(HEAD))
                await writer.expect("header")
            else:
                await settler.offer(str(clip), str(root), Fingerprint.stat(clip))
            await h.wait_for(lambda: bool(h.unsettled), "given up")
            assert settler.tracked() == 0
            assert settler.open_for_write() == {}
    finally:
        if writer is not None:
            await writer.finish(kill=True)
    assert h.settled == []
    [(path, root_path, reason)] = h.unsettled
    assert (path, root_path) == (str(clip), str(root))
    assert reason.startswith("still open for writing since ")
    if seen_by == "events":
        assert reason.endswith(f"after {max_wait_s:g} s")
    else:
        assert reason.endswith(f"after {max_wait_s:g} s (process {writer.pid})")
    # The reason and the status agree on when the writer was first seen.
    since = h.open_at_unsettled[str(clip)]
    assert start - 1 <= since <= time.time()
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) in reason


async def test_file_that_keeps_changing_ends_unsettled(root: Path) -> None:
    clip = root / "growing.mp4"
    write_media(clip)
    async with pipeline(root, writers=WriterCheck(), max_wait_s=1.5) as (h, _):
        appender = await Proc.start(APPENDER, str(clip))
        try:
            await appender.expect("appending")
            await h.wait_for(lambda: bool(h.unsettled), "given up")
        finally:
            await appender.finish()
    assert h.settled == []
    assert h.unsettled[0][2] == "still changing after 1.5 s"


async def test_temp_file_renamed_into_place_settles_under_its_name(
    root: Path, source: Path
) -> None:
    temp = root / ".clip.mp4.part"
    async with pipeline(root, writers=WriterCheck()) as (h, _):
        writer = await Proc.start(PAUSING_WRITER, str(source), str(temp), "wb", str(HEAD))
        try:
            await writer.expect("header")
            await asyncio.sleep(2 * QUIET_S)
            await writer.go()
            await writer.expect("closed")
        finally:
            await writer.finish()
        os.rename(temp, root / "clip.mp4")
        await h.wait_for(lambda: bool(h.settled), "settled")
        await asyncio.sleep(2 * QUIET_S)
    assert h.paths() == [str(root / "clip.mp4")]
    assert h.settled[0].fingerprint.size == SIZE


async def test_file_deleted_before_it_settles_is_never_handed_on(root: Path) -> None:
    async with pipeline(root, writers=WriterCheck()) as (h, settler):
        for i in range(3):
            clip = root / f"gone{i}.mp4"
            write_media(clip, seed=i)
            await h.wait_for(lambda c=clip: str(c) in settler._tracks, "tracked")  # type: ignore[misc]
            clip.unlink()
        await h.wait_for(lambda: settler.tracked() == 0, "forgotten")
        await asyncio.sleep(3 * QUIET_S)
    assert h.settled == []
    assert h.unsettled == []


async def test_readers_neither_block_nor_retrigger_settling(root: Path, source: Path) -> None:
    clip = root / "clip.mp4"
    async with pipeline(root) as (h, _):
        shutil.copy(source, clip)
        reader = await Proc.start(READER, str(clip))
        try:
            await reader.expect("reading")
            # The reader keeps one descriptor open and opens/closes another all along.
            await h.wait_for(lambda: bool(h.settled), "settled while being read")
            await asyncio.sleep(4 * QUIET_S)
            assert reader.proc.returncode is None
        finally:
            await reader.finish()
    assert h.paths() == [str(clip)]


async def test_special_files_are_never_handed_on(root: Path) -> None:
    async with pipeline(root, writers=WriterCheck()) as (h, settler):
        os.mkfifo(root / "pipe.mp4")
        await h.wait_for(lambda: str(root / "pipe.mp4") in settler._tracks, "tracked")
        # Opening the FIFO would block the stat thread for ever; a stat must forget it.
        await h.wait_for(lambda: settler.tracked() == 0, "forgotten")
        await asyncio.sleep(2 * QUIET_S)
    assert h.settled == []


async def test_offer_waits_while_too_many_paths_are_tracked(root: Path) -> None:
    clips = []
    for i in range(3):
        clip = root / f"{i}.mp4"
        write_media(clip, seed=i)
        clips.append(clip)
    async with pipeline(None, max_tracked=2, writers=WriterCheck()) as (h, settler):
        for clip in clips[:2]:
            await settler.offer(str(clip), str(root), Fingerprint.stat(clip))
        third = asyncio.create_task(
            settler.offer(str(clips[2]), str(root), Fingerprint.stat(clips[2]))
        )
        await asyncio.sleep(0.05)
        assert not third.done()  # fresh files need quiet_s: nothing can have settled yet
        assert settler.tracked() == 2
        await asyncio.wait_for(third, WAIT_S)
        await h.wait_for(lambda: len(h.settled) == 3, "all settled")
    assert sorted(h.paths()) == sorted(map(str, clips))


# -- the open/close rule, on event sequences the kernel can produce --------------------------


def ev(kind: str, path: Path, root: Path) -> FsEvent:
    return FsEvent(kind, str(path), str(root))  # type: ignore[arg-type]


async def test_a_reader_closing_does_not_end_a_writer(root: Path) -> None:
    clip = root / "clip.mp4"
    write_media(clip)
    async with pipeline(None) as (h, settler):
        for kind in ("created", "opened", "opened", "modified", "closed_nowrite"):
            settler.event(ev(kind, clip, root))
        await asyncio.sleep(4 * QUIET_S)
        assert h.settled == [] and str(clip) in settler.open_for_write()
        settler.event(ev("closed_write", clip, root))
        await h.wait_for(lambda: bool(h.settled), "settled after the writer's close")


async def test_a_reader_right_after_creation_is_not_taken_for_a_writer(root: Path) -> None:
    # A hard link appears (created, no open of its own) and is read at once.
    clip = root / "clip.mp4"
    write_media(clip)
    async with pipeline(None) as (h, settler):
        for kind in ("created", "opened"):
            settler.event(ev(kind, clip, root))
        assert str(clip) in settler.open_for_write()
        settler.event(ev("closed_nowrite", clip, root))
        assert settler.open_for_write() == {}
        await h.wait_for(lambda: bool(h.settled), "settled")


async def test_a_write_whose_open_was_not_seen_waits_for_its_close(root: Path) -> None:
    clip = root / "clip.mp4"
    write_media(clip)
    async with pipeline(None) as (h, settler):
        settler.event(ev("closed_nowrite", root / "other.mp4", root))  # an inotify root
        settler.event(ev("modified", clip, root))
        await asyncio.sleep(4 * QUIET_S)
        assert h.settled == [] and str(clip) in settler.open_for_write()
        settler.event(ev("closed_write", clip, root))
        await h.wait_for(lambda: bool(h.settled), "settled after the close")


async def test_after_an_overflow_proc_decides(root: Path) -> None:
    clip = root / "clip.mp4"
    write_media(clip)
    async with pipeline(None, writers=WriterCheck()) as (h, settler):
        for kind in ("created", "opened", "modified"):
            settler.event(ev(kind, clip, root))
        await asyncio.sleep(2 * QUIET_S)
        assert h.settled == []
        # The close was among the lost events; nobody has the file open any more.
        settler.event(ev("overflow", root, root))
        await h.wait_for(lambda: bool(h.settled), "settled once /proc shows no writer")


async def test_deleted_folders_and_gone_roots_are_forgotten(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    async with pipeline(None, quiet_s=60.0) as (_, settler):
        settler.event(ev("created", root / "album" / "a.mp4", root))
        settler.event(ev("created", root / "albums.mp4", root))
        settler.event(ev("created", other / "b.mp4", other))
        settler.event(ev("dir_deleted", root / "album", root))
        assert settler.tracked() == 2
        settler.event(ev("root_gone", root, root))
        assert settler.tracked() == 1
        settler.forget_root(str(other))
        assert settler.tracked() == 0


async def test_cancelling_run_drops_everything_and_releases_offers(root: Path) -> None:
    clip = root / "a.mp4"
    write_media(clip)
    settler = Settler(
        quiet_s=60.0,
        max_wait_s=120.0,
        on_settled=Harness().on_settled,
        on_unsettled=Harness().on_unsettled,
        max_tracked=1,
    )
    task = asyncio.create_task(settler.run())
    await settler.offer(str(clip), str(root), Fingerprint.stat(clip))
    waiting = asyncio.create_task(
        settler.offer(str(root / "b.mp4"), str(root), Fingerprint.stat(clip))
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.wait_for(waiting, WAIT_S)
    assert settler.tracked() == 0


async def test_a_lost_close_is_resolved_by_proc_after_a_long_quiet_spell(root: Path) -> None:
    # An overflow can cut between a file's open and its close: the settler then takes the file
    # as written for ever. After a long quiet spell (here shortened), /proc decides instead.
    path = root / "cut.mp4"
    write_media(path, size=5000)
    async with pipeline(None, writers=WriterCheck()) as (h, settler):
        settler._lost_close_s = 1.0  # 30 s or 10x quiet_s in production
        for kind in ("created", "opened", "modified"):  # ... and the closed_write was lost
            settler.event(FsEvent(kind, str(path), str(root)))
        await asyncio.sleep(QUIET_S * 2)
        assert h.paths() == [] and str(path) in settler.open_for_write()
        await h.wait_for(lambda: h.paths() == [str(path)], "handed on once /proc said no writer")


async def test_a_writer_that_keeps_the_file_open_is_still_waited_for_after_a_lost_close(
    root: Path,
) -> None:
    path = root / "held.mp4"
    writer = await Proc.start(PAUSING_WRITER_HOLDING, str(path))
    try:
        await writer.expect("holding")
        async with pipeline(None, writers=WriterCheck()) as (h, settler):
            settler._lost_close_s = 1.0
            for kind in ("created", "opened", "modified"):
                settler.event(FsEvent(kind, str(path), str(root)))
            await asyncio.sleep(3.0)
            assert h.paths() == []  # /proc shows the writer: still waiting
    finally:
        await writer.finish(kill=True)


# Writes a little, then holds the file open for writing until stdin closes.
PAUSING_WRITER_HOLDING = """
import sys
f = open(sys.argv[1], "wb")
f.write(b"\\x00\\x00\\x00\\x18ftypmp42" + b"\\x00" * 100)
f.flush()
print("holding", flush=True)
sys.stdin.read()
"""


class _WriterFinishesDuringTheWalk(WriterCheck):
    """The real /proc check, but the writer of ``path`` writes its last bytes and closes
    between the settler's stat and the walk: the race a slow walk under load opens."""

    def __init__(self, path: Path, rest: bytes) -> None:
        super().__init__()
        self.path, self.rest, self.walks = path, rest, 0

    async def writers(self, fingerprints: Mapping[str, Fingerprint]) -> dict[str, list[int]]:
        self.walks += 1
        if self.walks == 1:
            with self.path.open("ab") as f:
                f.write(self.rest)
        return await super().writers(fingerprints)


async def test_a_file_finished_while_proc_is_read_is_handed_on_with_its_final_size(
    root: Path,
) -> None:
    path = root / "late.mp4"
    body = media_bytes("mp4", SIZE)
    path.write_bytes(body[:HEAD])
    check = _WriterFinishesDuringTheWalk(path, body[HEAD:])
    async with pipeline(None, writers=check) as (h, settler):
        await settler.offer(str(path), str(root), Fingerprint.of(path.stat()))
        await h.wait_for(lambda: bool(h.settled), "handed on")
    assert check.walks >= 2  # the change sent it back to settling, and it was checked again
    assert [s.fingerprint.size for s in h.settled] == [SIZE]
