"""The dashboard's JSON over real HTTP: ``/v1/status``, ``/v1/activity``, ``/v1/search``."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from syncd.events import EventHub
from syncd.fingerprint import Fingerprint
from syncd.ingest.settle import Waiting
from syncd.ledger.sqlite import Ledger
from syncd.metrics import Metrics
from syncd.ops import dashboard
from syncd.ops.dashboard import DaemonView
from syncd.ops.rates import RateHistory
from syncd.ops.webapi import Health, bound_address, start_http, stop_http

ODD = os.fsdecode(b"/media/<b>bold</b>\ncaf\xe9.mp4")


def sha(n: int) -> str:
    return f"{n:064x}"


def healthy() -> Health:
    return Health(healthy=True, ready=True, reason="")


class Live:
    """A daemon's live side as the endpoint sees it: a snapshot tests can change."""

    def __init__(self) -> None:
        self.hub = EventHub()
        self.state: dict[str, Any] = {
            "queue": {"settling": 2, "hashing": 0, "upload_queued": 0, "uploading": 2},
            "paused": None,
            "cooldowns": [],
            "roots": [
                {"path": "/media", "available": False, "watched": False},
                {"path": "/deep", "available": True, "watched": True, "watch_limit_hits": 3},
            ],
        }
        self.waiting = [
            Waiting("/media/a.mp4", "/media", 1e9, "no", (), "changed 1 s ago; ..."),
            Waiting("/media/b.mp4", "/media", 1e9 + 1, "proc", (os.getpid(),), "open ..."),
        ]

    def snapshot(self) -> dict[str, Any]:
        return self.state

    def settling(self, limit: int, offset: int) -> tuple[int, list[Waiting]]:
        return len(self.waiting), self.waiting[offset : offset + limit]

    def view(self) -> DaemonView:
        return DaemonView(
            hub=self.hub,
            snapshot=self.snapshot,
            settling=self.settling,
            roots=lambda: ["/media"],
            limits_per_s={"upload": 1.0, "metadata": 2.0},
        )


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    led = await Ledger.open(str(tmp_path / "ledger.db"))
    for n, path in enumerate(["/media/d/one.mp4", "/media/d/two.mp4", ODD]):
        await led.record_content(path, "/media", Fingerprint(1, n, 10, 1, 1), sha(n), "mp4")
        att = await led.begin_attempt(sha(n), path, "direct")
        await led.finish_upload(
            sha(n), att, f"re_{n}", bytes_sent=10, http_status=200, next_poll_at=None
        )
    await led.record_content("/media/bad.mp4", "/media", Fingerprint(1, 9, 5, 1, 1), sha(9), "mp4")
    att = await led.begin_attempt(sha(9), "/media/bad.mp4", "direct")
    await led.give_up(
        sha(9), att, state="rejected", outcome="rejected", error="HTTP 415", http_status=415
    )
    await led.record_content("/media/p.mp4", "/media", Fingerprint(1, 8, 7, 1, 1), sha(8), "mp4")
    await led.record_path_state("/media/n.mp4", "/media", "unsettled", "still changing after 60 s")
    yield led
    await led.close()


@pytest.fixture
async def served(ledger: Ledger) -> AsyncIterator[tuple[str, Live]]:
    live = Live()
    runner = await start_http(
        "127.0.0.1:0", ledger=ledger, metrics=Metrics(), health=healthy, daemon=live.view()
    )
    try:
        yield f"http://{bound_address(runner)}", live
    finally:
        await stop_http(runner)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def test_status_counts_backlog_problems_and_the_live_daemon(
    served: tuple[str, Live], http_session: aiohttp.ClientSession
) -> None:
    base, live = served
    status, doc = await get(http_session, f"{base}/v1/status")
    assert status == 200
    files = doc["files"]
    assert (files["uploaded"], files["rejected"], files["pending"], files["unsettled"]) == (
        3,
        1,
        1,
        1,
    )
    assert doc["backlog"]["files"] == 1 and doc["backlog"]["bytes"] == 7
    assert doc["backlog"]["eta_s"] is None  # nothing uploaded yet: no rate to go by
    assert doc["problems"]["rejected"] == 1 and doc["problems"]["unsettled"] == 1
    assert doc["problems"]["roots_unavailable"] == 1
    assert doc["problems"]["watch_limit_hits"] == 3
    assert doc["daemon"]["running"] is True and doc["daemon"]["queue"]["settling"] == 2
    rate = doc["rate"]
    assert rate["endpoints"]["upload"]["limit_per_s"] == 1.0
    assert rate["endpoints"]["storage"]["limit_per_s"] == 1.0  # storage uploads count as uploads
    assert rate["endpoints"]["metadata"]["limit_per_s"] == 2.0
    live.state["paused"] = {"kind": "auth", "reason": "the API refused the key", "until": None}
    doc = (await get(http_session, f"{base}/v1/status"))[1]
    assert doc["daemon"]["paused"]["kind"] == "auth"


