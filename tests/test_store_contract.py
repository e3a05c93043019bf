"""The store contract: every ledger store runs the same state machine (``docs/ledger.md``).

One module, parametrised over the store implementations: ``sqlite`` (a real ledger file in
``tmp_path``) and ``postgresql`` (a fresh database on the session's private server). Each test
drives a store only through :class:`~syncd.ledger.store.LedgerStore`, so a third store passes
by implementing the protocol. Pinned here: every transition of the content state machine, the
crash windows recovery closes (a store closed mid-upload and opened again stands for a crash:
neither store releases anything on close), path tracking, and the persisted cool-downs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from pg_support import PgServer

from syncd.fingerprint import Fingerprint
from syncd.ledger.postgres import PostgresLedger
from syncd.ledger.records import HashedPath, NewAfterJob, UploadOrder
from syncd.ledger.sqlite import Ledger
from syncd.ledger.store import LedgerStore

SHA = "ab" * 32
OTHER = "cd" * 32
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fp(size: int = 10, ino: int = 1) -> Fingerprint:
    return Fingerprint(1, ino, size, 100, 100)


OpenStore = Callable[[], Awaitable[LedgerStore]]


class Harness:
    """Opens the test's store (again, after a "crash"), with one clock the test moves."""

    def __init__(self, opener: Callable[[Clock], Awaitable[LedgerStore]]) -> None:
        self.clock = Clock()
        self._opener = opener
        self.opened: list[LedgerStore] = []

    async def open(self) -> LedgerStore:
        store = await self._opener(self.clock)
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    """A :class:`Harness` on an empty store of the parameter's kind; closes all at teardown."""
    if request.param == "sqlite":
        path = str(tmp_path / "state" / "ledger.db")

        async def opener(clock: Clock) -> LedgerStore:
            return await Ledger.open(path, clock=clock)
    else:
        # Asked for here, not as a parameter, so the SQLite runs never start a server.
        server: PgServer = request.getfixturevalue("postgres")
        name = server.new_database_name()
        conn = await asyncpg.connect(server.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = server.url(name)

        async def opener(clock: Clock) -> LedgerStore:
            return await PostgresLedger.open(url, host="h1", clock=clock, renew_every_s=3600)

    harness = Harness(opener)
    yield harness
    for store in harness.opened:
        await store.close()


@pytest.fixture
async def store(stores: Harness) -> LedgerStore:
    return await stores.open()


async def start_direct(store: LedgerStore, sha: str = SHA, path: str = "/r/a.mp4") -> int:
    """Record ``path`` holding ``sha``, claim it and begin a direct attempt; the attempt id."""
    await store.record_content(path, "/r", fp(), sha, "mp4")
    jobs = await store.due_jobs(4)
    assert [j.content.sha256 for j in jobs] == [sha]
    return await store.begin_attempt(sha, path, "direct")


async def state_of(store: LedgerStore, sha: str = SHA) -> str:
    content = await store.get_content(sha)
    assert content is not None
    return content.state


# ------------------------------------------------------------------ the direct path


async def test_a_new_content_is_pending_and_due_now_with_its_path(store: LedgerStore) -> None:
    content = await store.record_content("/r/a.mp4", "/r", fp(size=42), SHA, "mp4")
    assert (content.state, content.size, content.attempts) == ("pending", 42, 0)
    jobs = await store.due_jobs(4)
    assert [(j.content.sha256, j.path, j.fingerprint) for j in jobs] == [
        (SHA, "/r/a.mp4", fp(size=42))
    ]


async def test_pending_uploading_uploaded_done(stores: Harness, store: LedgerStore) -> None:
    attempt = await start_direct(store)
    assert await state_of(store) == "uploading"
    await store.finish_upload(
        SHA, attempt, "re_1", bytes_sent=10, http_status=200, next_poll_at=stores.clock.now
    )
    content = await store.get_content(SHA)
    assert content is not None
    assert (content.state, content.asset_id, content.attempts) == ("uploaded", "re_1", 1)
    assert [c.sha256 for c in await store.due_polls(10)] == [SHA]
    await store.record_status(SHA, "re_1", "UPLOADING", next_poll_at=stores.clock.now + 60)
    assert await state_of(store) == "uploaded"
    assert await store.due_polls(10) == []
    await store.record_status(SHA, "re_1", "SUCCESS", next_poll_at=None)
    content = await store.get_content(SHA)
    assert content is not None
    assert (content.state, content.remote_status) == ("done", "SUCCESS")
    assert [a.outcome for a in await store.attempts_of(SHA)] == ["ok"]
    assert await store.unfinished_count() == 0


async def test_a_retry_goes_back_to_pending_with_one_more_attempt_and_a_later_due_time(
    stores: Harness, store: LedgerStore
) -> None:
    attempt = await start_direct(store)
    later = stores.clock.now + 30
    content = await store.retry_later(
        SHA, attempt, outcome="server_error", error="HTTP 503", next_attempt_at=later
    )
    assert (content.state, content.attempts, content.next_attempt_at) == ("pending", 1, later)
    assert content.last_error == "HTTP 503"
    assert await store.due_jobs(4) == []
    assert await store.next_due_at() == later
    stores.clock.now = later
    assert [j.content.sha256 for j in await store.due_jobs(4)] == [SHA]
    assert [a.outcome for a in await store.attempts_of(SHA)] == ["server_error"]


async def test_a_throttled_retry_counts_the_throttle_and_not_the_attempt(
    stores: Harness, store: LedgerStore
) -> None:
    attempt = await start_direct(store)
    content = await store.retry_later(
        SHA,
        attempt,
        outcome="throttled",
        error="HTTP 429",
        next_attempt_at=stores.clock.now,
        count_attempt=False,
        count_throttle=True,
    )
    assert (content.state, content.attempts, content.throttle_count) == ("pending", 0, 1)


@pytest.mark.parametrize("final", ["rejected", "failed"])
async def test_giving_up_is_final_until_an_operator_retries(store: LedgerStore, final: str) -> None:
    attempt = await start_direct(store)
    await store.give_up(
        SHA,
        attempt,
        state="rejected" if final == "rejected" else "failed",
        outcome=final,
        error="no",
        http_status=415,
    )
    assert await state_of(store) == final
    assert await store.due_jobs(4) == []
    assert await store.unfinished_count() == 0
    assert await store.requeue(states=["rejected" if final == "rejected" else "failed"]) == 1
    content = await store.get_content(SHA)
    assert content is not None
    assert (content.state, content.attempts) == ("pending", 0)


async def test_bytes_changed_during_the_upload_supersede_the_asset(store: LedgerStore) -> None:
    attempt = await start_direct(store)
    await store.supersede(
        SHA, attempt, "re_wrong", sent_sha256=OTHER, path="/r/a.mp4", reason="bytes changed"
    )
    content = await store.get_content(SHA)
    assert content is not None
    assert (content.state, content.asset_id) == ("pending", None)
    assert [(a, r) for a, r, _ in await store.superseded_of(SHA)] == [("re_wrong", "bytes changed")]
    assert [c.sha256 for c in await store.find_contents("re_wrong")] == [SHA]


async def test_a_remote_failure_re_uploads_then_fails_when_attempts_ran_out(
    stores: Harness, store: LedgerStore
) -> None:
    attempt = await start_direct(store)
    await store.finish_upload(
        SHA, attempt, "re_1", bytes_sent=10, http_status=200, next_poll_at=stores.clock.now
    )
    assert await store.remote_failed(SHA, "re_1", "remote FAILED", max_attempts=3) == "pending"
    content = await store.get_content(SHA)
    assert content is not None
    assert (content.asset_id, content.remote_failures) == (None, 1)
    attempt = await store.begin_attempt(SHA, "/r/a.mp4", "direct")
    await store.finish_upload(
        SHA, attempt, "re_2", bytes_sent=10, http_status=200, next_poll_at=stores.clock.now
    )
    assert await store.remote_failed(SHA, "re_2", "remote FAILED", max_attempts=2) == "failed"
    assert {a for a, _, _ in await store.superseded_of(SHA)} == {"re_1", "re_2"}


# ------------------------------------------------------------------ the signed-URL path


async def test_signed_url_allocated_then_uploading_then_uploaded(
    stores: Harness, store: LedgerStore
) -> None:
    await store.record_content("/r/a.mp4", "/r", fp(), SHA, "mp4")
    await store.due_jobs(4)
    attempt = await store.begin_attempt(SHA, "/r/a.mp4", "signed_url")
    await store.allocate(SHA, "re_s", "https://up.example/x", stores.clock.now + 600, attempt)
    content = await store.get_content(SHA)
    assert content is not None
    assert (content.state, content.asset_id, content.signed_url) == (
        "allocated",
        "re_s",
        "https://up.example/x",
    )
    await store.mark_sending(SHA)
    assert await state_of(store) == "uploading"
    await store.finish_upload(
        SHA, attempt, "re_s", bytes_sent=10, http_status=None, next_poll_at=stores.clock.now
    )
    content = await store.get_content(SHA)
    assert content is not None
    assert (content.state, content.asset_id, content.signed_url) == ("uploaded", "re_s", None)


async def test_a_retry_may_keep_the_signed_url_allocation(
    stores: Harness, store: LedgerStore
) -> None:
    await store.record_content("/r/a.mp4", "/r", fp(), SHA, "mp4")
    await store.due_jobs(4)
    attempt = await store.begin_attempt(SHA, "/r/a.mp4", "signed_url")
    await store.allocate(SHA, "re_s", "https://up.example/x", stores.clock.now + 600, attempt)
    await store.mark_sending(SHA)
    content = await store.retry_later(
        SHA,
        attempt,
        outcome="reset",
        error="connection reset",
        next_attempt_at=stores.clock.now,
        keep_allocation=True,
    )
    assert (content.state, content.asset_id) == ("allocated", "re_s")
    content = await store.retry_later(
        SHA, None, outcome="expired", error="URL expired", next_attempt_at=stores.clock.now
    )
    assert (content.state, content.asset_id) == ("pending", None)
    assert [a for a, _, _ in await store.superseded_of(SHA)] == ["re_s"]


# ------------------------------------------------------------------ crash windows


@pytest.mark.parametrize("last_bytes_sent", [False, True])
async def test_a_crash_during_a_direct_upload_goes_back_to_pending(
    stores: Harness, store: LedgerStore, last_bytes_sent: bool
) -> None:
    attempt = await start_direct(store)
    if last_bytes_sent:
        await store.mark_finishing(attempt)
    await store.close()  # a crash: nothing is released or ended on close
    store = await stores.open()
    report = await store.recover()
    assert report.interrupted_direct == 1
    content = await store.get_content(SHA)
    assert content is not None
    assert (content.state, content.possible_duplicates) == ("pending", int(last_bytes_sent))
    assert await store.possible_duplicates() == int(last_bytes_sent)
    outcome = "interrupted_possible_duplicate" if last_bytes_sent else "interrupted"
    assert [a.outcome for a in await store.attempts_of(SHA)] == [outcome]
    assert [j.content.sha256 for j in await store.due_jobs(4)] == [SHA]


@pytest.mark.parametrize("sending", [False, True])
async def test_a_crash_during_a_signed_url_upload_keeps_the_asset_id(
    stores: Harness, store: LedgerStore, sending: bool
) -> None:
    await store.record_content("/r/a.mp4", "/r", fp(), SHA, "mp4")
    await store.due_jobs(4)
    attempt = await store.begin_attempt(SHA, "/r/a.mp4", "signed_url")
    await store.allocate(SHA, "re_s", "https://up.example/x", stores.clock.now + 600, attempt)
    if sending:
        await store.mark_sending(SHA)
    await store.close()
    store = await stores.open()
    report = await store.recover()
    assert (report.interrupted_direct, report.resumed_signed_url) == (0, int(sending))
    content = await store.get_content(SHA)
    assert content is not None
    assert (content.state, content.asset_id, content.possible_duplicates) == (
        "allocated",
        "re_s",
        0,
    )
    jobs = await store.due_jobs(4)
    assert [(j.content.sha256, j.content.asset_id) for j in jobs] == [(SHA, "re_s")]


async def test_an_uploaded_content_is_polled_again_after_a_restart(
    stores: Harness, store: LedgerStore
) -> None:
    attempt = await start_direct(store)
    await store.finish_upload(
        SHA, attempt, "re_1", bytes_sent=10, http_status=200, next_poll_at=stores.clock.now + 600
    )
    assert await store.due_polls(10) == []
    await store.close()
    store = await stores.open()
    report = await store.recover()
    assert report.polls_rescheduled == 1
    assert [c.asset_id for c in await store.due_polls(10)] == ["re_1"]


# ------------------------------------------------------------------ paths


async def test_one_content_at_several_paths_and_a_gone_one(store: LedgerStore) -> None:
    await store.record_content("/r/a.mp4", "/r", fp(ino=1), SHA, "mp4")
    content = await store.record_content("/r/b.mp4", "/r", fp(ino=2), SHA, "mp4")
    assert content.state == "pending"
    assert [p for p, _ in await store.paths_of(SHA)] == ["/r/a.mp4", "/r/b.mp4"]
    await store.mark_gone("/r/a.mp4")
    gone = await store.get_path("/r/a.mp4")
    assert gone is not None
    assert (gone.state, gone.sha256) == ("gone", SHA)
    assert await state_of(store) == "pending"  # the content's record stays
    assert [j.path for j in await store.due_jobs(4)] == ["/r/b.mp4"]
    await store.touch_paths(["/r/a.mp4"])  # a rescan finds it back, unchanged
    back = await store.get_path("/r/a.mp4")
    assert back is not None
    assert back.state == "present"
    assert set(await store.get_paths(["/r/a.mp4", "/r/b.mp4", "/r/none"])) == {
        "/r/a.mp4",
        "/r/b.mp4",
    }


async def test_a_content_no_present_path_holds_is_parked_until_one_appears(
    stores: Harness, store: LedgerStore
) -> None:
    await store.record_content("/r/d/a.mp4", "/r", fp(), SHA, "mp4")
    assert await store.mark_gone_under("/r/d") == 1
    assert await store.due_jobs(4) == []
    content = await store.get_content(SHA)
    assert content is not None
    assert content.last_error is not None
    assert content.last_error.startswith("no present path")
    assert await store.unfinished_count() == 0
    stores.clock.now += 1
    await store.record_content("/r/e.mp4", "/r", fp(ino=2), SHA, "mp4")
    assert [j.path for j in await store.due_jobs(4)] == ["/r/e.mp4"]


async def test_a_batch_of_hashed_paths_is_recorded_as_each_one_alone(
    stores: Harness, store: LedgerStore
) -> None:
    # A content parked for want of a present path, and one already uploaded and done.
    await store.record_content("/r/d/old.mp4", "/r", fp(ino=7), OTHER, "mp4")
    assert await store.mark_gone_under("/r/d") == 1
    stores.clock.now += 1
    assert await store.record_contents([]) == []
    contents = await store.record_contents(
        [
            HashedPath("/r/a.mp4", "/r", fp(size=42, ino=1), SHA, "mp4"),
            HashedPath("/r/b.mov", "/r", fp(size=42, ino=2), SHA, "mov"),
            HashedPath("/r/c.mp4", "/r", fp(ino=3), OTHER, "mp4"),
        ]
    )
    assert [(c.sha256, c.state) for c in contents] == [
        (SHA, "pending"),
        (SHA, "pending"),
        (OTHER, "pending"),
    ]
    # The first path of a content created it: its size and extension; one content, two paths.
    assert (contents[0].size, contents[0].extension) == (42, "mp4")
    assert contents[0].created_at == stores.clock.now
    for path, sha, ino, size in (
        ("/r/a.mp4", SHA, 1, 42),
        ("/r/b.mov", SHA, 2, 42),
        ("/r/c.mp4", OTHER, 3, 10),
    ):
        rec = await store.get_path(path)
        assert rec is not None
        assert (rec.state, rec.sha256, rec.fingerprint) == ("present", sha, fp(size=size, ino=ino))
    # The parked content is due again, at the path recorded in the batch.
    jobs = {j.content.sha256: j.path for j in await store.due_jobs(4)}
    assert jobs[OTHER] == "/r/c.mp4" and jobs[SHA] in ("/r/a.mp4", "/r/b.mov")
    counts = await store.counts()
    assert counts["contents"]["pending"] == 2


async def test_a_batch_bigger_than_one_statement_records_every_path(store: LedgerStore) -> None:
    # 150 paths, two a content: more rows than one statement of the SQLite store takes
    # (its rows are cut to stay under the parameter limit), a known path among them.
    await store.record_content("/r/p007.mp4", "/r", fp(ino=9999), OTHER, "mp4")
    batch = [
        HashedPath(f"/r/p{n:03d}.mp4", "/r", fp(size=n + 1, ino=n), f"{n // 2:064x}", "mp4")
        for n in range(150)
    ]
    contents = await store.record_contents(batch)
    assert [c.sha256 for c in contents] == [h.sha256 for h in batch]
    assert all(c.state == "pending" for c in contents)
    # The first path of a content created it (its size): the even ones.
    assert [c.size for c in contents] == [n - n % 2 + 1 for n in range(150)]
    known = await store.get_paths([h.path for h in batch])
    assert len(known) == 150
    for h in batch:
        rec = known[h.path]
        assert (rec.state, rec.sha256, rec.fingerprint) == ("present", h.sha256, h.fingerprint)
    counts = await store.counts()
    assert counts["contents"]["pending"] == 76  # 75 new ones and OTHER, still pending


async def test_paths_without_content_missing_paths_and_forgetting(
    stores: Harness, store: LedgerStore
) -> None:
    await store.record_path_state("/r/x.txt", "/r", "skipped", "not a media file")
    await store.record_path_state("/r/w.mp4", "/r", "unsettled", "still written", open_since=5.0)
    await store.record_content("/r/a.mp4", "/r", fp(), SHA, "mp4")
    skipped = await store.get_path("/r/x.txt")
    assert skipped is not None
    assert (skipped.state, skipped.reason, skipped.sha256) == ("skipped", "not a media file", None)
    counts = await store.counts()
    assert (counts["paths"]["skipped"], counts["paths"]["unsettled"]) == (1, 1)
    assert counts["contents"]["pending"] == 1
    stores.clock.now += 10
    marked = await store.mark_missing_gone("/r", ["/r/a.mp4"], [], seen_before=stores.clock.now)
    assert marked == 1
    a = await store.get_path("/r/a.mp4")
    assert a is not None
    assert a.state == "gone"
    assert await store.forget_path("/r/x.txt") is True
    assert await store.forget_path("/r/x.txt") is False
    assert await store.get_path("/r/x.txt") is None


async def test_a_scan_never_marks_gone_what_was_recorded_after_it_began(
    stores: Harness, store: LedgerStore
) -> None:
    began = stores.clock.now
    stores.clock.now += 1
    await store.record_content("/r/new.mp4", "/r", fp(), SHA, "mp4")
    assert await store.mark_missing_gone("/r", ["/r/new.mp4"], [], seen_before=began) == 0


# ------------------------------------------------------------------ persistence


async def test_cool_downs_persist_across_close_and_open(
    stores: Harness, store: LedgerStore
) -> None:
    snapshot = {"direct": {"cooldown_until": T0 + 90.0, "interval_s": 2.5}}
    await store.set_kv("pacer", snapshot)
    await store.close()
    store = await stores.open()
    assert await store.get_kv("pacer") == snapshot
    assert await store.get_kv("nothing") is None


async def test_the_dashboard_pages(stores: Harness, store: LedgerStore) -> None:
    attempt = await start_direct(store)
    await store.finish_upload(
        SHA, attempt, "re_1", bytes_sent=10, http_status=200, next_poll_at=stores.clock.now
    )
    await store.record_content("/r/b.mp4", "/r", fp(ino=2), OTHER, "mp4")
    await store.due_jobs(4)
    attempt = await store.begin_attempt(OTHER, "/r/b.mp4", "direct")
    await store.give_up(OTHER, attempt, state="rejected", outcome="rejected", error="415")
    await store.record_path_state("/r/e.mp4", "/r", "error", "unreadable")
    uploads = await store.recent_uploads(10)
    assert [(a.sha256, c.asset_id if c else None) for a, c in uploads] == [(SHA, "re_1")]
    assert await store.recent_uploads(10, before_id=uploads[0][0].id) == []
    problems = await store.problem_contents(10)
    assert [(c.sha256, p) for c, p in problems] == [(OTHER, "/r/b.mp4")]
    assert [r.path for r in await store.problem_paths(["/r"], 10)] == ["/r/e.mp4"]
    assert [r.path for r in await store.find_paths("/r/", 2)] == ["/r/a.mp4", "/r/b.mp4"]
    assert [r.path for r in await store.find_paths("e.mp", 10)] == ["/r/e.mp4"]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("oldest", ["c", "b", "a"]),
        ("newest", ["a", "b", "c"]),
        ("smallest", ["b", "a", "c"]),
        ("largest", ["c", "a", "b"]),
        ("path", ["a", "b", "c"]),
    ],
)
async def test_upload_order_decides_which_due_contents_go_first(
    stores: Harness, store: LedgerStore, order: UploadOrder, expected: list[str]
) -> None:
    found = [("c", 300), ("b", 100), ("a", 200)]  # recorded in this order, a second apart
    for i, (name, size) in enumerate(found):
        sha = f"{i + 1:02d}" * 32
        await store.record_content(f"/r/{name}.mp4", "/r", fp(size=size, ino=i + 1), sha, "mp4")
        stores.clock.now += 1
    jobs = await store.due_jobs(10, order=order)
    assert [j.path for j in jobs] == [f"/r/{name}.mp4" for name in expected]


