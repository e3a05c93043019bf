"""Source clean-up after SUCCESS and the sidecar file: every refusal of the decision, deletes
and moves on real files (one file system and across two), a file changed at the last moment,
and kill -9 at each step of a clean-up, finished or undone at the next start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from syncd.after.cleanup import (
    Facts,
    Intent,
    carry_out,
    decide,
    move_target,
    resolve_interrupted,
    temp_name,
)
from syncd.after.sidecar import sidecar_document, sidecar_path, write_sidecar
from syncd.after.stage import _intent_from, _intent_json
from syncd.fingerprint import Fingerprint

REPO = Path(__file__).resolve().parent.parent
FP = Fingerprint(1, 2, 3, 4, 5)
GOOD = Facts("/r/a/b.mp4", "/r", "done", "SUCCESS", FP, FP)


def test_keep_is_the_default_and_touches_nothing() -> None:
    assert decide(GOOD, "keep").verb == "keep"


def test_an_unchanged_file_with_a_successful_asset_is_deleted_or_moved() -> None:
    assert decide(GOOD, "delete").verb == "delete"
    moved = decide(GOOD, "move", "/done")
    assert (moved.verb, moved.target) == ("move", "/done/a/b.mp4")


@pytest.mark.parametrize(
    ("facts", "reason", "report"),
    [
        (replace(GOOD, state="uploaded", remote_status="UPLOADING"), "not finished", False),
        (replace(GOOD, state="uploaded", remote_status="WAITING"), "not finished", False),
        (replace(GOOD, state="pending", remote_status="FAILED"), "not finished", False),
        (replace(GOOD, state="failed", remote_status="FAILED"), "not finished", False),
        (replace(GOOD, state="rejected", remote_status=None), "not finished", False),
        (replace(GOOD, superseded=True), "the path now holds newer content", True),
        (replace(GOOD, root_present=False), "its root /r is not there", True),
        (replace(GOOD, current=None), "the file is no longer there", False),
        (replace(GOOD, current=FP._replace(size=4)), "changed since it was hashed (size)", True),
        (
            replace(GOOD, current=FP._replace(mtime_ns=9, ctime_ns=9)),
            "changed since it was hashed (mtime, ctime)",
            True,
        ),
        (replace(GOOD, current=FP._replace(ino=7)), "changed since it was hashed (inode)", True),
    ],
)
@pytest.mark.parametrize("action", ["delete", "move"])
def test_every_unsafe_case_keeps_the_file_and_says_why(
    facts: Facts, reason: str, report: bool, action: str
) -> None:
    decision = decide(facts, action, "/done")  # type: ignore[arg-type]
    assert decision.verb == "keep"
    assert decision.reason.startswith(reason)
    assert decision.report is report


def test_a_move_needs_a_destination_and_a_path_under_the_root() -> None:
    with pytest.raises(ValueError, match="move_to"):
        decide(GOOD, "move")
    assert decide(replace(GOOD, path="/elsewhere/x.mp4"), "move", "/done").verb == "keep"
    assert move_target("/r/x/../y.mp4", "/r/", "/done") == "/done/y.mp4"
    for outside in ("/r", "/rx/y.mp4", "/y.mp4"):
        with pytest.raises(ValueError):
            move_target(outside, "/r", "/done")


@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    clip = root / "sub" / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"x" * 1000)
    return clip


def intent_for(path: Path, verb: str, target: Path | None = None) -> Intent:
    return Intent(verb, str(path), Fingerprint.stat(path), None if target is None else str(target))  # type: ignore[arg-type]


def test_delete_removes_the_hashed_file(media: Path) -> None:
    outcome = carry_out(intent_for(media, "delete"))
    assert (outcome.done, outcome.reason) == (True, "deleted")
    assert not media.exists()


def test_a_file_written_after_it_was_hashed_is_kept_and_reported(media: Path) -> None:
    intent = intent_for(media, "delete")
    with media.open("ab") as f:
        f.write(b"more")
    outcome = carry_out(intent)
    assert not outcome.done and outcome.report
    assert outcome.reason.startswith("changed since it was hashed (size")
    assert media.exists()


def test_a_file_rewritten_with_its_old_mtime_is_still_kept(media: Path) -> None:
    intent = intent_for(media, "delete")
    st = media.stat()
    media.write_bytes(media.read_bytes().replace(b"x", b"y"))
    os.utime(media, ns=(st.st_atime_ns, st.st_mtime_ns))
    outcome = carry_out(intent)
    assert not outcome.done
    assert "ctime" in outcome.reason


def test_a_move_keeps_the_relative_path_and_the_inode(media: Path, tmp_path: Path) -> None:
    target = tmp_path / "done" / "sub" / "clip.mp4"
    inode = media.stat().st_ino
    outcome = carry_out(intent_for(media, "move", target))
    assert outcome.done and outcome.reason == f"moved to {target}"
    assert not media.exists()
    assert target.stat().st_ino == inode


def test_a_move_never_replaces_a_file_at_the_destination(media: Path, tmp_path: Path) -> None:
    target = tmp_path / "done" / "clip.mp4"
    target.parent.mkdir()
    target.write_bytes(b"someone else's")
    outcome = carry_out(intent_for(media, "move", target))
    assert not outcome.done and outcome.report
    assert outcome.reason.endswith("already exists")
    assert target.read_bytes() == b"someone else's"
    assert media.exists()


@pytest.fixture
def other_fs() -> Iterator[Path]:
    """A folder on another file system than the tests' temporary folder, when there is one."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(REPO).st_dev:
        pytest.skip("no second file system to move across")
    folder = shm / f"syncd-test-{uuid.uuid4().hex}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_move_across_file_systems_copies_then_removes(media: Path, other_fs: Path) -> None:
    data = media.read_bytes()
    mtime = media.stat().st_mtime_ns
    target = other_fs / "sub" / "clip.mp4"
    outcome = carry_out(intent_for(media, "move", target))
    assert outcome.done
    assert target.read_bytes() == data and target.stat().st_mtime_ns == mtime
    assert not media.exists()
    assert not Path(temp_name(str(target))).exists()