async def test_the_eta_is_the_bytes_left_at_the_rate_of_the_last_minutes(
    ledger: Ledger, http_session: aiohttp.ClientSession
) -> None:
    metrics = Metrics()
    runner = await start_http("127.0.0.1:0", ledger=ledger, metrics=metrics, health=healthy)
    try:
        base = f"http://{bound_address(runner)}"
        history = runner.app[dashboard._DASHBOARD].history
        # One bucket of a second rather than ten (the sampling task is asleep for ten).
        history.bucket_s = 1.0
        metrics.inc("syncd_bytes_uploaded_total", 2)
        await asyncio.sleep(1.0)
        history.sample()
        _, doc = await get(http_session, f"{base}/v1/status")
        backlog = doc["backlog"]
        assert backlog["bytes"] == 7  # the pending file
        assert 1.5 <= backlog["bytes_per_s"] <= 2.0  # 2 bytes in a bit over a second
        assert 3 <= backlog["eta_s"] <= 5  # 7 bytes at that rate
    finally:
        await stop_http(runner)


async def test_activity_pages(
    served: tuple[str, Live], http_session: aiohttp.ClientSession
) -> None:
    base, live = served
    _, page = await get(http_session, f"{base}/v1/activity?kind=finished&limit=2")
    assert [i["asset_id"] for i in page["items"]] == ["re_2", "re_1"]
    odd = page["items"][0]
    assert odd["path"] == "/media/<b>bold</b>\ncaf\\xe9.mp4" and "path_bytes_hex" in odd
    _, rest = await get(http_session, f"{base}/v1/activity?kind=finished&cursor={page['next']}")
    assert [i["asset_id"] for i in rest["items"]] == ["re_0"] and rest["next"] is None

    _, page = await get(http_session, f"{base}/v1/activity?kind=problems")
    (item,) = page["items"]
    assert (item["path"], item["state"], item["last_error"]) == (
        "/media/bad.mp4",
        "rejected",
        "HTTP 415",
    )
    assert item["retry"] == f"syncd retry {sha(9)}"

    _, page = await get(http_session, f"{base}/v1/activity?kind=path_problems")
    assert [(i["path"], i["state"]) for i in page["items"]] == [("/media/n.mp4", "unsettled")]

    _, page = await get(http_session, f"{base}/v1/activity?kind=settling&limit=1")
    assert page["total"] == 2 and page["items"][0]["path"] == "/media/a.mp4"
    _, page = await get(http_session, f"{base}/v1/activity?kind=settling&cursor={page['next']}")
    (writer,) = page["items"]
    # Who writes it, by name, from /proc (here: this test's own process).
    assert writer["processes"][0]["pid"] == os.getpid() and writer["processes"][0]["name"]
    assert writer["why"].startswith("open for writing by ") and str(os.getpid()) in writer["why"]

    live.hub.progress("/media/big.mov", 0, 1000)
    live.hub.progress("/media/big.mov", 400, 1000)
    _, page = await get(http_session, f"{base}/v1/activity?kind=uploading")
    assert [(i["path"], i["total_bytes"]) for i in page["items"]] == [("/media/big.mov", 1000)]
    assert page["queued"] == 1  # two claimed by the uploader, one sending
    live.hub.publish("upload_ended", path="/media/big.mov")
    assert (await get(http_session, f"{base}/v1/activity?kind=uploading"))[1]["items"] == []


@pytest.mark.parametrize(
    "query",
    ["kind=nothing", "kind=finished&limit=0", "kind=finished&limit=x", "kind=finished&cursor=x"],
)
async def test_bad_activity_requests_are_400(
    served: tuple[str, Live], http_session: aiohttp.ClientSession, query: str
) -> None:
    base, _ = served
    status, doc = await get(http_session, f"{base}/v1/activity?{query}")
    assert status == 400 and "error" in doc


async def test_search_by_asset_id_sha_path_or_part_of_one(
    served: tuple[str, Live], http_session: aiohttp.ClientSession
) -> None:
    base, _ = served
    _, doc = await get(http_session, f"{base}/v1/search?q=re_1")
    assert doc["matched_by"] == "asset_id" and doc["match"]["sha256"] == sha(1)
    _, doc = await get(http_session, f"{base}/v1/search?q={sha(9)}")
    assert doc["match"]["state"] == "rejected"
    _, doc = await get(http_session, f"{base}/v1/search?q=two.mp")
    assert doc["match"]["asset_id"] == "re_1" and len(doc["paths"]) == 1
    _, doc = await get(http_session, f"{base}/v1/search?q=/media/d/")
    assert doc["match"] is None and [p["path"] for p in doc["paths"]] == [
        "/media/d/one.mp4",
        "/media/d/two.mp4",
    ]
    _, doc = await get(http_session, f"{base}/v1/search?q=nothing-of-the-sort")
    assert (doc["match"], doc["paths"]) == (None, [])
    status, _ = await get(http_session, f"{base}/v1/search?q=")
    assert status == 400


