"""The ledger queries behind the dashboard's pages: what they return, page by page, and that
each one is answered from an index (no page reads the whole ledger)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from syncd.fingerprint import Fingerprint
from syncd.ledger.sqlite import Ledger


def fp(n: int) -> Fingerprint:
    return Fingerprint(1, n, 100 + n, 1, 1)


def sha(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    """Five done uploads, one failed, one rejected, a file that never settled, one unreadable."""
    led = await Ledger.open(str(tmp_path / "ledger.db"))
    for n in range(7):
        path = f"/media/d/f{n}.mp4"
        await led.record_content(path, "/media", fp(n), sha(n), "mp4")
        att = await led.begin_attempt(sha(n), path, "direct")
        if n < 5:
            await led.finish_upload(
                sha(n), att, f"re_{n}", bytes_sent=100 + n, http_status=200, next_poll_at=None
            )
        else:
            state = "failed" if n == 5 else "rejected"
            await led.give_up(
                sha(n), att, state=state, outcome=state, error=f"no {n}", http_status=415
            )
    await led.record_path_state("/media/w.mp4", "/media", "unsettled", "still changing")
    await led.record_path_state("/media/e.mp4", "/media", "error", "cannot read: denied")
    await led.record_path_state("/other/x.mp4", "/other", "error", "cannot read: denied")
    yield led
    await led.close()


async def test_recent_uploads_newest_first_and_paged(ledger: Ledger) -> None:
    first = await ledger.recent_uploads(3)
    assert [a.asset_id for a, _ in first] == ["re_4", "re_3", "re_2"]
    assert [c.state for _, c in first if c] == ["uploaded"] * 3
    rest = await ledger.recent_uploads(3, before_id=first[-1][0].id)
    assert [a.asset_id for a, _ in rest] == ["re_1", "re_0"]


async def test_problem_contents_with_a_path_each_and_paged(ledger: Ledger) -> None:
    page = await ledger.problem_contents(1)
    assert [(c.state, p) for c, p in page] == [("rejected", "/media/d/f6.mp4")]
    last = page[-1][0]
    page = await ledger.problem_contents(5, after=(last.updated_at, last.sha256))
    assert [(c.state, c.last_error, p) for c, p in page] == [("failed", "no 5", "/media/d/f5.mp4")]


async def test_problem_paths_of_the_given_roots(ledger: Ledger) -> None:
    found = await ledger.problem_paths(["/media"], 10)
    assert [(r.path, r.state) for r in found] == [
        ("/media/e.mp4", "error"),
        ("/media/w.mp4", "unsettled"),
    ]
    assert [r.path for r in await ledger.problem_paths(["/media"], 10, after="/media/e.mp4")] == [
        "/media/w.mp4"
    ]
    assert len(await ledger.problem_paths(["/media", "/other"], 10)) == 3
    assert await ledger.problem_paths([], 10) == []


async def test_find_paths_by_prefix_or_part(ledger: Ledger) -> None:
    odd = os.fsdecode(b"/media/caf\xe9\n.mp4")
    await ledger.record_content(odd, "/media", fp(9), sha(9), "mp4")
    assert [r.path for r in await ledger.find_paths("/media/d/", 2)] == [
        "/media/d/f0.mp4",
        "/media/d/f1.mp4",
    ]
    assert [r.path for r in await ledger.find_paths("f3.mp", 10)] == ["/media/d/f3.mp4"]
    assert [r.path for r in await ledger.find_paths(os.fsdecode(b"\xe9\n"), 10)] == [odd]
    assert await ledger.find_paths("nothing-like-it", 10) == []


Query = Callable[[Ledger], Awaitable[Any]]


@pytest.mark.parametrize(
    "query",
    [
        lambda led: led.recent_uploads(50),
        lambda led: led.recent_uploads(50, before_id=3),
        lambda led: led.problem_contents(50),
        lambda led: led.problem_contents(50, after=(1.0, "ab")),
        lambda led: led.problem_paths(["/media", "/other"], 50, after="/media/a"),
        lambda led: led.find_paths("/media/d/", 20),
    ],
    ids=["uploads", "uploads-next", "problems", "problems-next", "paths", "prefix"],
)
async def test_each_page_is_answered_from_an_index(
    ledger: Ledger, tmp_path: Path, query: Query
) -> None:
    """The query plan of every statement a page runs searches an index or the primary key;
    none scans a table (which, at a million rows, is what makes a page slow)."""
    statements: list[str] = []
    await ledger._reader.call(lambda db: db.set_trace_callback(statements.append))
    await query(ledger)
    await ledger._reader.call(lambda db: db.set_trace_callback(None))
    assert statements
    db = sqlite3.connect(tmp_path / "ledger.db")
    try:
        for sql in statements:
            plan = [
                row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", [None] * sql.count("?"))
            ]
            # "SCAN t" and "SCAN t USING INDEX i" both read every row (in some order).
            scans = [step for step in plan if step.startswith("SCAN")]
            assert scans == [], (sql, plan)
    finally:
        db.close()