async def test_the_work_after_success_and_after_giving_up_is_queued_per_path(
    stores: Harness, store: LedgerStore
) -> None:
    attempt = await start_direct(store)
    await store.finish_upload(
        SHA, attempt, "re_1", bytes_sent=10, http_status=200, next_poll_at=stores.clock.now
    )
    start = await store.latest_status_change()
    await store.record_status(SHA, "re_1", "SUCCESS", next_poll_at=None)
    (change,) = await store.status_changes_after(start, 10)
    assert (change.sha256, change.asset_id, change.remote_status) == (SHA, "re_1", "SUCCESS")
    assert [p.path for p in await store.present_paths_of(SHA)] == ["/r/a.mp4"]
    assert await store.after_watermark() is None

    jobs = [
        NewAfterJob(change.id, kind, "/r/a.mp4", "/r", SHA, "re_1", "SUCCESS", change.at)
        for kind in ("sidecar", "cleanup")
    ]
    await store.add_after_jobs(jobs, change.id)
    await store.add_after_jobs(jobs, change.id)  # made twice, queued once
    assert await store.after_watermark() == change.id
    # The clean-up waits for the sidecar of its path.
    (sidecar,) = await store.due_after_jobs(10)
    assert sidecar.kind == "sidecar"
    await store.finish_after_job(sidecar.id, "done", outcome="wrote a.mp4.mavi.json")
    (cleanup,) = await store.due_after_jobs(10)
    await store.after_job_acting(cleanup.id, '{"verb": "delete"}')
    assert [j.intent for j in await store.acting_after_jobs()] == ['{"verb": "delete"}']
    await store.finish_after_job(cleanup.id, "done", outcome="deleted")
    assert await store.due_after_jobs(10) == [] and await store.next_after_job_at() is None
    counts = await store.after_counts()
    assert counts["cleaned"] == {"deleted": 1}
    assert counts["sidecar"] == {"done": 1}

    before = await store.latest_failure()
    await store.record_content("/r/b.mp4", "/r", fp(ino=2), OTHER, "mp4")
    await store.due_jobs(4)
    await store.give_up(OTHER, None, state="rejected", outcome="rejected", error="HTTP 400")
    (failure,) = await store.failures_after(before, 10)
    assert (failure.sha256, failure.state, failure.reason) == (OTHER, "rejected", "HTTP 400")