CRASHER = """
import sys
from syncd.after.cleanup import Intent, carry_out
from syncd.fingerprint import Fingerprint
verb, path, target = sys.argv[1], sys.argv[2], sys.argv[3] or None
carry_out(Intent(verb, path, Fingerprint(*map(int, sys.argv[4].split(","))), target))
print("survived")
"""


def crash_at(point: str, intent: Intent) -> None:
    """Run ``carry_out(intent)`` in a child that SIGKILLs itself at crash point ``point``."""
    env = {**os.environ, "SYNCD_FAILPOINTS": f"{point}:1", "PYTHONPATH": str(REPO)}
    fp = ",".join(map(str, intent.hashed))
    args = [intent.verb, intent.path, intent.target or "", fp]
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, *args], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr.decode()
    assert b"survived" not in proc.stdout


def test_kill_9_after_a_delete_is_found_finished(media: Path) -> None:
    intent = intent_for(media, "delete")
    crash_at("cleanup_unlinked", intent)
    assert resolve_interrupted(intent).result == "finished"
    assert not media.exists()


def test_kill_9_before_a_delete_finishes_it_at_the_next_start(media: Path) -> None:
    intent = intent_for(media, "delete")  # committed, then the crash: nothing done yet
    recovery = resolve_interrupted(intent)
    assert (recovery.result, recovery.reason) == ("finished", "deleted")
    assert not media.exists()


def test_a_file_changed_while_the_daemon_was_down_is_not_deleted(media: Path) -> None:
    intent = intent_for(media, "delete")
    media.write_bytes(b"new content")
    recovery = resolve_interrupted(intent)
    assert recovery.result == "undone"
    assert media.read_bytes() == b"new content"


