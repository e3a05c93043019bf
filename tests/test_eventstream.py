"""``/v1/events`` over real HTTP: frames, odd names, heartbeats, resuming, and shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon_process import DaemonProcess
from pipeline_support import config_data, wait_for
from samples import write_media

from syncd.emulator import EmulatorServer
from syncd.events import EventHub
from syncd.ledger.sqlite import Ledger
from syncd.metrics import Metrics
from syncd.ops.dashboard import DaemonView
from syncd.ops.webapi import Health, bound_address, start_http, stop_http

ODD = os.fsdecode(b"/media/<img src=x onerror=alert(1)>\ncaf\xe9.mp4")


def healthy() -> Health:
    return Health(healthy=True, ready=True, reason="")


@pytest.fixture
async def hub_and_base(tmp_path: Path) -> AsyncIterator[tuple[EventHub, str]]:
    ledger = await Ledger.open(str(tmp_path / "ledger.db"))
    hub = EventHub()
    runner = await start_http(
        "127.0.0.1:0",
        ledger=ledger,
        metrics=Metrics(),
        health=healthy,
        daemon=DaemonView(hub=hub),
        heartbeat_s=0.05,
    )
    try:
        yield hub, f"http://{bound_address(runner)}"
    finally:
        await stop_http(runner)
        await ledger.close()


class Frames:
    """Reads an SSE stream frame by frame: ``(fields, comments)``."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self) -> tuple[dict[str, str], list[str]]:
        raw = await asyncio.wait_for(self.resp.content.readuntil(b"\n\n"), 10)
        fields: dict[str, str] = {}
        comments: list[str] = []
        for line in raw.decode().split("\n"):
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
        return fields, comments

    async def event(self) -> dict[str, str]:
        """The next frame that is an event (heartbeats skipped)."""
        while True:
            fields, _ = await self.next()
            if "event" in fields:
                return fields


async def test_each_published_change_is_one_frame_with_one_line_of_json(
    hub_and_base: tuple[EventHub, str], http_session: aiohttp.ClientSession
) -> None:
    hub, base = hub_and_base
    async with http_session.get(f"{base}/v1/events") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
        frames = Frames(resp)
        first, _ = await frames.next()
        assert first == {"retry": "2000"}
        hello = await frames.event()
        assert hello["event"] == "hello"
        assert json.loads(hello["data"]) == {"last_id": 0, "complete": True}
        hub.publish("hashed", path=ODD, sha256="ab" * 32, size=10)
        hub.progress("/media/b.mp4", 0, 100)
        frame = await frames.event()
        assert (frame["id"], frame["event"]) == ("1", "hashed")
        doc = json.loads(frame["data"])
        # The newline and the markup stay inside one JSON string; the odd byte is escaped
        # in the text and given exactly in hex.
        assert doc["path"] == "/media/<img src=x onerror=alert(1)>\ncaf\\xe9.mp4"
        assert bytes.fromhex(doc["path_bytes_hex"]) == os.fsencode(ODD)
        assert (doc["type"], doc["sha256"], doc["size"]) == ("hashed", "ab" * 32, 10)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["time"])
        frame = await frames.event()
        assert frame["event"] == "upload_started"
        assert json.loads(frame["data"])["total_bytes"] == 100


async def test_a_quiet_stream_sends_heartbeat_comments(
    hub_and_base: tuple[EventHub, str], http_session: aiohttp.ClientSession
) -> None:
    _, base = hub_and_base
    async with http_session.get(f"{base}/v1/events") as resp:
        frames = Frames(resp)
        await frames.next()
        await frames.next()  # hello
        _, comments = await frames.next()
        assert comments == ["heartbeat"]


async def test_a_reader_resumes_from_last_event_id(
    hub_and_base: tuple[EventHub, str], http_session: aiohttp.ClientSession
) -> None:
    hub, base = hub_and_base
    for n in range(3):
        hub.publish("hashed", n=n)
    async with http_session.get(f"{base}/v1/events", headers={"Last-Event-ID": "1"}) as resp:
        frames = Frames(resp)
        assert json.loads((await frames.event())["data"]) == {"last_id": 3, "complete": True}
        assert [(await frames.event())["id"] for _ in range(2)] == ["2", "3"]
    async with http_session.get(f"{base}/v1/events?last_event_id=77") as resp:
        hello = json.loads((await Frames(resp).event())["data"])
        assert hello == {"last_id": 3, "complete": False}  # ids of another run: reload


