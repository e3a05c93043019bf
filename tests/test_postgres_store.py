"""The PostgreSQL (fleet) ledger against a private PostgreSQL server: what only a shared ledger
has to do. Two store instances with two host names stand for two hosts of one fleet."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pg_support import PgServer
from pipeline_support import syncd_cmd

from syncd.errors import ClaimLost, LedgerError, LedgerUnreachable
from syncd.fingerprint import Fingerprint
from syncd.ledger.postgres import PostgresLedger, display_url
from syncd.ledger.postgres_migrations import MIGRATIONS
from syncd.ledger.sqlite import Ledger, LedgerLock

SHA = "ab" * 32
OTHER = "cd" * 32
THIRD = "ef" * 32


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fp(size: int = 10, ino: int = 1) -> Fingerprint:
    return Fingerprint(1, ino, size, 100, 100)


OpenStore = Callable[..., Awaitable[PostgresLedger]]


@pytest.fixture
async def open_store(pg_url: str) -> AsyncIterator[OpenStore]:
    """Factory: ``await open_store(host, **options)`` opens a store on this test's database
    as that host; every store is closed at teardown."""
    stores: list[PostgresLedger] = []

    async def make(host: str, **options: Any) -> PostgresLedger:
        options.setdefault("clock", Clock())
        store = await PostgresLedger.open(pg_url, host=host, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def wait_until_expired(store: PostgresLedger, sha256: str) -> None:
    """Wait (on the server's clock) until the claim on ``sha256`` has expired."""
    for _ in range(200):
        _, left = await store.claimed_by(sha256)
        if left is None or left < 0:
            return
        await asyncio.sleep(max(0.02, left + 0.02))
    raise AssertionError("the lease never expired")


# ------------------------------------------------------------------------- schema


async def test_migrations_apply_once_and_are_recorded(open_store: OpenStore, pg_url: str) -> None:
    a = await open_store("a")
    await open_store("b")  # a second host on a migrated database applies nothing
    conn = await asyncpg.connect(pg_url)
    try:
        names = [r[0] for r in await conn.fetch("SELECT name FROM _migrations ORDER BY name")]
    finally:
        await conn.close()
    assert names == [m.name for m in MIGRATIONS]
    assert await a.integrity_problems() == []


async def test_hosts_starting_together_migrate_once(pg_url: str) -> None:
    stores = await asyncio.gather(
        *(PostgresLedger.open(pg_url, host=f"h{i}", renew_every_s=3600) for i in range(4))
    )
    try:
        conn = await asyncpg.connect(pg_url)
        try:
            count = await conn.fetchval("SELECT count(*) FROM _migrations")
        finally:
            await conn.close()
        assert count == len(MIGRATIONS)
    finally:
        for store in stores:
            await store.close()


async def test_the_assets_view_shows_paths_that_are_not_utf8(open_store: OpenStore) -> None:
    store = await open_store("a")
    name = "/r/caf\udce9.mp4"  # the byte 0xe9 alone: not UTF-8
    await store.record_content(name, "/r", fp(), SHA, "mp4")
    await store.record_content("/r/ok.mp4", "/r", fp(ino=2), OTHER, "mp4")
    conn = await asyncpg.connect(store.url)
    try:
        rows = await conn.fetch("SELECT host, path, state FROM assets ORDER BY path")
    finally:
        await conn.close()
    assert [(r["host"], r["state"]) for r in rows] == [("a", "pending"), ("a", "pending")]
    assert {r["path"] for r in rows} == {"/r/caf\\351.mp4", "/r/ok.mp4"}


async def test_a_password_never_shows_in_messages() -> None:
    assert display_url("postgresql://syncd:s3cret@db:5432/x") == "postgresql://syncd@db:5432/x"
    with pytest.raises(LedgerUnreachable) as info:
        await PostgresLedger.open(
            "postgresql://syncd:s3cret@127.0.0.1:1/x", host="a", connect_timeout_s=2
        )
    assert "s3cret" not in str(info.value)
    assert "unreachable" in str(info.value)


async def test_an_unknown_database_is_a_ledger_error(postgres: PgServer) -> None:
    with pytest.raises(LedgerError) as info:
        await PostgresLedger.open(postgres.url("no_such_db"), host="a")
    assert not isinstance(info.value, LedgerUnreachable)
    assert "no_such_db" in str(info.value)


# ------------------------------------------------------------------------- one host


async def test_lifecycle_to_done_on_one_host(open_store: OpenStore) -> None:
    store = await open_store("a")
    await store.record_content("/r/x.mp4", "/r", fp(), SHA, "mp4")
    (job,) = await store.due_jobs(5)
    assert job.path == "/r/x.mp4" and job.fingerprint == fp()
    attempt = await store.begin_attempt(SHA, "/r/x.mp4", "direct")
    assert await store.due_jobs(5) == []
    await store.mark_finishing(attempt)
    await store.finish_upload(SHA, attempt, "re_1", bytes_sent=10, http_status=200, next_poll_at=0)
    assert await store.claimed_by(SHA) == (None, None)
    assert [c.sha256 for c in await store.due_polls(5)] == [SHA]
    await store.record_status(SHA, "re_1", "SUCCESS", next_poll_at=None)
    content = await store.get_content(SHA)
    assert content is not None and content.state == "done" and content.asset_id == "re_1"
    assert [a.outcome for a in await store.attempts_of(SHA)] == ["ok"]
    assert (await store.counts())["contents"]["done"] == 1
    assert [c.sha256 for c in await store.find_contents("re_1")] == [SHA]
    assert [c.sha256 for c in await store.find_contents(SHA[:6])] == [SHA]


async def test_recover_after_a_crash_counts_a_finishing_direct_upload(
    open_store: OpenStore,
) -> None:
    store = await open_store("a")
    await store.record_content("/r/x.mp4", "/r", fp(), SHA, "mp4")
    await store.record_content("/r/y.mp4", "/r", fp(ino=2), OTHER, "mp4")
    await store.due_jobs(5)
    first = await store.begin_attempt(SHA, "/r/x.mp4", "direct")
    await store.mark_finishing(first)
    await store.begin_attempt(OTHER, "/r/y.mp4", "direct")
    store.terminate()  # killed: nothing released
    again = await open_store("a")
    report = await again.recover()
    assert report.interrupted_direct == 2
    assert await again.possible_duplicates() == 1
    outcomes = sorted(a.outcome or "" for a in await again.attempts_of(SHA))
    assert outcomes == ["interrupted_possible_duplicate"]
    assert {j.content.sha256 for j in await again.due_jobs(5)} == {SHA, OTHER}


async def test_scan_reader_answers_from_the_walker_thread(open_store: OpenStore) -> None:
    store = await open_store("a")
    await store.record_content("/r/d/x.mp4", "/r", fp(), SHA, "mp4")
    await store.record_content("/r/d/sub/y.mp4", "/r", fp(ino=2), OTHER, "mp4")
    await store.record_path_state("/r/d/u.mp4", "/r", "unsettled", "still open")
    await store.record_content("/r/d/gone.mp4", "/r", fp(ino=3), SHA, "mp4")
    await store.mark_gone("/r/d/gone.mp4")

    def walk() -> tuple[dict[str, Any], list[str]]:
        reader = store.path_reader()
        try:
            return reader.folder("/r/d")
        finally:
            reader.close()

    files, subdirs = await asyncio.to_thread(walk)
    assert files == {"x.mp4": tuple(fp()), "u.mp4": None}
    assert subdirs == ["sub"]


# ------------------------------------------------------------------------- the fleet


async def test_content_is_claimed_by_one_host_only(open_store: OpenStore) -> None:
    a = await open_store("a")
    b = await open_store("b")
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await b.record_content("/b/x.mp4", "/b", fp(), SHA, "mp4")
    jobs_a, jobs_b = await asyncio.gather(a.due_jobs(5), b.due_jobs(5))
    assert len(jobs_a) + len(jobs_b) == 1
    winner, loser = (a, b) if jobs_a else (b, a)
    job = (jobs_a or jobs_b)[0]
    assert job.path == f"/{winner.host}/x.mp4"  # each host sends its own copy of the bytes
    assert await loser.due_jobs(5) == []
    # Nothing to wake up for before the winner's lease would expire.
    assert await loser.next_due_at() == pytest.approx(1_700_000_000.0 + 600, abs=5)
    assert await winner.claimed_by(SHA) == ("a" if winner is a else "b", pytest.approx(600, 5))
    with pytest.raises(ClaimLost, match="claimed by host"):
        await loser.begin_attempt(SHA, f"/{loser.host}/x.mp4", "direct")


async def test_many_contents_are_split_between_hosts_without_overlap(
    open_store: OpenStore,
) -> None:
    hosts = [await open_store(f"h{i}") for i in range(3)]
    shas = [f"{i:064x}" for i in range(30)]
    for host in hosts:
        for i, sha in enumerate(shas):
            await host.record_content(f"/m/{i}.mp4", "/m", fp(ino=i + 1), sha, "mp4")

    async def claim_all(host: PostgresLedger) -> set[str]:
        mine: set[str] = set()  # what this host has in flight, as the uploader passes it
        while jobs := await host.due_jobs(4, exclude=mine):
            mine |= {j.content.sha256 for j in jobs}
        return mine

    results = await asyncio.gather(*(claim_all(h) for h in hosts))
    assert sum(len(r) for r in results) == len(set().union(*results)) == 30


async def test_a_second_host_records_its_path_and_shares_the_asset_id(
    open_store: OpenStore,
) -> None:
    a = await open_store("a")
    b = await open_store("b")
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await a.due_jobs(1)
    attempt = await a.begin_attempt(SHA, "/a/x.mp4", "direct")
    await a.finish_upload(SHA, attempt, "re_7", bytes_sent=10, http_status=200, next_poll_at=0)
    await a.record_status(SHA, "re_7", "SUCCESS", next_poll_at=None)
    content = await b.record_content("/b/copy.mp4", "/b", fp(), SHA, "mp4")
    assert content.state == "done" and content.asset_id == "re_7"
    assert await b.due_jobs(5) == []
    assert await b.unfinished_count() == 0
    assert await b.hosts_of(SHA) == [("a", "/a/x.mp4"), ("b", "/b/copy.mp4")]
    assert len(await b.attempts_of(SHA)) == 1  # uploaded once for the fleet
    path = await b.get_path("/b/copy.mp4")
    assert path is not None and path.sha256 == SHA and path.state == "present"
    assert await b.get_path("/a/x.mp4") is None  # paths are per host


async def test_an_expired_lease_hands_the_claim_over(open_store: OpenStore) -> None:
    # Host a claims and then stops renewing (frozen or killed); b takes the content over.
    a = await open_store("a", lease_s=0.5, renew_every_s=3600)
    b = await open_store("b", lease_s=30)
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await b.record_content("/b/x.mp4", "/b", fp(), SHA, "mp4")
    assert len(await a.due_jobs(1)) == 1
    assert await b.due_jobs(1) == []
    await wait_until_expired(a, SHA)
    (job,) = await b.due_jobs(1)
    assert job.path == "/b/x.mp4"
    assert (await b.claimed_by(SHA))[0] == "b"
    # a comes back: it can no longer start the upload it had claimed.
    with pytest.raises(ClaimLost):
        await a.begin_attempt(SHA, "/a/x.mp4", "direct")
    attempt = await b.begin_attempt(SHA, "/b/x.mp4", "direct")
    assert attempt > 0


async def test_a_host_frozen_inside_a_transaction_does_not_hide_rows_for_long(
    open_store: OpenStore,
) -> None:
    # a is frozen (SIGSTOP) in the middle of a claim: its transaction holds the row lock, and
    # SKIP LOCKED hides the row from b. The server ends that session well within a lease.
    a = await open_store("a", lease_s=5, renew_every_s=3600)
    b = await open_store("b", lease_s=5)
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await b.record_content("/b/x.mp4", "/b", fp(), SHA, "mp4")
    conn = await a._pool.acquire()
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT 1 FROM contents WHERE sha256 = $1 FOR UPDATE", SHA)
        assert await b.due_jobs(1) == []  # locked by the frozen transaction
        jobs: list[Any] = []
        for _ in range(100):
            jobs = await b.due_jobs(1)
            if jobs:
                break
            await asyncio.sleep(0.1)
        assert [j.path for j in jobs] == ["/b/x.mp4"]
    finally:
        with contextlib.suppress(Exception):
            await a._pool.release(conn)


async def test_a_renewed_lease_is_kept(open_store: OpenStore) -> None:
    a = await open_store("a", lease_s=1.0, renew_every_s=0.1)
    b = await open_store("b")
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await b.record_content("/b/x.mp4", "/b", fp(), SHA, "mp4")
    await a.due_jobs(1)
    attempt = await a.begin_attempt(SHA, "/a/x.mp4", "direct")
    # Longer than the lease: only the renewals keep it.
    for _ in range(15):
        await asyncio.sleep(0.1)
        assert await b.due_jobs(1) == []
    await a.mark_finishing(attempt)
    await a.finish_upload(SHA, attempt, "re_1", bytes_sent=10, http_status=200, next_poll_at=0)
    assert await b.possible_duplicates() == 0


async def test_a_host_that_lost_its_lease_mid_upload_cannot_finish_it(
    open_store: OpenStore,
) -> None:
    # a is sending the body when it freezes (SIGSTOP) past its lease; b takes over.
    a = await open_store("a", lease_s=0.5, renew_every_s=3600)
    b = await open_store("b", lease_s=30)
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await b.record_content("/b/x.mp4", "/b", fp(), SHA, "mp4")
    await a.due_jobs(1)
    lost = await a.begin_attempt(SHA, "/a/x.mp4", "direct")
    await wait_until_expired(a, SHA)
    (job,) = await b.due_jobs(1)
    assert job.content.state == "pending"
    assert await b.possible_duplicates() == 0  # its last bytes had not left: none possible
    (old,) = await b.attempts_of(SHA)
    assert old.outcome == "interrupted" and "taken over by host b" in (old.error or "")
    # a resumes: the last bytes are never sent, and its failure leaves b's claim alone.
    with pytest.raises(ClaimLost):
        await a.mark_finishing(lost)
    await a.retry_later(SHA, lost, outcome="claim_lost", error="x", next_attempt_at=0)
    assert (await b.claimed_by(SHA))[0] == "b"
    mine = await b.begin_attempt(SHA, "/b/x.mp4", "direct")
    await b.finish_upload(SHA, mine, "re_2", bytes_sent=10, http_status=200, next_poll_at=0)
    content = await b.get_content(SHA)
    assert content is not None and content.asset_id == "re_2" and content.state == "uploaded"


async def test_bytes_that_left_before_the_lease_was_lost_count_one_duplicate(
    open_store: OpenStore,
) -> None:
    # a had sent its last bytes (finishing) when it froze; b takes over and re-uploads; then
    # a's answer arrives. The duplicate is counted once and its asset id kept, never hidden.
    a = await open_store("a", lease_s=0.5, renew_every_s=3600)
    b = await open_store("b", lease_s=30)
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await b.record_content("/b/x.mp4", "/b", fp(), SHA, "mp4")
    await a.due_jobs(1)
    lost = await a.begin_attempt(SHA, "/a/x.mp4", "direct")
    await a.mark_finishing(lost)
    await wait_until_expired(a, SHA)
    await b.due_jobs(1)
    assert await b.possible_duplicates() == 1
    mine = await b.begin_attempt(SHA, "/b/x.mp4", "direct")
    await b.finish_upload(SHA, mine, "re_2", bytes_sent=10, http_status=200, next_poll_at=0)
    await a.finish_upload(SHA, lost, "re_1", bytes_sent=10, http_status=200, next_poll_at=0)
    content = await b.get_content(SHA)
    assert content is not None and content.asset_id == "re_2"
    assert await b.possible_duplicates() == 1
    assert [s[0] for s in await b.superseded_of(SHA)] == ["re_1"]
    assert sorted(c.sha256 for c in await b.find_contents("re_1")) == [SHA]


async def test_a_late_answer_not_yet_counted_is_counted(open_store: OpenStore) -> None:
    # The takeover happened before a's last bytes (not counted), yet a's bytes left anyway
    # (it had passed the fence just before freezing): its answer is counted when it arrives.
    a = await open_store("a", lease_s=0.5, renew_every_s=3600)
    b = await open_store("b", lease_s=30)
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await b.record_content("/b/x.mp4", "/b", fp(), SHA, "mp4")
    await a.due_jobs(1)
    lost = await a.begin_attempt(SHA, "/a/x.mp4", "direct")
    await wait_until_expired(a, SHA)
    await b.due_jobs(1)
    await a.finish_upload(SHA, lost, "re_9", bytes_sent=10, http_status=200, next_poll_at=0)
    assert await b.possible_duplicates() == 1
    content = await b.get_content(SHA)
    assert content is not None and content.state == "pending" and content.asset_id is None
    assert [s[0] for s in await b.superseded_of(SHA)] == ["re_9"]


async def test_signed_url_takeover_resumes_on_the_same_asset(open_store: OpenStore) -> None:
    a = await open_store("a", lease_s=0.5, renew_every_s=3600)
    b = await open_store("b", lease_s=30)
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await b.record_content("/b/x.mp4", "/b", fp(), SHA, "mp4")
    await a.due_jobs(1)
    attempt = await a.begin_attempt(SHA, "/a/x.mp4", "signed_url")
    await a.allocate(SHA, "re_5", "https://store.example/u", 2e9, attempt)
    await a.mark_sending(SHA)
    await wait_until_expired(a, SHA)
    (job,) = await b.due_jobs(1)
    assert job.content.state == "allocated" and job.content.asset_id == "re_5"
    assert await b.possible_duplicates() == 0
    with pytest.raises(ClaimLost):
        await a.mark_sending(SHA)
    # a's late answer names the same asset: nothing is superseded, nothing counted.
    await a.finish_upload(SHA, attempt, "re_5", bytes_sent=10, http_status=200, next_poll_at=0)
    assert await b.superseded_of(SHA) == []
    assert await b.possible_duplicates() == 0


async def test_a_killed_host_restarting_recovers_only_its_own_work(
    open_store: OpenStore,
) -> None:
    a = await open_store("a")
    b = await open_store("b")
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await b.record_content("/b/y.mp4", "/b", fp(), OTHER, "mp4")
    await a.due_jobs(1)
    await b.due_jobs(1)
    await a.begin_attempt(SHA, "/a/x.mp4", "direct")
    b_attempt = await b.begin_attempt(OTHER, "/b/y.mp4", "direct")
    a.terminate()
    again = await open_store("a")
    report = await again.recover()
    assert report.interrupted_direct == 1
    other = await b.get_content(OTHER)
    assert other is not None and other.state == "uploading"  # b's upload goes on
    await b.mark_finishing(b_attempt)
    assert [j.content.sha256 for j in await again.due_jobs(5)] == [SHA]


async def test_polls_are_claimed_by_one_host(open_store: OpenStore) -> None:
    a = await open_store("a")
    b = await open_store("b")
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await a.due_jobs(1)
    attempt = await a.begin_attempt(SHA, "/a/x.mp4", "direct")
    await a.finish_upload(SHA, attempt, "re_1", bytes_sent=10, http_status=200, next_poll_at=0)
    polls_a, polls_b = await asyncio.gather(a.due_polls(5), b.due_polls(5))
    assert len(polls_a) + len(polls_b) == 1
    poller = a if polls_a else b
    await poller.record_status(SHA, "re_1", "UPLOADING", next_poll_at=0)
    assert len(await a.due_polls(5)) + len(await b.due_polls(5)) == 1  # released, claimed again


async def test_a_rescan_never_marks_another_hosts_paths_gone(open_store: OpenStore) -> None:
    a = await open_store("a")
    b = await open_store("b")
    for store in (a, b):  # both hosts mount the library at the same path
        await store.record_content("/lib/d/x.mp4", "/lib", fp(), SHA, "mp4")
        await store.record_content("/lib/e/y.mp4", "/lib", fp(ino=2), OTHER, "mp4")
    a_clock: Clock = a._clock  # type: ignore[assignment]
    a_clock.now += 10
    gone = await a.mark_missing_gone("/lib", ["/lib/d/x.mp4"], ["/lib/e"], a_clock.now)
    assert gone == 2
    assert await a.mark_gone_under("/lib") == 0
    await a.mark_gone("/lib/d/x.mp4")
    for path in ("/lib/d/x.mp4", "/lib/e/y.mp4"):
        mine, theirs = await a.get_path(path), await b.get_path(path)
        assert mine is not None and mine.state == "gone"
        assert theirs is not None and theirs.state == "present"
    # The contents stay due: b still holds both.
    assert {j.content.sha256 for j in await b.due_jobs(5)} == {SHA, OTHER}
    assert await a.due_jobs(5) == []


async def test_a_content_no_host_holds_is_parked_until_one_does(open_store: OpenStore) -> None:
    a = await open_store("a")
    b = await open_store("b")
    await a.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await a.mark_gone("/a/x.mp4")
    assert await b.due_jobs(5) == []  # parked by whoever looks
    content = await a.get_content(SHA)
    assert content is not None and (content.last_error or "").startswith("no present path")
    await b.record_content("/b/x.mp4", "/b", fp(), SHA, "mp4")
    (job,) = await b.due_jobs(5)
    assert job.path == "/b/x.mp4"


async def test_kv_rows_are_per_host(open_store: OpenStore) -> None:
    a = await open_store("a")
    b = await open_store("b")
    await a.set_kv("pacer", {"upload": 1})
    assert await a.get_kv("pacer") == {"upload": 1}
    assert await b.get_kv("pacer") is None


async def test_listing_covers_the_fleet_and_filters_by_host(open_store: OpenStore) -> None:
    a = await open_store("a")
    b = await open_store("b")
    await a.record_content("/m/x.mp4", "/m", fp(), SHA, "mp4")
    await b.record_content("/m/x.mp4", "/m", fp(), SHA, "mp4")
    await b.record_content("/m/y.mp4", "/m", fp(ino=2), OTHER, "mp4")
    everything = [(p.path, c.sha256 if c else None) async for p, c in a.iter_assets(page_size=1)]
    assert everything == [("/m/x.mp4", SHA), ("/m/x.mp4", SHA), ("/m/y.mp4", OTHER)]
    only_a = [p.path async for p, _ in b.iter_assets(host="a")]
    assert only_a == ["/m/x.mp4"]


# ------------------------------------------------------------------------- outages


async def test_a_server_restart_is_a_clear_error_then_nothing_is_lost(
    postgres: PgServer, open_store: OpenStore
) -> None:
    store = await open_store("a")
    await store.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await asyncio.to_thread(postgres.stop)
    try:
        with pytest.raises(LedgerUnreachable, match="unreachable"):
            await store.get_content(SHA)
        # A write meanwhile waits for the server (its caller still holds what to record).
        write = asyncio.create_task(store.record_content("/a/y.mp4", "/a", fp(ino=2), OTHER, "mp4"))
        for _ in range(100):
            if store.stalled is not None:
                break
            await asyncio.sleep(0.05)
        assert store.stalled is not None and "unreachable" in store.stalled
        assert not write.done()
    finally:
        await asyncio.to_thread(postgres.start)
    content = await asyncio.wait_for(write, timeout=60)
    assert content.sha256 == OTHER
    assert store.stalled is None
    assert {c.sha256 for c in (await store.get_contents([SHA, OTHER])).values()} == {SHA, OTHER}
    assert {j.content.sha256 for j in await store.due_jobs(5)} == {SHA, OTHER}


async def test_the_daemons_reads_wait_out_a_restart_instead_of_raising(
    postgres: PgServer, open_store: OpenStore
) -> None:
    # The daemon opens its store with wait_out_outages: a look-up of a stage (the hash
    # stage's get_path, the dispatcher's next_due_at) waits for the server like a write does.
    store = await open_store("a", wait_out_outages=True)
    await store.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await asyncio.to_thread(postgres.stop)
    try:
        reads = [
            asyncio.create_task(store.get_path("/a/x.mp4")),
            asyncio.create_task(store.next_due_at()),
        ]
        for _ in range(100):
            if store.stalled is not None:
                break
            await asyncio.sleep(0.05)
        assert store.stalled is not None and "unreachable" in store.stalled
        assert not any(r.done() for r in reads)
    finally:
        await asyncio.to_thread(postgres.start)
    rec, _due = await asyncio.wait_for(asyncio.gather(*reads), timeout=60)
    assert rec is not None and rec.sha256 == SHA
    assert store.stalled is None


async def test_pg_ctl_restart_mid_run_keeps_claims_and_attempts(
    postgres: PgServer, open_store: OpenStore
) -> None:
    store = await open_store("a")
    await store.record_content("/a/x.mp4", "/a", fp(), SHA, "mp4")
    await store.due_jobs(1)
    attempt = await store.begin_attempt(SHA, "/a/x.mp4", "direct")
    await asyncio.to_thread(postgres.restart)
    # The pool's connections died with the server: a write finds out and retries.
    await store.mark_finishing(attempt)
    await store.finish_upload(SHA, attempt, "re_1", bytes_sent=10, http_status=200, next_poll_at=0)
    content = await store.get_content(SHA)
    assert content is not None and content.state == "uploaded" and content.asset_id == "re_1"


# ------------------------------------------------------------------------- ledger migrate


async def _sqlite_ledger(path: Path) -> None:
    """A host's SQLite ledger with every kind of row worth keeping."""
    led = await Ledger.open(str(path), clock=Clock())
    try:
        await led.record_content("/r/done.mp4", "/r", fp(), SHA, "mp4")
        await led.record_content("/r/caf\udce9.mp4", "/r", fp(ino=2), OTHER, "mp4")
        await led.record_content("/r/sending.mp4", "/r", fp(ino=3), THIRD, "mp4")
        attempt = await led.begin_attempt(SHA, "/r/done.mp4", "direct")
        await led.supersede(SHA, attempt, "re_100", sent_sha256=None, path=None, reason="x")
        attempt = await led.begin_attempt(SHA, "/r/done.mp4", "direct")
        await led.finish_upload(SHA, attempt, "re_101", bytes_sent=10, http_status=200,
                                next_poll_at=0)  # fmt: skip
        await led.record_status(SHA, "re_101", "SUCCESS", next_poll_at=None)
        attempt = await led.begin_attempt(THIRD, "/r/sending.mp4", "direct")
        await led.mark_finishing(attempt)  # then the host was stopped for the move
        attempt = await led.begin_attempt(OTHER, "/r/caf\udce9.mp4", "direct")
        await led.finish_upload(OTHER, attempt, "re_102", bytes_sent=10, http_status=200,
                                next_poll_at=0)  # fmt: skip
    finally:
        await led.close()


def _migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        syncd_cmd("ledger", "migrate", *args), capture_output=True, text=True, timeout=60
    )


