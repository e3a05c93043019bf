"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright) against a real ``syncd run`` and the emulator.

``make test`` installs the browser (``make test-deps``); Playwright's own browser downloads are
never used. ``SYNCD_SCREENSHOT=PATH`` also copies the screenshot there (``make screenshot``
regenerates ``docs/img/dashboard.png`` this way).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon_process import DaemonProcess
from pipeline_support import config_data
from samples import media_bytes, write_media

from syncd.emulator import EmulatorServer
from syncd.events import EventHub
from syncd.fingerprint import Fingerprint
from syncd.ingest.settle import Waiting
from syncd.ledger.sqlite import Ledger
from syncd.metrics import Metrics
from syncd.ops.dashboard import DaemonView
from syncd.ops.webapi import Health, bound_address, start_http, stop_http

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parent.parent
BIG_BYTES = 48 * 1024 * 1024
# A name that would be markup if it were ever put in as HTML, with a newline, a tab, an escape
# sequence and a byte that is not UTF-8.
HOSTILE = b"<img src=x onerror=window.__pwned=1>\n\t\x1b[31m\xff.mp4"
HOSTILE_SHOWN = "<img src=x onerror=window.__pwned=1>\\n\\t\\x1b[31m\\xff.mp4"
THROTTLED = "Request has exceeded the limit."

