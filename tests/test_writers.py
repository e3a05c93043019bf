"""WriterCheck against the real /proc, with real processes holding real files open."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from samples import write_media

from syncd.fingerprint import Fingerprint
from syncd.ingest.writers import WriterCheck

# Opens the file in the given mode, says so, and holds it until its stdin closes.
HOLDER = """
import sys
f = open(sys.argv[1], sys.argv[2])
print("open", flush=True)
sys.stdin.read()
f.close()
"""


@contextmanager
def holding(path: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    """Run a process that holds ``path`` open in ``mode`` for the duration of the block."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "open"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


@pytest.fixture
def media(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    write_media(path)
    return path


async def test_finds_a_writer_and_ignores_a_reader(tmp_path: Path, media: Path) -> None:
    idle = tmp_path / "idle.mp4"
    write_media(idle, seed=1)
    check = WriterCheck()
    assert check.available
    fps = {str(media): Fingerprint.stat(media), str(idle): Fingerprint.stat(idle)}
    with holding(media, "rb"), holding(idle, "rb"):
        assert await check.writers(fps) == {}
    with holding(media, "r+b") as writer, holding(media, "rb"), holding(idle, "ab") as appender:
        found = await check.writers(fps)
    assert found == {str(media): [writer.pid], str(idle): [appender.pid]}


async def test_several_writers_are_all_listed(media: Path) -> None:
    check = WriterCheck()
    with holding(media, "ab") as one, holding(media, "r+b") as two:
        found = await check.writers({str(media): Fingerprint.stat(media)})
    assert found == {str(media): sorted([one.pid, two.pid])}


async def test_matches_by_inode_so_a_renamed_file_is_still_found(
    tmp_path: Path, media: Path
) -> None:
    check = WriterCheck()
    with holding(media, "ab") as writer:
        moved = tmp_path / "renamed.mp4"
        os.rename(media, moved)
        found = await check.writers({str(moved): Fingerprint.stat(moved)})
    assert found == {str(moved): [writer.pid]}


async def test_syncd_own_descriptors_are_not_writers(media: Path) -> None:
    check = WriterCheck()
    with open(media, "ab"):
        assert await check.writers({str(media): Fingerprint.stat(media)}) == {}


async def test_empty_question_needs_no_walk(media: Path) -> None:
    assert await WriterCheck().writers({}) == {}


async def test_unreadable_proc_turns_the_check_off_with_one_warning(
    tmp_path: Path, media: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="syncd.ingest.writers"):
        check = WriterCheck(proc_root=str(tmp_path / "no-proc"))
        with holding(media, "ab"):
            assert await check.writers({str(media): Fingerprint.stat(media)}) == {}
            assert await check.writers({str(media): Fingerprint.stat(media)}) == {}
    assert not check.available
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "quiet time" in warnings[0].getMessage()