@pytest.mark.parametrize("point", ["cleanup_placed", "cleanup_unlinked"])
def test_kill_9_during_a_move_is_finished_at_the_next_start(
    point: str, media: Path, tmp_path: Path
) -> None:
    data = media.read_bytes()
    target = tmp_path / "done" / "sub" / "clip.mp4"
    intent = intent_for(media, "move", target)
    crash_at(point, intent)
    assert target.exists()  # the crash came after the link
    assert media.exists() is (point == "cleanup_placed")
    recovery = resolve_interrupted(intent)
    assert recovery.result == "finished", recovery
    assert not media.exists()
    assert target.read_bytes() == data


@pytest.mark.parametrize("point", ["cleanup_placed", "cleanup_unlinked"])
def test_kill_9_during_a_move_across_file_systems_is_finished(
    point: str, media: Path, other_fs: Path
) -> None:
    data = media.read_bytes()
    target = other_fs / "clip.mp4"
    intent = intent_for(media, "move", target)
    crash_at(point, intent)
    recovery = resolve_interrupted(intent)
    assert recovery.result == "finished", recovery
    assert not media.exists() and target.read_bytes() == data


def test_a_moved_file_changed_before_the_restart_is_kept_and_the_copy_removed(
    media: Path, other_fs: Path
) -> None:
    target = other_fs / "clip.mp4"
    intent = intent_for(media, "move", target)
    crash_at("cleanup_placed", intent)
    media.write_bytes(b"rewritten")
    recovery = resolve_interrupted(intent)
    assert recovery.result == "undone"
    assert media.read_bytes() == b"rewritten"
    assert not target.exists()


def test_an_unfinished_copy_is_removed_and_the_move_done_again(media: Path, other_fs: Path) -> None:
    target = other_fs / "clip.mp4"
    Path(temp_name(str(target))).write_bytes(b"half")  # a crash in the middle of the copy
    intent = intent_for(media, "move", target)
    recovery = resolve_interrupted(intent)
    assert recovery.result == "finished"
    assert not Path(temp_name(str(target))).exists()
    assert target.exists() and not media.exists()


def test_the_sidecar_holds_the_asset_and_is_replaced_whole(media: Path) -> None:
    doc = sidecar_document(asset_id="re_1", sha256="ab" * 32, status="SUCCESS", uploaded_at=0.5)
    written = write_sidecar(str(media), doc)
    assert written == sidecar_path(str(media)) == f"{media}.mavi.json"
    assert json.loads(Path(written).read_text()) == {
        "asset_id": "re_1",
        "sha256": "ab" * 32,
        "status": "SUCCESS",
        "uploaded_at": "1970-01-01T00:00:00.500000Z",
    }
    write_sidecar(
        str(media), sidecar_document(asset_id="re_2", sha256="c", status="X", uploaded_at=None)
    )
    assert json.loads(Path(written).read_text())["asset_id"] == "re_2"
    assert sorted(p.name for p in media.parent.iterdir()) == ["clip.mp4", "clip.mp4.mavi.json"]


def test_a_sidecar_that_cannot_be_written_leaves_nothing_behind(media: Path) -> None:
    long_name = media.parent / ("x" * 250)  # room for the file, not for NAME.mavi.json
    with pytest.raises(OSError):
        write_sidecar(str(long_name), b"{}")
    assert sorted(p.name for p in media.parent.iterdir()) == ["clip.mp4"]


def test_a_sidecar_write_a_crash_interrupted_is_finished_by_the_next(media: Path) -> None:
    leftover = media.parent / f".{media.name}.mavi.json.syncd-tmp"
    leftover.write_bytes(b'{"half')
    write_sidecar(str(media), b"{}\n")
    assert sorted(p.name for p in media.parent.iterdir()) == ["clip.mp4", "clip.mp4.mavi.json"]
    os.symlink("/etc/passwd", leftover)
    with pytest.raises(OSError):
        write_sidecar(str(media), b"{}\n")  # never written through a planted link


def test_an_intent_keeps_a_name_that_is_not_utf8_through_the_ledger() -> None:
    odd = os.fsdecode(b"/r/caf\xe9\nx.mp4")
    intent = Intent("move", odd, FP, os.fsdecode(b"/done/caf\xe9\nx.mp4"))
    text = _intent_json(intent)
    text.encode("ascii")  # stored as plain text
    assert _intent_from(text) == intent