# Records, from the first byte of the page on, every file name that appeared in each list (and
# why each settling one waited), every partial progress bar, and every element that appeared
# inside a cell meant for text: the stages a file passes through, however briefly.
RECORDER = """
window.__seen = {settling: [], uploading: [], finished: [], problems: []};
window.__why = [];
window.__partial = [];
window.__injected = [];
new MutationObserver(() => {
  for (const name of Object.keys(window.__seen)) {
    for (const tr of document.querySelectorAll(`#${name} tbody tr`)) {
      const cells = [...tr.cells].map((td) => td.textContent);
      if (!window.__seen[name].includes(cells[0])) window.__seen[name].push(cells[0]);
      const why = [cells[0], cells[1]];
      if (name === "settling" && !window.__why.some((w) => w[0] === why[0] && w[1] === why[1])) {
        window.__why.push(why);
      }
      for (const child of tr.cells[0].children) window.__injected.push(child.outerHTML);
    }
  }
  for (const bar of document.querySelectorAll("#uploading progress")) {
    if (bar.value > 0 && bar.value < bar.max) window.__partial.push([bar.value, bar.max]);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make test-deps` (Debian's chromium package)")
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def http_base(daemon: DaemonProcess) -> str:
    for msg in daemon.messages():
        if msg.startswith("HTTP endpoint on "):
            return "http://" + msg.removeprefix("HTTP endpoint on ")
    raise AssertionError(f"no HTTP endpoint in the log: {daemon.tail()}")


@pytest.fixture
async def running(tmp_path: Path, emulator: EmulatorServer) -> AsyncIterator[tuple[str, Path]]:
    """A daemon watching an empty folder, serving the dashboard on a free port."""
    root = tmp_path / "media"
    root.mkdir()
    data = config_data(
        tmp_path,
        emulator,
        [root],
        http={"listen": "127.0.0.1:0"},
        settle={"quiet_s": 1.0, "max_wait_s": 60},
        upload={"workers": 2},
    )
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    await daemon.start()
    try:
        yield http_base(daemon), root
        assert await daemon.stop() == 0, daemon.tail()
    finally:
        if daemon.alive:
            await daemon.kill()


async def test_a_dropped_file_goes_live_from_settling_to_done_and_odd_names_stay_text(
    running: tuple[str, Path], emulator: EmulatorServer, browser: Any, tmp_path: Path
) -> None:
    base, root = running
    # The big file's body is held back for 5 s after its first bytes: long enough to see its
    # progress bar part-way. The rejected one is refused as an unsupported type (415). The
    # first two status polls are throttled; later the key is refused (401) for one file.
    emulator.add_faults(
        {"endpoint": "upload", "filename": "big.mp4", "latency_s": 5, "count": 1},
        {"endpoint": "upload", "filename": "reject-me.mp4", "status": 415, "count": 100},
        {"endpoint": "metadata", "status": 400, "msg": THROTTLED, "count": 2},
    )
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    loads: list[str] = []
    page.on("load", lambda: loads.append(page.url))
    finished: list[Any] = []
    page.on("requestfinished", lambda r: finished.append(r))
    await page.add_init_script(RECORDER)
    await page.goto(base + "/")
    await page.wait_for_selector("#link:text('live')")
    await page.locator("#finished-count:text('none yet')").wait_for()

    # The first load, as the browser received it (headers and bodies): the page, its files and
    # the first answers of the API, the event stream's headers aside.
    first_load = 0
    for request in list(finished):
        sizes = await request.sizes()
        first_load += sizes["responseHeadersSize"] + sizes["responseBodySize"]
    urls = {r.url.removeprefix(base) for r in finished}
    assert {"/", "/static/app.js", "/static/app.css", "/v1/status"} <= urls, urls
    assert 0 < first_load < 100 * 1024, first_load

    big = root / "big.mp4"
    big.write_bytes(media_bytes("mp4", BIG_BYTES, seed=1))
    write_media(root / "reject-me.mp4", seed=2)
    hostile = os.fsdecode(os.fsencode(str(root)) + b"/" + HOSTILE)
    with open(os.fsencode(hostile), "wb") as f:
        f.write(media_bytes("mp4", 4096, seed=3))
    # A file still being written: open, half of it, a pause, the rest.
    held = root / "held.mp4"
    with held.open("wb") as f:
        f.write(media_bytes("mp4", 8192, seed=5)[:4096])
        f.flush()
        await page.locator("#settling tbody tr", has_text="held.mp4").wait_for(timeout=10_000)
        await asyncio.sleep(3)
        f.write(media_bytes("mp4", 8192, seed=5)[4096:])

    # Done with its asset id, in the finished list, without a reload.
    row = page.locator("#finished tbody tr", has_text="big.mp4")
    await row.wait_for(timeout=60_000)
    asset_id = (await row.locator("td.asset").text_content() or "").strip()
    assert asset_id.startswith("re_")
    await (
        page.locator("#finished tbody tr", has_text="big.mp4")
        .locator("td:text('SUCCESS')")
        .wait_for(timeout=30_000)
    )
    seen = await page.evaluate("window.__seen")
    for stage in ("settling", "uploading", "finished"):
        assert str(big) in seen[stage], (stage, seen)
    partial = await page.evaluate("window.__partial")
    assert any(value < top == BIG_BYTES for value, top in partial), partial
    # Why the held file waited, in words, while it was open.
    whys = [why for name, why in await page.evaluate("window.__why") if name == str(held)]
    assert any(why.startswith("open for writing") for why in whys), whys

    # The rejected file, under problems, with its error and the command to retry it.
    bad = page.locator("#problems tbody tr", has_text="reject-me.mp4")
    await bad.wait_for(timeout=30_000)
    text = await bad.text_content() or ""
    assert "rejected" in text and "syncd retry " in text

    # The hostile name is text: escaped newline, tab, escape and byte, and no element made of
    # it, in any list it passed through.
    shown = f"{root}/{HOSTILE_SHOWN}"
    await page.locator("#finished td", has_text="onerror").first.wait_for(timeout=30_000)
    seen = await page.evaluate("window.__seen")
    assert shown in seen["settling"] and shown in seen["finished"], seen
    assert await page.evaluate("window.__injected") == []
    assert await page.evaluate("document.querySelectorAll('img').length") == 0
    assert await page.evaluate("window.__pwned === undefined")

    # The counts catch up too: three files done, one rejected. The throttled polls are red
    # dots on the metadata line of the plot.
    await page.locator("#counts [data-state=done] b:text-is('3')").wait_for(timeout=15_000)
    await page.locator("#counts [data-state=rejected] b:text-is('1')").wait_for(timeout=15_000)
    dots = page.locator("#plot circle.throttled[data-endpoint=metadata]")
    await dots.first.wait_for(timeout=15_000)

    # Search: by asset id, by a part of a path, by sha256; each shows the show view.
    found = page.locator("#found-body")
    await page.fill("#q", "reject-me")
    await page.click("#search button")
    await found.locator("dd:text('rejected')").wait_for(timeout=10_000)
    sha = await found.locator("dt:text-is('sha256') + dd").text_content() or ""
    assert len(sha) == 64
    await page.fill("#q", sha)
    await page.click("#search button")
    await found.locator(f"li:text('{root}/reject-me.mp4')").wait_for(timeout=10_000)
    await page.fill("#q", asset_id)
    await page.click("#search button")
    await found.locator(f"dd:text('{asset_id}')").wait_for(timeout=10_000)
    assert str(big) in (await found.text_content() or "")

    # The key refused (401): uploads pause, and the page says why, problems first.
    emulator.add_faults(
        {"endpoint": "upload", "filename": "locked.mp4", "status": 401, "count": 1000}
    )
    write_media(root / "locked.mp4", seed=6)
    pause = page.locator("#pause")
    await pause.wait_for(timeout=30_000)
    assert "the API refused the key (HTTP 401)" in (await pause.text_content() or "")

    await page.click("#found-close")  # the picture shows the page as it opens
    await page.locator("#found").wait_for(state="hidden")
    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    print(f"screenshot: {tmp_path / 'dashboard.png'}")
    target = os.environ.get("SYNCD_SCREENSHOT")
    if target:
        shutil.copyfile(tmp_path / "dashboard.png", REPO / target)
    assert loads == [base + "/"]  # every change above came without a reload
    # Read-only: the page never asked anything but GET, of its own origin only.
    assert {(r.method, r.url.startswith(base + "/")) for r in finished} == {("GET", True)}
    assert problems == []


async def test_dns_rebinding_is_refused_by_the_running_daemon(
    running: tuple[str, Path], http_session: aiohttp.ClientSession
) -> None:
    base, _ = running
    port = base.rsplit(":", 1)[1]
    for path in ("/", "/v1/status", "/v1/events"):
        headers = {"Host": f"attacker.example:{port}"}
        async with http_session.get(base + path, headers=headers) as resp:
            assert resp.status == 421, path
            assert "misdirected request" in await resp.text()
    async with http_session.get(base + "/v1/status", headers={"Host": f"localhost:{port}"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["daemon"]["running"] is True


async def test_the_page_in_the_browser_has_no_console_errors_and_polls_without_events(
    running: tuple[str, Path], browser: Any
) -> None:
    """With EventSource gone (an old browser, a proxy that buffers), it polls instead, and
    still shows a watched folder that vanished."""
    base, root = running
    page = await browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.add_init_script("delete window.EventSource;")
    await page.goto(base + "/")
    await page.wait_for_selector("#link:text('polling every 5 s')")
    write_media(root / "polled.mp4", seed=4)
    await page.locator("#finished tbody tr", has_text="polled.mp4").wait_for(timeout=60_000)
    # The watched folder vanishes (moved away): a problem, by the next poll.
    root.rename(root.with_name("moved-away"))
    gone = page.locator("#root-problems li", has_text="is not available")
    await gone.wait_for(timeout=30_000)
    assert str(root) in (await gone.text_content() or "")
    assert json.loads(await page.evaluate("JSON.stringify(document.title)")) == "syncd"
    assert problems == []


class Scripted:
    """A daemon's live side in a state the real one reaches only slowly or with root: uploads
    paused after a 401, a cool-down, a watched folder gone, the inotify limit hit, a file held
    open by this very process, an upload part-way."""

    def __init__(self, folder: str) -> None:
        self.hub = EventHub()
        self.folder = folder
        reason = "the API refused the key (HTTP 401): check MAVI_API_KEY / api.key_file"
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 300))
        self.state: dict[str, Any] = {
            "healthy": False,
            "ready": True,
            "reason": reason,
            "queue": {"settling": 1, "hashing": 0, "upload_queued": 0, "uploading": 1},
            "paused": {"kind": "auth", "reason": reason, "until": until},
            "cooldowns": [{"endpoint": "metadata", "remaining_s": 12.0}],
            "roots": [
                {"path": "/srv/gone", "available": False, "watched": False, "watch_limit_hits": 0},
                {"path": "/srv/deep", "available": True, "watched": True, "watch_limit_hits": 3},
            ],
        }

    def settling(self, limit: int, offset: int) -> tuple[int, list[Waiting]]:
        held = Waiting(
            f"{self.folder}/held.mp4",
            self.folder,
            time.time() - 3,
            "proc",
            (os.getpid(),),
            "open for writing by process",
        )
        return 1, [held][offset : offset + limit]

    def view(self) -> DaemonView:
        return DaemonView(
            hub=self.hub,
            snapshot=lambda: self.state,
            settling=self.settling,
            roots=lambda: [self.folder],
            limits_per_s={"upload": 1.0, "signed_url": 1.0, "metadata": 1.0},
        )


async def test_problems_the_pause_the_budget_and_odd_names_render_as_text(
    tmp_path: Path, browser: Any
) -> None:
    ledger = await Ledger.open(str(tmp_path / "ledger.db"))
    folder = "/srv/media"
    # Every kind of odd name: markup, a newline, a tab, an escape sequence, a byte that is
    # not UTF-8.
    odd = os.fsdecode(folder.encode() + b"/<script>window.__pwned=1</script>\n\t\x1b[31m\xff.mp4")
    for n, (path, state) in enumerate([(odd, "rejected"), (f"{folder}/broken.mp4", "failed")]):
        sha = f"{n + 1:064x}"
        await ledger.record_content(path, folder, Fingerprint(1, n, 10, 1, 1), sha, "mp4")
        att = await ledger.begin_attempt(sha, path, "direct")
        await ledger.give_up(
            sha, att, state=state, outcome=state, error=f"HTTP 4{n}{n}", http_status=400
        )
    metrics = Metrics()
    scripted = Scripted(folder)
    unhealthy = Health(healthy=False, ready=True, reason=scripted.state["reason"])
    runner = await start_http(
        "127.0.0.1:0",
        ledger=ledger,
        metrics=metrics,
        health=lambda: unhealthy,
        daemon=scripted.view(),
    )
    try:
        base = f"http://{bound_address(runner)}"
        # Counted after the endpoint took its first reading: the plot's open bucket.
        metrics.inc("syncd_requests_total", 2, endpoint="upload", status="200")
        metrics.inc("syncd_requests_total", 3, endpoint="metadata", status="400")
        metrics.inc("syncd_throttle_events_total", 3, endpoint="metadata")
        scripted.hub.progress(f"{folder}/big.mov", 0, 1000)
        scripted.hub.progress(f"{folder}/big.mov", 400, 1000)
        await asyncio.sleep(1.2)  # the open bucket is shown once it is a second old

        page = await browser.new_page(
            viewport={"width": 1280, "height": 1000},
            permissions=["clipboard-read", "clipboard-write"],
        )
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        await page.goto(base + "/")
        await page.wait_for_selector("#link:text('live')")

        pause = page.locator("#pause")
        await pause.wait_for()
        text = await pause.text_content() or ""
        assert text.startswith("Uploads paused: the API refused the key (HTTP 401): check"), text
        assert "one upload tries again in 4 min" in text, text
        assert await pause.get_attribute("data-kind") == "auth"
        roots = await page.locator("#root-problems li").all_text_contents()
        assert any("/srv/gone" in r and "not available" in r for r in roots), roots
        assert any("/srv/deep" in r and "inotify watch limit" in r for r in roots), roots
        assert "metadata cooling down for 12 s" in (await page.text_content("#cooldowns") or "")
        assert await page.locator("#plot circle.throttled[data-endpoint=metadata]").count() == 1
        assert await page.locator("#plot circle.throttled[data-endpoint=upload]").count() == 0
        assert await page.locator("#plot polyline[data-endpoint=upload]").count() == 1

        why = page.locator("#settling tbody tr", has_text="held.mp4").locator("td").nth(1)
        assert (await why.text_content() or "").startswith("open for writing by ")
        assert str(os.getpid()) in (await why.text_content() or "")
        bar = page.locator("#uploading progress")
        assert (await bar.get_attribute("max"), await bar.evaluate("b => b.value")) == ("1000", 400)

        rows = page.locator("#problems tbody tr")
        assert await rows.count() == 2
        failed = page.locator("#problems tbody tr", has_text="broken.mp4")
        assert "HTTP 411" in (await failed.text_content() or "")
        await failed.locator("button:text('copy')").click()
        await failed.locator("button:text('copied')").wait_for()
        copied = await page.evaluate("navigator.clipboard.readText()")
        assert copied == f"syncd retry {2:064x}"

        # The odd name is one line of text: escaped, and no element made of it.
        shown = folder + "/<script>window.__pwned=1</script>\\n\\t\\x1b[31m\\xff.mp4"
        cell = page.locator("#problems tbody tr", has_text="HTTP 400").locator("td").first
        assert await cell.text_content() == shown
        assert await cell.evaluate("td => td.children.length") == 0
        assert await page.evaluate("document.querySelectorAll('main script').length") == 0
        assert await page.evaluate("window.__pwned === undefined")
        await page.screenshot(path=str(tmp_path / "dashboard-problems.png"), full_page=True)
        assert problems == []
    finally:
        await stop_http(runner)
        await ledger.close()


async def test_when_the_stream_is_refused_the_page_polls_the_status_instead(
    tmp_path: Path, browser: Any
) -> None:
    """An endpoint without a daemon answers /v1/events with 503: the browser's EventSource
    gives up for good on that, and the page must poll rather than wait for it."""
    ledger = await Ledger.open(str(tmp_path / "ledger.db"))
    sha = "ab" * 32
    await ledger.record_content("/srv/a.mp4", "/srv", Fingerprint(1, 1, 10, 1, 1), sha, "mp4")
    att = await ledger.begin_attempt(sha, "/srv/a.mp4", "direct")
    await ledger.finish_upload(sha, att, "re_7", bytes_sent=10, http_status=200, next_poll_at=None)
    runner = await start_http(
        "127.0.0.1:0",
        ledger=ledger,
        metrics=Metrics(),
        health=lambda: Health(healthy=True, ready=True, reason=""),
    )
    try:
        base = f"http://{bound_address(runner)}"
        page = await browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(base + "/")
        await page.wait_for_selector("#link:text('polling every 5 s')", timeout=10_000)
        assert await page.text_content("#health") == "no daemon"
        await page.locator("#finished tbody tr", has_text="re_7").wait_for()
        # The browser reports the refused stream itself; nothing else went wrong.
        assert [e for e in errors if "503" not in e and "event-stream" not in e] == []
    finally:
        await stop_http(runner)
        await ledger.close()
