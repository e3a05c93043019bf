"""The hostile-input matrix, part 1: files and folders, against the real daemon end to end.

Every case runs the whole daemon (real inotify, real SQLite, the emulator over real HTTP on
loopback) and asserts on what the ledger recorded and what the emulator received, and that the
daemon is still up and healthy afterwards. Scanner- and hasher-level versions of several cases
live in ``test_scanner.py`` and ``test_hashing.py``; here the question is whether the daemon
survives them, keeps going, loses nothing and sends nothing it should not.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, query
from pipeline_support import (
    config_data,
    make_config,
    received,
    running,
    sha256_of,
    wait_done,
    wait_for,
)
from samples import HEADERS, media_bytes, write_media

from syncd.config import DEFAULT_TEMP_PATTERNS, WatchRoot
from syncd.daemon import Daemon
from syncd.emulator import EmulatorServer
from syncd.fingerprint import Fingerprint
from syncd.ingest.pathfilter import PathFilter
from syncd.ingest.scanner import scan_root
from syncd.upload.client import LocalFileError, MaviClient


class Records(logging.Handler):
    """Every record the ``syncd`` loggers emit during a test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    def matching(self, text: str, level: int = logging.DEBUG) -> list[str]:
        return [m for m in self.messages(level) if text in m]

    def crashes(self) -> list[str]:
        """Records that carry a traceback: an internal error, never an expected outcome."""
        return [r.getMessage() for r in self.records if r.exc_info]


@pytest.fixture
def logs() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("syncd")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path


def at(folder: Path | str, name: bytes) -> str:
    """The ``os.fsdecode`` path of the entry ``name`` (raw bytes) inside ``folder``."""
    return os.fsdecode(os.fsencode(folder) + b"/" + name)


def write_raw(path: str, data: bytes) -> None:
    with open(os.fsencode(path), "wb") as f:
        f.write(data)


def raw_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_alive(d: Daemon, logs: Records | None = None) -> None:
    """The daemon is still running normally and nothing crashed along the way."""
    assert d.ready, "the daemon stopped"
    assert d.exit_code == 0
    if logs is not None:
        assert logs.crashes() == [], "an internal error was logged"


async def ledger_rows(ledger_path: str) -> list[tuple[bytes, str, str | None]]:
    """Every ``(path BLOB, state, sha256)`` row of the ledger, read by a second connection."""
    rows = await asyncio.to_thread(
        query, Path(ledger_path), "SELECT path, state, sha256 FROM paths ORDER BY path"
    )
    return [(bytes(p), s, h) for p, s, h in rows]


async def path_state(d: Daemon, path: str | Path) -> str | None:
    rec = await d.ledger.get_path(str(path))
    return None if rec is None else rec.state


async def wait_path_state(d: Daemon, path: str | Path, state: str, timeout_s: float = 30.0) -> None:
    async def reached() -> bool:
        return await path_state(d, path) == state

    await wait_for(reached, timeout_s, what=f"{os.fsencode(path)!r} {state}")


# ------------------------------------------------------------------------------------------
# Names


@dataclass(frozen=True)
class Name:
    """A hostile file name: its raw bytes and the name the API should receive for it."""

    raw: bytes
    remote: str
    label: str


NFC = unicodedata.normalize("NFC", "café.mp4").encode()
NFD = unicodedata.normalize("NFD", "café.mp4").encode()
assert NFC != NFD

NAMES: tuple[Name, ...] = (
    Name(b"with space.mp4", "with space.mp4", "space"),
    Name(b'quote\'s "double".mp4', 'quote\'s "double".mp4', "quotes"),
    Name(b'semi;colon; filename="evil.exe".mp4', 'semi;colon; filename="evil.exe".mp4', "semi"),
    Name(b"new\nline.mp4", "new\nline.mp4", "newline"),
    Name(b"crlf\r\nX-Injected: 1.mp4", "crlf\r\nX-Injected: 1.mp4", "crlf-header"),
    Name(b"-leading-dash.mp4", "-leading-dash.mp4", "dash"),
    Name(b"--help.mp4", "--help.mp4", "double-dash"),
    Name(b"n" * 251 + b".mp4", "n" * 251 + ".mp4", "255-bytes"),
    Name("é".encode() * 125 + b"x.mp4", "é" * 125 + "x.mp4", "255-bytes-utf8"),
    Name(b"latin1-\xe9t\xe9.mp4", "latin1-\ufffdt\ufffd.mp4", "not-utf8"),
    Name(b"\xff\xfe.mp4", "\ufffd\ufffd.mp4", "not-utf8-only"),
    Name(NFC, NFC.decode(), "nfc"),
    Name(NFD, NFD.decode(), "nfd"),
    Name(b"tab\tesc\x1b[31mred.mp4", "tab\tesc\x1b[31mred.mp4", "control"),
    Name(b"percent%41%2F%25.mp4", "percent%41%2F%25.mp4", "percent"),
    Name(b"emoji \xf0\x9f\x8e\xac.mp4", "emoji \U0001f3ac.mp4", "emoji"),
    Name(b"$(touch pwned) `id`.mp4", "$(touch pwned) `id`.mp4", "shell"),
    Name(b"*?[glob]{a,b}.mp4", "*?[glob]{a,b}.mp4", "glob"),
    Name(b"UPPER.MP4", "UPPER.MP4", "upper-ext"),
    Name(b" leading space.mp4", "leading space.mp4", "leading-space"),
    # The emulator, like servers that accept uploads from Windows browsers, takes a backslash
    # for a path separator and keeps what follows it: the name is sent intact all the same.
    Name(b"back\\slash.mp4", "slash.mp4", "backslash"),
)
ODD_DIR = b"dir \xe9\n;x"