async def test_without_a_daemon_the_ledger_parts_still_answer(
    ledger: Ledger, http_session: aiohttp.ClientSession
) -> None:
    runner = await start_http("127.0.0.1:0", ledger=ledger, metrics=Metrics(), health=healthy)
    try:
        base = f"http://{bound_address(runner)}"
        status, doc = await get(http_session, f"{base}/v1/status")
        assert status == 200 and doc["daemon"] == {"running": False}
        _, page = await get(http_session, f"{base}/v1/activity?kind=settling")
        assert page["items"] == []
        _, page = await get(http_session, f"{base}/v1/activity?kind=finished")
        assert len(page["items"]) == 3
    finally:
        await stop_http(runner)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_rate_history_keeps_per_bucket_rates_throttles_and_the_byte_rate() -> None:
    metrics = Metrics()
    clock = Clock()
    history = RateHistory(metrics, bucket_s=10, span_s=30, clock=clock)
    assert history.bytes_per_s() is None
    for n in range(4):
        metrics.inc("syncd_requests_total", 5 * (n + 1), endpoint="upload", status="200")
        metrics.inc("syncd_requests_total", endpoint="upload", status="429")
        metrics.inc("syncd_throttle_events_total", endpoint="upload")
        metrics.inc("syncd_bytes_uploaded_total", 1000)
        clock.now += 10
        history.sample()
    doc = history.json({"upload": 1.0})
    upload = doc["endpoints"]["upload"]
    assert upload["requests_per_s"] == [1.1, 1.6, 2.1]  # the last 30 s: 3 buckets kept
    assert upload["throttled"] == [1, 1, 1]
    assert doc["endpoints"]["metadata"]["requests_per_s"] == [0.0, 0.0, 0.0]
    assert len(doc["ends"]) == 3
    assert history.bytes_per_s(window_s=30) == pytest.approx(100.0)


def test_the_open_bucket_shows_requests_and_throttles_before_the_next_sample() -> None:
    metrics = Metrics()
    clock = Clock()
    history = RateHistory(metrics, bucket_s=10, span_s=60, clock=clock)
    metrics.inc("syncd_requests_total", endpoint="upload", status="200")
    clock.now += 0.5  # too young to be shown: one request would read as 2/s
    assert history.json({})["ends"] == []
    metrics.inc("syncd_requests_total", 3, endpoint="metadata", status="400")
    metrics.inc("syncd_throttle_events_total", 3, endpoint="metadata")
    clock.now += 1.5  # open for 2 s
    doc = history.json({})
    assert len(doc["ends"]) == 1
    assert doc["endpoints"]["upload"]["requests_per_s"] == [0.5]  # 1 request in 2 s
    assert doc["endpoints"]["metadata"]["requests_per_s"] == [1.5]
    assert doc["endpoints"]["metadata"]["throttled"] == [3]
    clock.now += 8
    history.sample()  # the same requests, now in a closed bucket of 10 s
    doc = history.json({})
    assert doc["endpoints"]["metadata"]["requests_per_s"] == [0.3]
    assert doc["endpoints"]["metadata"]["throttled"] == [3]


async def test_the_page_and_its_files_are_served_with_their_types(
    served: tuple[str, Live], http_session: aiohttp.ClientSession
) -> None:
    base, _ = served
    expected = {
        "/": "text/html; charset=utf-8",
        "/static/app.js": "text/javascript; charset=utf-8",
        "/static/app.css": "text/css; charset=utf-8",
        "/static/favicon.svg": "image/svg+xml",
    }
    for path, ctype in expected.items():
        async with http_session.get(base + path) as resp:
            assert (resp.status, resp.headers["Content-Type"]) == (200, ctype), path
            etag = resp.headers["ETag"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
        async with http_session.get(base + path, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
    for path in ("/static/nothing.js", "/static/index.html", "/static/..%2fdashboard.py"):
        async with http_session.get(base + path) as resp:
            assert resp.status == 404, path


async def test_the_first_load_is_under_100_kb(
    served: tuple[str, Live], http_session: aiohttp.ClientSession
) -> None:
    """Everything a browser fetches for ``/`` before it asks the API: the page and what it
    names (script, styles, icon)."""
    base, _ = served
    async with http_session.get(base + "/") as resp:
        html = await resp.text()
    names = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert sorted(names) == ["/static/app.css", "/static/app.js", "/static/favicon.svg"]
    assert "<script>" not in html and "style=" not in html  # nothing inline (the CSP allows none)
    total = len(html.encode())
    for name in names:
        async with http_session.get(base + name) as resp:
            total += len(await resp.read())
    assert total < 100 * 1024
