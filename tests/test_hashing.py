"""SHA-256 hashing in worker threads: digests, counters, and files that change underneath."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash
from samples import write_media
from unprivileged import run_unprivileged, shared_folder

from syncd.files import NotRegularFile
from syncd.fingerprint import Fingerprint
from syncd.ingest.hashing import FileChanged, Hashed, Hasher, HasherClosed, HashItem, Refused

SMALL_BUFFER = 4096
# A sparse file this big takes no disk space, and with SMALL_BUFFER reads it takes long enough
# to hash (tens of thousands of reads) for another thread to act while it is being read.
SPARSE_BYTES = 256 * 1024 * 1024
ZEROS_SHA256 = hashlib.sha256(bytes(SPARSE_BYTES)).hexdigest()


def sparse_file(path: Path, size: int = SPARSE_BYTES) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


async def wait_until_open(path: Path, deadline_s: float = 30.0) -> None:
    """Wait until this process holds a descriptor open on ``path`` (the hasher's thread)."""
    target = os.path.realpath(path)
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while loop.time() < end:
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == target:
                    return
            except OSError:
                continue  # that descriptor closed meanwhile
        await asyncio.sleep(0.001)
    raise AssertionError(f"{path} was never opened")


@pytest.mark.parametrize(
    "size", [0, 1, SMALL_BUFFER - 1, SMALL_BUFFER, SMALL_BUFFER + 1, 3 * SMALL_BUFFER + 7]
)
async def test_digest_and_chunk_checksums_equal_hashlib_and_xxh3_at_buffer_boundaries(
    tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    async with Hasher(buffer_bytes=SMALL_BUFFER) as hasher:
        result = await hasher.hash(str(path))
    # One checksum per buffer-sized chunk (one for an empty file), as the upload reads them.
    chunks = [data[i : i + SMALL_BUFFER] for i in range(0, size, SMALL_BUFFER)] or [b""]
    sums = b"".join(xxhash.xxh3_64_digest(c) for c in chunks)
    fingerprint = Fingerprint.stat(str(path))
    expected = Hashed(hashlib.sha256(data).hexdigest(), size, fingerprint, SMALL_BUFFER, sums)
    assert result == expected
    checks = result.chunks()
    assert checks is not None and checks.count == len(chunks) and checks.covers(size)


async def test_default_buffer_and_counters(tmp_path: Path) -> None:
    paths = [tmp_path / f"clip{i}.mp4" for i in range(6)]
    digests = [write_media(p, size=(1 << 20) * 2 + i, seed=i) for i, p in enumerate(paths)]
    async with Hasher(workers=2) as hasher:
        results = await asyncio.gather(*(hasher.hash(str(p)) for p in paths))
        assert [r.sha256 for r in results] == digests
        assert hasher.files_hashed == 6
        assert hasher.bytes_hashed == sum(p.stat().st_size for p in paths)
        # A refused file is not counted.
        with pytest.raises(FileNotFoundError):
            await hasher.hash(str(tmp_path / "missing.mp4"))
        assert hasher.files_hashed == 6


async def test_expected_fingerprint_is_checked_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_media(path)
    seen = Fingerprint.stat(str(path))
    async with Hasher() as hasher:
        assert (await hasher.hash(str(path), seen)).fingerprint == seen
        with path.open("ab") as f:
            f.write(b"more")
        with pytest.raises(FileChanged, match=r"changed since it was seen .*size 4096 -> 4100"):
            await hasher.hash(str(path), seen)
        assert hasher.files_hashed == 1
        assert hasher.bytes_hashed == 4096


async def test_a_batch_gives_each_file_its_own_outcome_in_order(tmp_path: Path) -> None:
    good = [tmp_path / f"clip{i}.mp4" for i in range(3)]
    digests = [write_media(p, size=100_000 + i, seed=i) for i, p in enumerate(good)]
    text = tmp_path / "notes.mp4"
    text.write_bytes(b"just some text\n" * 10_000)
    changed = tmp_path / "changed.mp4"
    write_media(changed)
    changed_seen = Fingerprint.stat(str(changed))
    with changed.open("ab") as f:
        f.write(b"more")
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    heads: dict[str, bytes] = {}

    def check(path: str, fp: Fingerprint, head: bytes) -> str | None:
        heads[path] = head
        return "content is not media" if head.startswith(b"just") else None

    items = [
        HashItem(str(good[0]), Fingerprint.stat(str(good[0]))),
        HashItem(str(tmp_path / "vanished.mp4"), None),
        HashItem(str(text), None),
        HashItem(str(good[1]), None),
        HashItem(str(changed), changed_seen),
        HashItem(str(fifo), None),
        HashItem(str(good[2]), None),
    ]
    async with Hasher(buffer_bytes=SMALL_BUFFER) as hasher:
        out = await asyncio.wait_for(hasher.hash_batch(items, check=check, head_bytes=64), 30)
        assert len(out) == len(items)
        hashed = [out[0], out[3], out[6]]
        assert all(isinstance(h, Hashed) for h in hashed)
        assert [h.sha256 for h in hashed if isinstance(h, Hashed)] == digests
        # The head the check saw is the file's first bytes; the hash still covers the whole.
        assert heads[str(good[0])] == good[0].read_bytes()[:64]
        assert isinstance(out[1], FileNotFoundError)
        assert isinstance(out[2], Refused) and out[2].reason == "content is not media"
        assert out[2].fingerprint == Fingerprint.stat(str(text))
        assert isinstance(out[4], FileChanged) and str(changed) not in heads  # never read
        assert isinstance(out[5], NotRegularFile)
        # Only what was hashed counts: the refused file was not read past its head.
        assert hasher.files_hashed == 3
        assert hasher.bytes_hashed == sum(p.stat().st_size for p in good)
    with pytest.raises(HasherClosed):
        await hasher.hash_batch(items)


async def test_file_growing_while_hashed(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "recording.mp4")
    stop = threading.Event()
    started = threading.Event()

    def append() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            while not stop.is_set():
                os.write(fd, b"x")
                started.set()
        finally:
            os.close(fd)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        assert await asyncio.to_thread(started.wait, 30)
        async with Hasher(buffer_bytes=SMALL_BUFFER) as hasher:
            with pytest.raises(FileChanged, match=r"changed while being hashed .*size"):
                await hasher.hash(str(path))
            assert hasher.files_hashed == 0
    finally:
        stop.set()
        await asyncio.to_thread(writer.join)


async def test_file_truncated_while_hashed(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "clip.mp4")
    async with Hasher(buffer_bytes=SMALL_BUFFER) as hasher:
        task = asyncio.create_task(hasher.hash(str(path)))
        await wait_until_open(path)
        os.truncate(path, 1000)
        with pytest.raises(FileChanged, match="shrank while being hashed"):
            await task


async def test_file_deleted_while_hashed(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "clip.mp4")
    async with Hasher(buffer_bytes=SMALL_BUFFER) as hasher:
        task = asyncio.create_task(hasher.hash(str(path)))
        await wait_until_open(path)
        path.unlink()
        with pytest.raises(FileNotFoundError):
            await task


async def test_file_replaced_while_hashed(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "clip.mp4")
    other = sparse_file(tmp_path / "other.mp4")
    async with Hasher(buffer_bytes=SMALL_BUFFER) as hasher:
        task = asyncio.create_task(hasher.hash(str(path)))
        await wait_until_open(path)
        os.replace(other, path)  # same size, same content, a new inode at the same path
        with pytest.raises(FileChanged, match="replaced by another file"):
            await task
        # The new file, left alone, hashes fine.
        assert (await hasher.hash(str(path))).sha256 == ZEROS_SHA256


async def test_close_stops_a_running_hash(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "clip.mp4")
    hasher = Hasher(workers=1, buffer_bytes=SMALL_BUFFER)
    try:
        task = asyncio.create_task(hasher.hash(str(path)))
        queued = asyncio.create_task(hasher.hash(str(path)))  # waits for the only worker
        await wait_until_open(path)
        hasher.close()
        with pytest.raises(HasherClosed):
            await task
        with pytest.raises(HasherClosed):
            await queued
        with pytest.raises(HasherClosed):
            await hasher.hash(str(path))
    finally:
        await hasher.aclose()


async def test_cancelling_the_caller_stops_the_thread(tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "clip.mp4", 4 * SPARSE_BYTES)
    async with Hasher(workers=1, buffer_bytes=SMALL_BUFFER) as hasher:
        task = asyncio.create_task(hasher.hash(str(path)))
        await wait_until_open(path)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The single worker is free again long before the cancelled 1 GiB hash would end.
        small = tmp_path / "small.mp4"
        digest = write_media(small)
        assert (await asyncio.wait_for(hasher.hash(str(small)), 30)).sha256 == digest
        assert hasher.files_hashed == 1


async def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    async with Hasher() as hasher:
        # A hasher that opened the FIFO would block its thread forever; the timeout turns that
        # into a failure.
        with pytest.raises(NotRegularFile, match="is not a regular file \\(it is a FIFO\\)"):
            await asyncio.wait_for(hasher.hash(str(fifo)), timeout=10)


async def test_socket_device_and_folder_are_refused(tmp_path: Path) -> None:
    sock_path = tmp_path / "clip.mp4"
    async with Hasher() as hasher:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(sock_path))
            with pytest.raises(NotRegularFile, match="a socket"):
                await asyncio.wait_for(hasher.hash(str(sock_path)), timeout=10)
        with pytest.raises(NotRegularFile, match="a character device"):
            await asyncio.wait_for(hasher.hash("/dev/zero"), timeout=10)
        with pytest.raises(NotRegularFile, match="a folder"):
            await hasher.hash(str(tmp_path))


async def test_symlinks_followed_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "real.mp4"
    digest = write_media(target)
    link = tmp_path / "link.mp4"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.mp4"
    dangling.symlink_to(tmp_path / "nowhere.mp4")
    async with Hasher() as hasher:
        with pytest.raises(NotRegularFile, match="a symlink"):
            await hasher.hash(str(link))
        result = await hasher.hash(str(link), follow_symlinks=True)
        assert result.sha256 == digest
        assert result.fingerprint == Fingerprint.stat(str(target))
        with pytest.raises(FileNotFoundError):
            await hasher.hash(str(dangling), follow_symlinks=True)


async def test_hostile_names(tmp_path: Path) -> None:
    names = [
        b"-rf --no-preserve-root.mp4",
        b"a b; rm -rf ~ 'q' \"dq\".mp4",
        b"new\nline.mp4",
        b"latin1-\xe9t\xe9.mp4",  # not UTF-8
        b"x" * 251 + b".mp4",  # 255 bytes, the longest a name can be
    ]
    async with Hasher() as hasher:
        for i, name in enumerate(names):
            raw = os.fsencode(tmp_path) + b"/" + name
            data = os.urandom(100 + i)
            with open(raw, "wb") as f:
                f.write(data)
            result = await hasher.hash(os.fsdecode(raw))
            assert result.sha256 == hashlib.sha256(data).hexdigest()
        # The error of a hostile name stays on one line.
        with pytest.raises(FileNotFoundError):
            await hasher.hash(os.fsdecode(os.fsencode(tmp_path) + b"/gone\n.mp4"))
        err = NotRegularFile(str(tmp_path / "a\nb.mp4"), "a FIFO")
        assert "\n" not in str(err)


# -- permissions: root reads everything, so the check runs as an unprivileged user --------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with shared_folder() as path:
        yield path


def test_permission_denied_on_a_file(shared_dir: Path) -> None:
    locked = shared_dir / "locked.mp4"
    write_media(locked)
    locked.chmod(0o000)
    readable = shared_dir / "readable.mp4"
    digest = write_media(readable)
    readable.chmod(0o644)

    def check() -> dict[str, object]:
        async def main() -> dict[str, object]:
            out: dict[str, object] = {}
            async with Hasher() as hasher:
                try:
                    await hasher.hash(str(locked))
                    out["locked"] = "hashed"
                except PermissionError:
                    out["locked"] = "PermissionError"
                out["readable"] = (await hasher.hash(str(readable))).sha256
            return out

        return asyncio.run(main())

    out = run_unprivileged(check)
    assert out["euid"] != 0
    assert out["locked"] == "PermissionError"
    assert out["readable"] == digest