@pytest.mark.parametrize(
    ("discovery", "mode"), [("scan", "direct"), ("events", "direct"), ("events", "signed_url")]
)
async def test_hostile_names_are_uploaded_and_recorded_under_their_exact_bytes(
    tmp_path: Path,
    root: Path,
    emulator: EmulatorServer,
    logs: Records,
    discovery: str,
    mode: str,
) -> None:
    """Every name reaches the ledger byte for byte and the API as one well-formed filename.

    ``scan``: the files exist before the daemon starts; ``events``: they arrive while it
    runs (inotify, including a new folder whose own name is hostile). ``signed_url``: the
    name goes in the JSON of the allocation and in the multipart part sent to storage.
    """
    files: dict[str, tuple[Name, bytes]] = {}
    for i, name in enumerate(NAMES):
        files[at(root, name.raw)] = (name, media_bytes("mp4", 3000, seed=i))
        files[at(at(root, ODD_DIR), name.raw)] = (name, media_bytes("mp4", 3000, seed=100 + i))

    def create() -> None:
        os.mkdir(os.fsencode(at(root, ODD_DIR)))
        for path, (_, data) in files.items():
            write_raw(path, data)

    cfg = make_config(tmp_path, emulator, [root], upload={"workers": 8}, api={"upload_mode": mode})
    if discovery == "scan":
        create()
    async with running(cfg, emulator.key) as d:
        if discovery == "events":
            await asyncio.to_thread(create)
        for path in files:
            await wait_done(d, Path(path), 60)
        for path, (_, data) in files.items():
            rec = await d.ledger.get_path(path)
            assert rec is not None and rec.state == "present", os.fsencode(path)
            assert rec.sha256 == raw_sha(data), os.fsencode(path)
        # The ledger's BLOBs are the on-disk bytes; nothing is known under any other name
        # (no Unicode normalisation, no lossy decoding).
        rows = await ledger_rows(cfg.ledger.path)
        assert {bytes(p): (s, h) for p, s, h in rows} == {
            os.fsencode(p): ("present", raw_sha(data)) for p, (_, data) in files.items()
        }
        assert_alive(d, logs)
    by_sha = {raw_sha(data): name for name, data in files.values()}
    sends = emulator.requests("upload" if mode == "direct" else "storage")
    assert len(sends) == len(files)
    assert all(r.status is not None and r.status < 300 and r.body_complete for r in sends)
    sha_of_asset = received(emulator)
    assert sorted(sha_of_asset.values()) == sorted(by_sha)
    # The name the API was given (the multipart part's, or the JSON of the allocation).
    named = emulator.requests("upload" if mode == "direct" else "signed_url")
    for r in named:
        assert r.asset_id is not None
        name = by_sha[sha_of_asset[r.asset_id]]
        if mode == "signed_url" and b"%" in name.raw:
            # The emulator percent-decodes the JSON original_filename as if it were a
            # multipart parameter, so "%2F" turns into a slash there (an emulator quirk).
            continue
        assert r.filename == name.remote, name.label
    # A name cannot forge or split a log line, whatever bytes it holds.
    for message in logs.messages():
        assert "\n" not in message and "\r" not in message and "\x1b" not in message, message


# ------------------------------------------------------------------------------------------
# Symlinks