async def test_stopping_the_endpoint_ends_open_streams(
    tmp_path: Path, http_session: aiohttp.ClientSession
) -> None:
    ledger = await Ledger.open(str(tmp_path / "ledger.db"))
    hub = EventHub()
    runner = await start_http(
        "127.0.0.1:0", ledger=ledger, metrics=Metrics(), health=healthy, daemon=DaemonView(hub)
    )
    base = f"http://{bound_address(runner)}"
    try:
        readers = [await http_session.get(f"{base}/v1/events") for _ in range(3)]
        for resp in readers:
            await Frames(resp).event()
        # aiohttp waits up to 60 s for handlers that do not end; these must end at once.
        await asyncio.wait_for(stop_http(runner), 10)
        for resp in readers:
            rest = await asyncio.wait_for(resp.content.read(), 10)
            assert b"event:" not in rest
            resp.release()
    finally:
        await ledger.close()


async def test_without_a_daemon_the_stream_is_unavailable(
    tmp_path: Path, http_session: aiohttp.ClientSession
) -> None:
    ledger = await Ledger.open(str(tmp_path / "ledger.db"))
    runner = await start_http("127.0.0.1:0", ledger=ledger, metrics=Metrics(), health=healthy)
    try:
        async with http_session.get(f"http://{bound_address(runner)}/v1/events") as resp:
            assert resp.status == 503
            assert "error" in await resp.json()
    finally:
        await stop_http(runner)
        await ledger.close()


def http_port(daemon: DaemonProcess) -> str:
    for msg in daemon.messages():
        if msg.startswith("HTTP endpoint on "):
            return msg.rsplit(":", 1)[1]
    raise AssertionError(f"no HTTP endpoint in the log: {daemon.tail()}")


async def test_the_daemon_publishes_and_its_shutdown_does_not_wait_for_open_streams(
    tmp_path: Path, emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    root = tmp_path / "media"
    root.mkdir()
    data = config_data(tmp_path, emulator, [root], http={"listen": "127.0.0.1:0"})
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    await daemon.start()
    base = f"http://127.0.0.1:{http_port(daemon)}"
    try:
        resp = await http_session.get(f"{base}/v1/events")
        idle = await http_session.get(f"{base}/v1/events")  # a reader that reads nothing more
        frames = Frames(resp)
        await frames.event()
        sha = write_media(root / "clip.mp4", seed=7)
        seen: list[tuple[str, dict[str, Any]]] = []
        while not seen or seen[-1][0] != "upload_ended":
            frame = await frames.event()
            seen.append((frame["event"], json.loads(frame["data"])))
        kinds = [k for k, _ in seen]
        for kind in ("settling", "settled", "hashed", "upload_started", "upload_finished"):
            assert kind in kinds, kinds
        finished = dict(seen)["upload_finished"]
        assert finished["sha256"] == sha and finished["asset_id"].startswith("re_")
        assert finished["path"] == str(root / "clip.mp4")
        await wait_for(lambda: any("is SUCCESS" in m for m in daemon.messages()), 20, what="polled")
        # Both streams are open while the daemon stops: it must not wait for them.
        assert await daemon.stop(timeout_s=20) == 0
        assert await asyncio.wait_for(resp.content.read(), 10) is not None
        resp.release()
        idle.release()
    finally:
        if daemon.alive:
            await daemon.kill()


def test_every_event_the_pipeline_publishes_is_documented_and_followed_by_the_page() -> None:
    """docs/operations.md lists each type in its /v1/events table, the page listens for each,
    and the page's screenshot shown there exists."""
    repo = Path(__file__).resolve().parent.parent
    published = set()
    for source in (repo / "syncd").rglob("*.py"):
        published |= set(re.findall(r'publish\(\s*"(\w+)"', source.read_text(encoding="utf-8")))
    published |= {"upload_started", "upload_progress"}  # EventHub.progress
    assert {"settling", "settled", "hashed", "upload_finished", "upload_ended"} <= published
    doc = (repo / "docs" / "operations.md").read_text(encoding="utf-8")
    section = doc.split("#### Following the daemon: `/v1/events`", 1)[1].split("\n#### ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert published | {"hello", "dropped"} == documented
    script = (repo / "syncd" / "ops" / "static" / "app.js").read_text(encoding="utf-8")
    listened = re.search(r"const EVENT_TYPES = \[([^\]]*)\]", script)
    assert listened is not None
    assert set(re.findall(r'"(\w+)"', listened.group(1))) == published
    (shot,) = re.findall(r"!\[[^\]]*\]\((img/dashboard\.png)\)", doc)
    assert (repo / "docs" / shot).read_bytes().startswith(b"\x89PNG")
