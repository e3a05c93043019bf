"""The ledger against a real SQLite file: migrations, transitions, recovery, locking, corruption."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from syncd.errors import LedgerCorrupt, LedgerLocked
from syncd.fingerprint import Fingerprint
from syncd.ledger.migrations import MIGRATIONS
from syncd.ledger.sqlite import Ledger, LedgerLock, holder_pid


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fp(size: int = 10, ino: int = 1) -> Fingerprint:
    return Fingerprint(1, ino, size, 100, 100)


@pytest.fixture
async def ledger(tmp_path: Path):
    clock = Clock()
    led = await Ledger.open(str(tmp_path / "state" / "ledger.db"), clock=clock)
    led.test_clock = clock  # type: ignore[attr-defined]
    yield led
    await led.close()


async def test_migrations_apply_once_and_file_modes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.db"
    led = await Ledger.open(str(path))
    await led.close()
    led = await Ledger.open(str(path))
    await led.close()
    with sqlite3.connect(path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM _migrations")]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert names == [m.name for m in MIGRATIONS]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_same_content_at_two_paths_is_one_content(ledger: Ledger) -> None:
    a = await ledger.record_content("/r/a.mp4", "/r", fp(ino=1), "ab" * 32, "mp4")
    b = await ledger.record_content("/r/b.mp4", "/r", fp(ino=2), "ab" * 32, "mp4")
    assert a.sha256 == b.sha256 and b.state == "pending"
    jobs = await ledger.due_jobs(10)
    assert len(jobs) == 1
    paths = [p for p, _ in await ledger.paths_of("ab" * 32)]
    assert paths == ["/r/a.mp4", "/r/b.mp4"]


async def test_upload_lifecycle_to_done(ledger: Ledger) -> None:
    sha = "cd" * 32
    await ledger.record_content("/r/x.mp4", "/r", fp(), sha, "mp4")
    (job,) = await ledger.due_jobs(5)
    assert job.path == "/r/x.mp4" and job.fingerprint == fp()
    attempt = await ledger.begin_attempt(sha, job.path, "direct")
    assert (await ledger.get_content(sha)).state == "uploading"  # type: ignore[union-attr]
    assert await ledger.due_jobs(5) == []
    await ledger.finish_upload(sha, attempt, "re_1", bytes_sent=10, http_status=200, next_poll_at=0)
    assert [c.sha256 for c in await ledger.due_polls(5)] == [sha]
    await ledger.record_status(sha, "re_1", "UPLOADING", next_poll_at=10**10)
    assert await ledger.due_polls(5) == []
    await ledger.record_status(sha, "re_1", "SUCCESS", next_poll_at=None)
    content = await ledger.get_content(sha)
    assert content is not None
    assert (content.state, content.asset_id, content.remote_status) == ("done", "re_1", "SUCCESS")
    (att,) = await ledger.attempts_of(sha)
    assert (att.outcome, att.asset_id, att.bytes_sent) == ("ok", "re_1", 10)
    assert [c.sha256 for c in await ledger.find_contents("re_1")] == [sha]
    assert [c.sha256 for c in await ledger.find_contents(sha[:8])] == [sha]


async def test_recovery_counts_possible_duplicates_and_resumes_allocations(
    ledger: Ledger,
) -> None:
    direct, signed, polled, early = "01" * 32, "02" * 32, "03" * 32, "04" * 32
    for i, sha in enumerate((direct, signed, polled, early)):
        await ledger.record_content(f"/r/{i}.mp4", "/r", fp(ino=i), sha, "mp4")
    finishing = await ledger.begin_attempt(direct, "/r/0.mp4", "direct")
    await ledger.mark_finishing(finishing)  # its last bytes were on their way
    await ledger.begin_attempt(early, "/r/3.mp4", "direct")  # still mid-body: no duplicate
    a = await ledger.begin_attempt(signed, "/r/1.mp4", "signed_url")
    await ledger.allocate(signed, "re_9", "http://x/u", 10**10, a)
    await ledger.mark_sending(signed)
    b = await ledger.begin_attempt(polled, "/r/2.mp4", "direct")
    await ledger.finish_upload(polled, b, "re_3", bytes_sent=1, http_status=200, next_poll_at=1e12)

    report = await ledger.recover()
    assert (report.interrupted_direct, report.resumed_signed_url) == (2, 1)
    d = await ledger.get_content(direct)
    s = await ledger.get_content(signed)
    p = await ledger.get_content(polled)
    assert d is not None and s is not None and p is not None
    assert (d.state, d.possible_duplicates) == ("pending", 1)
    assert (s.state, s.asset_id, s.possible_duplicates) == ("allocated", "re_9", 0)
    assert p.next_poll_at is not None and p.next_poll_at <= ledger.test_clock.now  # type: ignore[attr-defined]
    assert await ledger.possible_duplicates() == 1
    outcomes = {a.outcome for a in await ledger.attempts_of(direct)}
    assert outcomes == {"interrupted_possible_duplicate"}
    e = await ledger.get_content(early)
    assert e is not None and (e.state, e.possible_duplicates) == ("pending", 0)
    assert {a.outcome for a in await ledger.attempts_of(early)} == {"interrupted"}


async def test_supersede_keeps_the_asset_and_requeues(ledger: Ledger) -> None:
    sha = "0a" * 32
    await ledger.record_content("/r/a.mp4", "/r", fp(), sha, "mp4")
    att = await ledger.begin_attempt(sha, "/r/a.mp4", "direct")
    await ledger.supersede(
        sha, att, "re_5", sent_sha256="ff" * 32, path="/r/a.mp4", reason="bytes changed"
    )
    content = await ledger.get_content(sha)
    assert content is not None and content.state == "pending" and content.asset_id is None
    assert [c.sha256 for c in await ledger.find_contents("re_5")] == [sha]


async def test_remote_failed_reuploads_then_fails(ledger: Ledger) -> None:
    sha = "0b" * 32
    await ledger.record_content("/r/a.mp4", "/r", fp(), sha, "mp4")
    for n in range(2):
        att = await ledger.begin_attempt(sha, "/r/a.mp4", "direct")
        await ledger.finish_upload(
            sha, att, f"re_{n}", bytes_sent=1, http_status=200, next_poll_at=0
        )
        state = await ledger.remote_failed(sha, f"re_{n}", "processing FAILED", max_attempts=2)
        assert state == ("pending" if n == 0 else "failed")


async def test_gone_paths_and_missing_after_a_scan(ledger: Ledger) -> None:
    sha = "0c" * 32
    await ledger.record_content("/r/a.mp4", "/r", fp(), sha, "mp4")
    await ledger.record_content("/r/b.mp4", "/r", fp(ino=2), "0d" * 32, "mp4")
    await ledger.record_content("/r/d/c.mp4", "/r", fp(ino=3), "0e" * 32, "mp4")
    ledger.test_clock.now += 100  # type: ignore[attr-defined]
    scan_start = ledger.test_clock.now  # type: ignore[attr-defined]
    # Recorded during the scan: it was there, whatever the listing showed.
    await ledger.record_content("/r/e.mp4", "/r", fp(ino=4), "0f" * 32, "mp4")
    marked = await ledger.mark_missing_gone(
        "/r", ["/r/b.mp4", "/r/e.mp4", "/other/x.mp4"], ["/r/d"], scan_start
    )
    assert marked == 2
    states = {
        p: r.state
        for p in ("/r/b.mp4", "/r/d/c.mp4", "/r/e.mp4")
        if (r := await ledger.get_path(p))
    }
    assert states == {"/r/b.mp4": "gone", "/r/d/c.mp4": "gone", "/r/e.mp4": "present"}
    await ledger.mark_gone("/r/a.mp4")
    await ledger.touch_paths(["/r/a.mp4"])  # came back unchanged
    a = await ledger.get_path("/r/a.mp4")
    assert a is not None and a.state == "present"


async def test_non_utf8_paths_round_trip(ledger: Ledger) -> None:
    name = os.fsdecode(b"/r/caf\xe9 \n;'\"-x.mp4")
    await ledger.record_content(name, "/r", fp(), "0e" * 32, "mp4")
    rec = await ledger.get_path(name)
    assert rec is not None and os.fsencode(rec.path) == b"/r/caf\xe9 \n;'\"-x.mp4"
    assert list(await ledger.get_paths([name, "/nope"])) == [name]


async def test_view_is_queryable_with_sqlite3(ledger: Ledger, tmp_path: Path) -> None:
    await ledger.record_content("/r/a.mp4", "/r", fp(), "0f" * 32, "mp4")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3,sys; db=sqlite3.connect(sys.argv[1]); "
            "print(db.execute('SELECT path, sha256, state FROM assets').fetchall())",
            ledger.path,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "('/r/a.mp4', '" + "0f" * 32 + "', 'pending')" in out


async def test_backup_is_consistent_and_private(ledger: Ledger, tmp_path: Path) -> None:
    await ledger.record_content("/r/a.mp4", "/r", fp(), "10" * 32, "mp4")
    dest = tmp_path / "bk" / "ledger-backup.db"
    await ledger.backup(str(dest))
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    copy = await Ledger.open(str(dest), readonly=True)
    try:
        assert (await copy.get_content("10" * 32)) is not None
    finally:
        await copy.close()


def test_second_owner_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from syncd.ledger.sqlite import LedgerLock; "
            "LedgerLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
            db,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LedgerLocked) as info:
            LedgerLock(db).acquire()
        assert info.value.pid == holder.pid
        assert str(holder.pid) in str(info.value)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # The kernel dropped the lock with the process: a restart is never blocked by a stale file.
    lock = LedgerLock(db)
    lock.acquire()
    assert holder_pid(lock.path) == os.getpid()
    lock.release()
    assert holder_pid(lock.path) is None


@pytest.mark.parametrize("damage", ["random", "truncated"])
async def test_corrupt_ledger_refuses_to_start(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "ledger.db"
    if damage == "random":
        path.write_bytes(os.urandom(64 * 1024))
    else:
        led = await Ledger.open(str(path))
        for i in range(300):
            await led.record_content(f"/r/{i}.mp4", "/r", fp(ino=i), f"{i:064x}", "mp4")
        await led.close()
        data = path.read_bytes()
        # Overwrite interior pages (keep the header) so the b-trees no longer add up.
        path.write_bytes(data[:8192] + os.urandom(len(data) - 16384) + data[-8192:])
    with pytest.raises(LedgerCorrupt) as info:
        await Ledger.open(str(path))
    message = str(info.value)
    assert "corrupt" in message and f"mv {path} {path}.corrupt" in message
    # Nothing was silently recreated: the damaged file is still there for forensics.
    assert path.stat().st_size > 0


@pytest.mark.parametrize("steps", range(8))
async def test_a_write_cancelled_at_any_point_leaves_the_connection_usable(
    ledger: Ledger, steps: int
) -> None:
    # aiosqlite still runs a statement whose await was cancelled; the ledger must not be left
    # inside a transaction ("cannot start a transaction within a transaction" ever after).
    task = asyncio.create_task(ledger.record_content("/r/a.mp4", "/r", fp(), "aa" * 32, "mp4"))
    for _ in range(steps):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    content = await ledger.record_content("/r/b.mp4", "/r", fp(ino=2), "bb" * 32, "mp4")
    assert content.state == "pending"
    assert await ledger.integrity_problems() == []
    # The cancelled write either happened whole or not at all.
    a = await ledger.get_path("/r/a.mp4")
    assert (a is None) == (await ledger.get_content("aa" * 32) is None)


async def test_writes_queued_together_share_one_commit_and_a_failure_rolls_back_alone(
    ledger: Ledger,
) -> None:
    # Hold the writer's thread so that every write below is queued before it looks again:
    # they then run in one turn, in one SQLite transaction, committed once.
    release = threading.Event()
    statements: list[str] = []
    blocked = asyncio.ensure_future(
        ledger._writer.call(lambda conn: conn.set_trace_callback(statements.append) or None)
    )
    holder = asyncio.ensure_future(ledger._writer.call(lambda conn: release.wait(30)))

    def fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO kv (key, value) VALUES ('lost', '1')")
        raise ValueError("this caller's own mistake")

    writes = [
        asyncio.ensure_future(ledger.record_content("/r/a.mp4", "/r", fp(), "aa" * 32, "mp4")),
        asyncio.ensure_future(ledger._transaction(fails)),
        asyncio.ensure_future(ledger.set_kv("kept", 2)),
        asyncio.ensure_future(ledger.record_content("/r/c.mp4", "/r", fp(ino=3), "cc" * 32, "mp4")),
    ]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in writes)
    release.set()
    await blocked
    await holder
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert results[0].state == "pending" and results[3].state == "pending"  # type: ignore[union-attr]
    assert await ledger.get_kv("kept") == 2
    assert await ledger.get_kv("lost") is None
    assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ]
    found = await ledger.get_contents(["aa" * 32, "cc" * 32])
    assert sorted(found) == ["aa" * 32, "cc" * 32]


async def test_a_clean_close_is_recorded_and_anything_since_undoes_it(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    led = await Ledger.open(db)
    await led.record_content("/r/a.mp4", "/r", fp(), "aa" * 32, "mp4")
    lock = LedgerLock(db)
    lock.acquire()
    assert not lock.closed_cleanly()  # a first start knows nothing
    await led.close()
    lock.mark_clean()
    assert holder_pid(lock.path) == os.getpid()  # the pid still comes first
    lock.release()

    lock = LedgerLock(db)
    lock.acquire()
    assert lock.closed_cleanly()
    # Acquiring cleared the mark: a crash from here on leaves none behind.
    lock.release()
    lock = LedgerLock(db)
    lock.acquire()
    assert not lock.closed_cleanly()
    lock.mark_clean()
    lock.release()
    # Another writer (an sqlite3 shell) after the clean close: the mark no longer holds.
    with contextlib.closing(sqlite3.connect(db)) as other:
        other.execute("UPDATE kv SET value = value")
        other.execute("INSERT INTO kv (key, value) VALUES ('x', '1')")
        other.commit()
    lock = LedgerLock(db)
    lock.acquire()
    assert not lock.closed_cleanly()
    lock.release()


async def test_closing_twice_is_harmless(tmp_path: Path) -> None:
    led = await Ledger.open(str(tmp_path / "ledger.db"))
    await led.set_kv("k", 1)
    await led.close()
    await led.close()
    again = await Ledger.open(str(tmp_path / "ledger.db"), readonly=True)
    try:
        assert await again.get_kv("k") == 1
    finally:
        await again.close()
        await again.close()