@pytest.mark.parametrize("follow", [False, True], ids=["default", "follow_symlinks"])
async def test_symlinks_are_followed_only_when_configured_and_never_hang(
    tmp_path: Path, root: Path, emulator: EmulatorServer, logs: Records, follow: bool
) -> None:
    """Links to a file inside the root, outside every root, dangling, to themselves, in a
    two-link cycle, folder links back up the tree, links to a FIFO and to ``/dev/zero``;
    some exist at startup, some appear while the daemon runs. By default no link is
    followed (nothing outside the root is read); with ``follow_symlinks`` the targets are
    uploaded under the link's path, and the dangling, looping and special ones are ignored."""
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (root / "sub").mkdir()
    shas = {
        "real": write_media(root / "real.mp4", seed=1),
        "inner": write_media(root / "sub" / "inner.mp4", seed=2),
        "out": write_media(outside / "out.mp4", seed=3),
        "out2": write_media(outside / "deep" / "out2.mp4", seed=4),
        "late": write_media(outside / "late.mp4", seed=5),
    }
    os.mkfifo(outside / "fifo.mp4")
    (root / "link-inside.mp4").symlink_to(root / "real.mp4")
    (root / "link-outside.mp4").symlink_to(outside / "out.mp4")
    (root / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (root / "self-loop.mp4").symlink_to(root / "self-loop.mp4")
    (root / "cycle-a.mp4").symlink_to(root / "cycle-b.mp4")
    (root / "cycle-b.mp4").symlink_to(root / "cycle-a.mp4")
    # Two links back up the tree: a walk that follows links without remembering where it has
    # been branches at every level (2^40 paths before the kernel's link limit stops it).
    (root / "sub" / "up").symlink_to(root)
    (root / "sub" / "up-again").symlink_to(root)
    (root / "outside-dir").symlink_to(outside)
    (root / "link-fifo.mp4").symlink_to(outside / "fifo.mp4")
    (root / "link-zero.mp4").symlink_to("/dev/zero")
    cfg = make_config(
        tmp_path,
        emulator,
        [root],
        watch=[{"path": str(root), "follow_symlinks": follow}],
        upload={"hash_workers": 1},
    )
    async with running(cfg, emulator.key) as d:
        (root / "late-inside.mp4").symlink_to(root / "sub" / "inner.mp4")
        (root / "late-outside.mp4").symlink_to(outside / "late.mp4")
        (root / "late-dangling.mp4").symlink_to(tmp_path / "nowhere-either.mp4")
        (root / "newdir").mkdir()
        (root / "newdir" / "back").symlink_to(root)
        (root / "newdir" / "back-again").symlink_to(root / "sub")
        shas["new"] = write_media(root / "newdir" / "new.mp4", seed=6)
        await wait_done(d, root / "real.mp4")
        await wait_done(d, root / "sub" / "inner.mp4")
        await wait_done(d, root / "newdir" / "new.mp4")
        if follow:
            for rel in (
                "link-inside.mp4",
                "link-outside.mp4",
                "outside-dir/out.mp4",
                "outside-dir/deep/out2.mp4",
                "late-inside.mp4",
                "late-outside.mp4",
            ):
                await wait_done(d, root / rel)
        # Long enough for anything wrongly followed to be settled, hashed and sent.
        await asyncio.sleep(1.5)
        rows = await ledger_rows(cfg.ledger.path)
        present = {os.fsdecode(p)[len(str(root)) + 1 :] for p, s, _ in rows if s == "present"}
        assert_alive(d, logs)
    expected = {"real.mp4", "sub/inner.mp4", "newdir/new.mp4"}
    uploaded = {shas["real"], shas["inner"], shas["new"]}
    if follow:
        expected |= {
            "link-inside.mp4",
            "link-outside.mp4",
            "outside-dir/out.mp4",
            "outside-dir/deep/out2.mp4",
            "outside-dir/late.mp4",
            "late-inside.mp4",
            "late-outside.mp4",
        }
        uploaded |= {shas["out"], shas["out2"], shas["late"]}
    assert present == expected
    # One upload per distinct content: a link to a file already sent costs nothing.
    assert sorted(received(emulator).values()) == sorted(uploaded)
    # Nobody is left blocked opening the FIFO behind the link: a writer finds no reader.
    with pytest.raises(OSError) as info:
        os.close(os.open(outside / "fifo.mp4", os.O_WRONLY | os.O_NONBLOCK))
    assert info.value.errno == errno.ENXIO


# ------------------------------------------------------------------------------------------
# FIFOs, sockets and device nodes


def fifo_has_reader(path: Path | str) -> bool:
    """Whether some process holds the FIFO open for reading (or is blocked opening it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)
    return True


def make_specials(folder: Path, tag: str, stack: contextlib.ExitStack) -> list[Path]:
    """A FIFO, a Unix socket, /dev/zero's and loop0's device numbers, all named as media."""
    fifo = folder / f"fifo-{tag}.mp4"
    os.mkfifo(fifo)
    sock = stack.enter_context(socket.socket(socket.AF_UNIX))
    sock.bind(str(folder / f"socket-{tag}.mp4"))
    os.mknod(folder / f"zero-{tag}.mp4", stat.S_IFCHR | 0o644, os.makedev(1, 5))
    os.mknod(folder / f"block-{tag}.mkv", stat.S_IFBLK | 0o644, os.makedev(7, 0))
    weird = at(folder, f"fifo\n{tag}\xe9.mp4".encode())
    os.mkfifo(os.fsencode(weird))
    return [
        fifo,
        folder / f"socket-{tag}.mp4",
        folder / f"zero-{tag}.mp4",
        folder / f"block-{tag}.mkv",
        Path(weird),
    ]


async def test_fifos_sockets_and_devices_are_never_opened(
    tmp_path: Path, root: Path, emulator: EmulatorServer, logs: Records
) -> None:
    """Opening a FIFO for reading blocks until a writer comes (forever, here); reading
    ``/dev/zero`` never ends; reading a block device would upload a disk. With one hashing
    thread, one blocked open would stop every later file: the regular files that arrive
    after the special ones prove nothing blocked, and the FIFOs prove nobody opened them."""
    with contextlib.ExitStack() as stack:
        early = make_specials(root, "early", stack)
        write_media(root / "before.mp4", seed=1)
        cfg = make_config(tmp_path, emulator, [root], upload={"hash_workers": 1})
        async with running(cfg, emulator.key) as d:
            late = make_specials(root, "late", stack)
            for special in early + late:
                os.utime(special)  # a content event for each, as a writer would cause
            write_media(root / "after.mp4", seed=2)
            await wait_done(d, root / "before.mp4")
            await wait_done(d, root / "after.mp4")
            await asyncio.sleep(1.0)
            for special in early + late:
                assert await path_state(d, special) in (None, "skipped"), special
                if stat.S_ISFIFO(os.lstat(special).st_mode):
                    assert not fifo_has_reader(special), f"{special} was opened"
            assert_alive(d, logs)
    assert len(emulator.requests("upload")) == 2
    assert sorted(received(emulator).values()) == sorted(
        [sha256_of(root / "before.mp4"), sha256_of(root / "after.mp4")]
    )


async def test_the_client_refuses_a_fifo_or_a_swapped_file_before_sending_a_byte(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """The uploader checks a file's fingerprint, then the client opens it: whatever takes its
    place in between (a FIFO, a symlink to a file outside the roots, another file) is refused
    before the request starts, and opening a FIFO does not block."""
    path = tmp_path / "clip.mp4"
    write_media(path, seed=1)
    checked = Fingerprint.stat(str(path))
    secret = tmp_path / "elsewhere" / "private.mp4"
    secret.parent.mkdir()
    write_media(secret, seed=2)
    swaps = {
        "fifo": lambda: os.mkfifo(path),
        "symlink": lambda: path.symlink_to(secret),
        "other file": lambda: write_media(path, seed=3),
    }
    async with MaviClient(emulator.base_url, emulator.key) as client:
        for what, swap in swaps.items():
            path.unlink()
            swap()
            try:
                with pytest.raises(LocalFileError):
                    await asyncio.wait_for(
                        client.upload(str(path), filename=path.name, expected=checked), 10
                    )
            finally:
                if stat.S_ISFIFO(os.lstat(path).st_mode):
                    fifo_has_reader(path)  # its open for writing frees a reader stuck in open()
            assert emulator.requests() == [], what
        # A FIFO is refused at once even without a fingerprint to compare with.
        path.unlink()
        os.mkfifo(path)
        with pytest.raises(LocalFileError, match="not a regular file"):
            await asyncio.wait_for(client.upload(str(path), filename=path.name), 10)
    assert emulator.requests() == []


# ------------------------------------------------------------------------------------------
# What a file holds: sizes, limits, content


GIB = 1 << 30


def sparse(path: Path, size: int, ext: str = "mkv") -> None:
    """A file of ``size`` bytes that starts like real media and is a hole after that."""
    with open(path, "wb") as f:
        f.write(HEADERS[ext])
        f.truncate(size)


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("empty.mp4", lambda p: p.write_bytes(b""), "empty file"),
        ("one-byte.mp4", lambda p: p.write_bytes(b"\x00"), "content is not media"),
        ("one-byte.jpg", lambda p: p.write_bytes(b"\xff"), "content is not media"),
        ("text.mp4", lambda p: p.write_text("not a video\n" * 50), "starts with text"),
        ("over-limit.mp4", lambda p: write_media(p, size=20_001), "larger than upload.max"),
        ("ten-gib-sparse.mkv", lambda p: sparse(p, 10 * GIB), "larger than upload.max"),
    ],
    ids=["zero-byte", "one-byte", "one-byte-jpg", "text-as-mp4", "over-limit", "10GiB-sparse"],
)
async def test_files_that_must_not_cost_a_request_are_skipped_with_a_reason(
    tmp_path: Path,
    root: Path,
    emulator: EmulatorServer,
    logs: Records,
    name: str,
    make: Callable[[Path], object],
    reason: str,
) -> None:
    """Pre-flight decides from the size and the first KiB, before any hash or request: the
    10 GiB sparse file (over the 20,000-byte limit here) is never read past its head. A
    10 GiB file under the limit would be hashed and streamed like any other (the 1 GiB
    sparse upload in ``test_upload.py`` shows the daemon's memory stays flat)."""
    cfg = make_config(tmp_path, emulator, [root], upload={"max_file_bytes": 20_000})
    async with running(cfg, emulator.key) as d:
        await asyncio.to_thread(make, root / name)
        write_media(root / "fine.mp4", seed=7)
        await wait_path_state(d, root / name, "skipped")
        rec = await d.ledger.get_path(str(root / name))
        assert rec is not None and rec.reason is not None and reason in rec.reason
        await wait_done(d, root / "fine.mp4")
        assert d.hasher.bytes_hashed == (root / "fine.mp4").stat().st_size
        assert_alive(d, logs)
    assert [r.filename for r in emulator.requests("upload")] == ["fine.mp4"]
    assert len(logs.matching(f"skipping {root / name}", logging.INFO)) == 1


# ------------------------------------------------------------------------------------------
# Files that change under the daemon


@pytest.mark.parametrize("change", ["truncated", "replaced", "deleted"])
async def test_file_changed_while_being_hashed(
    tmp_path: Path, root: Path, emulator: EmulatorServer, logs: Records, change: str
) -> None:
    """A 2 GiB sparse file keeps the hasher busy for a good half second; the change lands
    while it reads. Truncated or replaced: the digest is thrown away and what the path holds
    in the end is uploaded, once. Deleted: the path is gone and nothing is sent."""
    path = root / "big.mkv"
    sparse(path, 2 * GIB)
    replacement = tmp_path / "replacement.mkv"
    new_sha = write_media(replacement, size=50_000, seed=9)
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        await wait_for(lambda: d.hasher._jobs, 30, 0.005, what="hashing started")
        if change == "truncated":
            os.truncate(path, 10_000)
            new_sha = sha256_of(path)
        elif change == "replaced":
            os.replace(replacement, path)  # a new inode under the same name
        else:
            path.unlink()
        if change == "deleted":
            await wait_for(lambda: not d.ingest.hashing, 30, what="hashing over")
            await asyncio.sleep(0.5)
            # Never recorded (it was found by the startup scan and never hashed whole).
            assert await path_state(d, path) in (None, "gone")
        else:
            asset = await wait_done(d, path)
            assert received(emulator)[asset] == new_sha
        assert_alive(d, logs)
    expected = [] if change == "deleted" else [new_sha]
    assert sorted(received(emulator).values()) == expected
    assert len(emulator.requests("upload")) == len(expected)


@pytest.mark.parametrize("change", ["truncated", "replaced", "deleted"])
async def test_file_changed_while_being_uploaded(
    tmp_path: Path, root: Path, emulator: EmulatorServer, logs: Records, change: str
) -> None:
    """The emulator holds the request for two seconds before reading the 32 MB body, so the
    client is mid-body when the file changes. Truncated: the body is cut short (no asset is
    created from it) and the new content is uploaded. Replaced or deleted: the open file
    still delivers the old bytes whole; that asset is kept in the ledger as superseded (never
    as the content's, never lost), and a replacement is uploaded in its own right."""
    emulator.add_faults({"endpoint": "upload", "latency_s": 2.0, "count": 1})
    path = root / "clip.mp4"
    old_sha = write_media(path, size=32_000_000, seed=1)
    replacement = tmp_path / "replacement.mp4"
    new_sha = write_media(replacement, size=60_000, seed=2)
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        await wait_for(lambda: emulator.requests("upload"), 30, what="upload started")
        if change == "truncated":
            os.truncate(path, 20_000)
            new_sha = sha256_of(path)
        elif change == "replaced":
            os.replace(replacement, path)
        else:
            path.unlink()
        if change == "deleted":
            await wait_path_state(d, path, "gone")
            await wait_for(lambda: not d.uploader.state.in_flight, 30, what="upload over")
            await asyncio.sleep(0.5)
        else:
            asset = await wait_done(d, path)
            assert received(emulator)[asset] == new_sha
        # A replacement may be sent and done before the old upload's answer comes.
        await wait_for(lambda: not d.uploader.state.in_flight, 30, what="uploads over")
        old = await d.ledger.get_content(old_sha)
        assert old is not None and old.asset_id is None and old.state != "done"
        superseded = {a for a, *_ in await d.ledger.superseded_of(old_sha)}
        assert_alive(d, logs)
    first = emulator.requests("upload")[0]
    if change == "truncated":
        assert first.asset_id is None and not first.body_complete
        assert superseded == set()
    else:
        # The old bytes arrived whole: their asset exists and the ledger keeps its id.
        assert first.asset_id is not None and received(emulator)[first.asset_id] == old_sha
        assert superseded == {first.asset_id}
    # Every asset the emulator holds is known to the ledger, and holds what the ledger says.
    for asset_id, sha in received(emulator).items():
        assert sha in (old_sha, new_sha)
        assert (asset_id in superseded) == (sha == old_sha)


# ------------------------------------------------------------------------------------------
# Deep trees and roots that misbehave


async def test_a_folder_200_levels_deep(
    tmp_path: Path, root: Path, emulator: EmulatorServer, logs: Records
) -> None:
    """200 nested folders: one file at the bottom found by the startup scan, one written
    into the existing bottom folder while the daemon runs (inotify watches all 200 levels),
    and a second 200-level chain created at once with a file at its bottom (a new folder
    event, then a scan of that folder)."""
    deep = root.joinpath(*(["d"] * 200))
    deep.mkdir(parents=True)
    scanned = write_media(deep / "scanned.mp4", seed=1)
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        evented = write_media(deep / "evented.mp4", seed=2)
        chain = root.joinpath(*(["e"] * 200))
        await asyncio.to_thread(chain.mkdir, parents=True)
        chained = write_media(chain / "chained.mp4", seed=3)
        for path in (deep / "scanned.mp4", deep / "evented.mp4", chain / "chained.mp4"):
            await wait_done(d, path)
        assert_alive(d, logs)
    assert sorted(received(emulator).values()) == sorted([scanned, evented, chained])


@pytest.fixture
def quick_root_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon looks at unavailable roots every 0.5 s instead of every 10 s."""
    import syncd.ingest.intake

    monkeypatch.setattr(syncd.ingest.intake, "ROOT_CHECK_S", 0.5)


async def test_a_root_that_is_a_file_is_reported_once_and_used_once_it_is_a_folder(
    tmp_path: Path, root: Path, emulator: EmulatorServer, logs: Records, quick_root_checks: None
) -> None:
    odd = tmp_path / "not-a-folder"
    odd.write_bytes(b"I am a file")
    cfg = make_config(tmp_path, emulator, [odd, root])
    async with running(cfg, emulator.key) as d:
        write_media(root / "fine.mp4", seed=1)
        await wait_done(d, root / "fine.mp4")
        assert str(odd) in d.health().reason
        await asyncio.sleep(1.5)  # three checks of the odd root
        errors = logs.matching(str(odd), logging.ERROR)
        assert len(errors) == 1 and "not a folder" in errors[0], errors
        odd.unlink()
        odd.mkdir()
        write_media(odd / "late.mp4", seed=2)
        await wait_done(d, odd / "late.mp4")
        assert str(odd) not in d.health().reason
        assert_alive(d, logs)
    assert len(emulator.requests("upload")) == 2


@pytest.mark.parametrize("how", ["deleted", "moved_away"])
async def test_a_root_deleted_or_moved_away_and_recreated(
    tmp_path: Path,
    root: Path,
    emulator: EmulatorServer,
    logs: Records,
    quick_root_checks: None,
    how: str,
) -> None:
    """``rm -rf``: the files really are deleted (inotify reports each), the root is reported
    missing and the other root carries on. Moved away: the root is reported, and its files
    are *not* marked gone while it is missing. Either way, a folder created at the same path
    is watched and scanned, and what is not in it is gone."""
    other = tmp_path / "other"
    other.mkdir()
    write_media(root / "before.mp4", seed=1)
    cfg = make_config(tmp_path, emulator, [root, other])
    async with running(cfg, emulator.key) as d:
        await wait_done(d, root / "before.mp4")
        if how == "deleted":
            await asyncio.to_thread(shutil.rmtree, root)
        else:
            root.rename(tmp_path / "moved")
        await wait_for(lambda: str(root) in d.health().reason, 30, what="root reported")
        write_media(other / "meanwhile.mp4", seed=2)
        await wait_done(d, other / "meanwhile.mp4")
        await asyncio.sleep(1.0)  # two root checks
        expected = "gone" if how == "deleted" else "present"
        assert await path_state(d, root / "before.mp4") == expected
        root.mkdir()
        write_media(root / "after.mp4", seed=3)
        await wait_done(d, root / "after.mp4")
        await wait_path_state(d, root / "before.mp4", "gone")
        assert str(root) not in d.health().reason
        assert_alive(d, logs)
    # Reported once, with what happened and what the daemon does about it.
    (reported,) = logs.matching(f"watched folder {root} ", logging.WARNING)
    assert "is gone" in reported and "not taken as deleted" in reported
    assert len(emulator.requests("upload")) == 3


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """An empty folder to mount tmpfs file systems on; unmounted whatever happens."""
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        yield path
    finally:
        while os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], check=True)


def mount_tmpfs(path: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "syncd-hostile", str(path)], check=True)


async def test_a_root_whose_mount_disappears_and_comes_back(
    tmp_path: Path,
    mount_point: Path,
    emulator: EmulatorServer,
    logs: Records,
    quick_root_checks: None,
) -> None:
    """A real tmpfs is unmounted under the daemon: the empty mount point left behind is not
    the root, so no file is marked gone and the daemon stays up; mounted again (a new file
    system with the same files and one more), the root is rescanned, the same contents cost
    no upload, the new file is uploaded."""
    mount_tmpfs(mount_point)
    shas = [write_media(mount_point / f"{i}.mp4", seed=i) for i in range(3)]
    cfg = make_config(tmp_path, emulator, [mount_point])
    async with running(cfg, emulator.key) as d:
        for i in range(3):
            await wait_done(d, mount_point / f"{i}.mp4")
        await asyncio.to_thread(subprocess.run, ["umount", str(mount_point)], check=True)
        await wait_for(lambda: str(mount_point) in d.health().reason, 30, what="reported")
        await asyncio.sleep(1.5)  # several root checks and a would-be sweep
        for i in range(3):
            assert await path_state(d, mount_point / f"{i}.mp4") == "present"
        assert_alive(d)
        mount_tmpfs(mount_point)
        for i in range(3):
            write_media(mount_point / f"{i}.mp4", seed=i)
        new = write_media(mount_point / "new.mp4", seed=9)
        await wait_done(d, mount_point / "new.mp4")
        for i in range(3):
            await wait_done(d, mount_point / f"{i}.mp4")
        assert str(mount_point) not in d.health().reason
        assert_alive(d, logs)
    assert sorted(received(emulator).values()) == sorted([*shas, new])


# ------------------------------------------------------------------------------------------
# Many files at once

# Writes N small JPEGs with K distinct contents, as fast as one process can.
BURST_WRITER = r"""
import os, sys
root, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
head = bytes.fromhex(sys.argv[4])
for i in range(n):
    fd = os.open(f"{root}/burst{i:06d}.jpg", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, head + (i % k).to_bytes(4, "big") * 64)
    os.close(fd)
"""


async def write_burst(root: Path, n: int, distinct: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BURST_WRITER, str(root), str(n), str(distinct), HEADERS["jpg"].hex()
    )
    assert await asyncio.wait_for(proc.wait(), 120) == 0


async def test_one_hundred_thousand_files_in_one_folder_are_walked_once_in_batches(
    mount_point: Path,
) -> None:
    """The scan side of a folder of 100,000 files (on tmpfs, so creating them is quick):
    every file reported exactly once, in bounded batches. The daemon-level counterpart is the
    burst test below (6,000 files in one folder, end to end)."""
    mount_tmpfs(mount_point)
    await write_burst(mount_point, 100_000, 1)
    cfg = WatchRoot(str(mount_point))
    batches: list[int] = []
    seen: set[str] = set()
    walker = scan_root(cfg, PathFilter(cfg, DEFAULT_TEMP_PATTERNS), batch_size=1000)
    async with contextlib.aclosing(walker) as stream:
        async for batch in stream:
            batches.append(len(batch))
            seen.update(e.path for e in batch)
    assert len(seen) == sum(batches) == 100_000
    assert max(batches) <= 1000


async def test_a_burst_that_overflows_the_inotify_queue_is_recovered_by_the_rescan(
    tmp_path: Path, mount_point: Path, emulator: EmulatorServer
) -> None:
    """6,000 files land in one folder while the daemon is stopped (SIGSTOP, as a daemon
    starved of CPU would be): at least three events each (created, modified, closed), more
    than the kernel's queue holds (16,384 by default; checked below), so the queue overflows
    for certain, in the middle of some file's events. The daemon says so in one line,
    rescans, and every file is recorded with its content (none is left waiting as if still
    being written); each distinct content is uploaded once. A real subprocess daemon at info
    level, on a tmpfs root.

    Size: 20,000 files take about a minute end to end on a quiet 2-core machine (some 300
    new files a second, each settled, hashed and recorded) and much longer on a loaded one,
    so the test uses 6,000."""
    n, distinct = 6_000, 120
    queue = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    assert 3 * n > queue, f"fs.inotify.max_queued_events={queue}: {n} files cannot overflow it"
    mount_tmpfs(mount_point)
    data = config_data(tmp_path, emulator, [mount_point], upload={"workers": 8})
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    ledger = tmp_path / "state" / "ledger.db"
    # DaemonProcess insists on debug logs; a line per file costs more than the file itself.
    cfg_text = daemon.cfg_file.read_text().replace("level: debug", "level: info")
    daemon.cfg_file.write_text(cfg_text)
    await daemon.start()
    try:
        daemon.signal(signal.SIGSTOP)
        try:
            await write_burst(mount_point, n, distinct)
        finally:
            daemon.signal(signal.SIGCONT)

        def recorded() -> bool:
            rows = query(
                ledger,
                "SELECT count(*) FROM paths WHERE state = 'present' AND sha256 IS NOT NULL",
            )
            return int(rows[0][0]) == n

        await wait_for(recorded, 150, 0.5, what=f"{n} files recorded")

        def uploaded() -> bool:
            rows = query(ledger, "SELECT count(*) FROM contents WHERE state = 'done'")
            return int(rows[0][0]) == distinct

        await wait_for(uploaded, 60, 0.5, what="every content done")
        assert daemon.alive
        overflows = [m for m in daemon.messages() if "inotify queue overflow" in m]
        assert len(overflows) == 1 and "rescanning" in overflows[0]
    finally:
        assert await daemon.stop() == 0
    rows = query(ledger, "SELECT path, sha256 FROM paths ORDER BY path")
    assert len(rows) == n
    expected = {k: raw_sha(HEADERS["jpg"] + k.to_bytes(4, "big") * 64) for k in range(distinct)}
    for i, (path, sha) in enumerate(rows):
        assert bytes(path) == os.fsencode(mount_point / f"burst{i:06d}.jpg")
        assert sha == expected[i % distinct]
    assert len(emulator.requests("upload")) == distinct
    assert sorted(received(emulator).values()) == sorted(expected.values())


# ------------------------------------------------------------------------------------------
# Permission denied

# Runs what follows without the two capabilities that let root read anything, so that file
# modes apply to it as to any other user; its interpreter and the venv stay readable (they
# belong to root, and their owner bits allow it).
WITHOUT_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


class UnprivilegedDaemon(DaemonProcess):
    """``syncd run`` that file permissions apply to, even though the tests run as root."""

    wrapper = tuple(WITHOUT_DAC)


def json_log(path: Path) -> list[tuple[str, str]]:
    """``(level, msg)`` of every JSON line a subprocess daemon logged."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            out.append((str(record["level"]), str(record["msg"])))
    return out


def ledger_row(ledger: Path, path: Path) -> tuple[str, str | None, str | None] | None:
    rows = query(
        ledger, "SELECT state, sha256, reason FROM paths WHERE path = ?", (os.fsencode(path),)
    )
    return None if not rows else (rows[0][0], rows[0][1], rows[0][2])


async def test_permission_denied_on_a_file_and_a_folder_is_logged_once_and_retried(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    """A file and a folder the daemon may not read: one warning each, the file recorded as
    ``error`` with the reason, everything else uploaded; once they are made readable, the
    periodic rescan (every second here) picks both up. The daemon runs as root without
    ``CAP_DAC_OVERRIDE``/``CAP_DAC_READ_SEARCH``, so the kernel applies the modes to it."""
    write_media(root / "fine.mp4", seed=1)
    locked = root / "locked.mp4"
    write_media(locked, seed=2)
    locked.chmod(0)
    closed = root / "closed"
    closed.mkdir()
    inside = [write_media(closed / f"{i}.mp4", seed=10 + i) for i in range(2)]
    closed.chmod(0)
    data = config_data(tmp_path, emulator, [root], scan={"rescan_interval_s": 1})
    daemon = UnprivilegedDaemon(data, tmp_path, emulator.key)
    ledger = tmp_path / "state" / "ledger.db"
    await daemon.start()
    try:

        def state(path: Path) -> str | None:
            row = ledger_row(ledger, path)
            return None if row is None else row[0]

        await wait_for(lambda: state(locked) == "error", 30, what="locked.mp4 recorded")
        row = ledger_row(ledger, locked)
        assert row is not None and row[2] is not None and "Permission denied" in row[2]
        await wait_for(lambda: len(emulator.requests("upload")) == 1, 30, what="fine.mp4")
        await asyncio.sleep(3.5)  # three more rescans meet both again
        assert daemon.alive
        warnings = [m for lvl, m in json_log(daemon.log_path) if lvl == "warning"]
        warnings = [m for m in warnings if "Permission denied" in m]
        assert len([m for m in warnings if "locked.mp4" in m]) == 1, warnings
        assert len([m for m in warnings if str(closed) in m]) == 1, warnings
        locked.chmod(0o644)
        closed.chmod(0o755)
        await wait_for(lambda: len(emulator.requests("upload")) == 4, 30, what="retried")
        assert state(locked) == "present"
    finally:
        closed.chmod(0o755)
        assert await daemon.stop() == 0
    assert sorted(received(emulator).values()) == sorted(
        [sha256_of(root / "fine.mp4"), sha256_of(locked), *inside]
    )


async def test_a_folder_that_becomes_unreadable_keeps_its_files_and_stays_quiet(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    """Files already recorded in a folder that then becomes unreadable are not deleted ones:
    the rescan that cannot list the folder must not mark them gone, and a content waiting to
    be uploaded from it is retried without a warning per retry. Readable again, it goes."""
    later = root / "later"
    later.mkdir()
    write_media(later / "seen.mp4", seed=1)
    pending = write_media(later / "pending.mp4", seed=2)
    emulator.add_faults(
        {"endpoint": "upload", "filename": "pending.mp4", "status": 500, "count": 10_000}
    )
    data = config_data(
        tmp_path,
        emulator,
        [root],
        scan={"rescan_interval_s": 1},
        upload={"max_attempts": 1000, "backoff_max_s": 0.5},
    )
    daemon = UnprivilegedDaemon(data, tmp_path, emulator.key)
    ledger = tmp_path / "state" / "ledger.db"
    await daemon.start()
    try:

        def state(name: str) -> str | None:
            row = ledger_row(ledger, later / name)
            return None if row is None else row[0]

        await wait_for(lambda: received(emulator), 30, what="seen.mp4 uploaded")
        await wait_for(
            lambda: len(emulator.requests("upload")) >= 3, 30, what="pending.mp4 refused"
        )
        later.chmod(0)
        since = len(json_log(daemon.log_path))
        await asyncio.sleep(3.5)  # three rescans, several upload retries
        assert daemon.alive
        assert (state("seen.mp4"), state("pending.mp4")) == ("present", "present")
        news = [m for lvl, m in json_log(daemon.log_path)[since:] if lvl in ("warning", "error")]
        assert len([m for m in news if "later" in m]) <= 2, news
        emulator.clear_faults()
        later.chmod(0o755)
        await wait_for(lambda: pending in received(emulator).values(), 30, what="uploaded")
    finally:
        later.chmod(0o755)
        assert await daemon.stop() == 0