async def test_ledger_migrate_keeps_every_asset_id_and_runs_again_as_a_no_op(
    tmp_path: Path, open_store: OpenStore, pg_url: str
) -> None:
    source = tmp_path / "ledger.db"
    await _sqlite_ledger(source)
    # The fleet already uploaded one of these contents under another asset id.
    fleet = await open_store("other")
    await fleet.record_content("/o/x.mp4", "/o", fp(), OTHER, "mp4")
    await fleet.due_jobs(1)
    attempt = await fleet.begin_attempt(OTHER, "/o/x.mp4", "direct")
    await fleet.finish_upload(OTHER, attempt, "re_900", bytes_sent=10, http_status=200,
                              next_poll_at=0)  # fmt: skip
    await fleet.record_status(OTHER, "re_900", "SUCCESS", next_poll_at=None)

    first = _migrate("--from", f"sqlite:{source}", "--to", pg_url, "--host", "old")
    assert first.returncode == 0, first.stderr
    assert "3 path(s)" in first.stdout and "asset id(s) kept" in first.stdout
    store = await open_store("old")
    done = await store.get_content(SHA)
    assert done is not None and done.state == "done" and done.asset_id == "re_101"
    assert [s[0] for s in await store.superseded_of(SHA)] == ["re_100"]
    # The fleet's done asset stays; the source's other asset id is kept as superseded.
    other = await store.get_content(OTHER)
    assert other is not None and other.asset_id == "re_900"
    assert [s[0] for s in await store.superseded_of(OTHER)] == ["re_102"]
    # An upload the source left finishing is recovered as its restart would: counted.
    third = await store.get_content(THIRD)
    assert third is not None and third.state == "pending" and third.possible_duplicates == 1
    odd = await store.get_path("/r/caf\udce9.mp4")
    assert odd is not None and odd.sha256 == OTHER
    assert len(await store.attempts_of(SHA)) == 2

    second = _migrate("--from", f"sqlite:{source}", "--to", pg_url, "--host", "old")
    assert second.returncode == 0, second.stderr
    assert "0 new content(s)" in second.stdout and "0 path(s), 0 attempt(s)" in second.stdout
    assert len(await store.attempts_of(SHA)) == 2
    assert (await store.counts())["paths"]["present"] == 4


async def test_ledger_migrate_refuses_a_ledger_a_daemon_owns(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "ledger.db"
    await _sqlite_ledger(source)
    lock = LedgerLock(str(source))
    lock.acquire()
    try:
        proc = _migrate("--from", f"sqlite:{source}", "--to", pg_url, "--host", "old")
    finally:
        lock.release()
    assert proc.returncode != 0
    assert "owned by process" in proc.stderr and "Traceback" not in proc.stderr
