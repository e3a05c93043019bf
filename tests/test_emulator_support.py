"""Small HTTP functions shared by the emulator's tests (this module holds no tests)."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import aiohttp

from syncd.emulator import EmulatorServer

ENVELOPE_KEYS = {"code", "msg", "data", "success", "failed"}


def auth(key: str) -> dict[str, str]:
    """Return the Authorization header the API wants: the raw key."""
    return {"Authorization": key}


def file_form(data: bytes, filename: str | None, field: str = "file") -> aiohttp.FormData:
    """Return a multipart form with one part holding ``data``."""
    # A stream, not bytes: aiohttp warns about large bytes bodies, and without a file name it
    # then sends a file part that has none.
    form = aiohttp.FormData()
    form.add_field(
        field, io.BytesIO(data), filename=filename, content_type="application/octet-stream"
    )
    return form


async def call(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    """Send one request; returns ``(status, parsed JSON, text or bytes)``."""
    async with session.request(method, url, **kwargs) as resp:
        raw = await resp.read()
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        if resp.content_type.startswith("text/"):
            return resp.status, raw.decode()
        return resp.status, raw


def check_envelope(body: Any, code: int, msg: str | None = None) -> Any:
    """Assert ``body`` is the API's envelope for ``code`` (and ``msg``); returns its data."""
    assert isinstance(body, dict), body
    assert set(body) == ENVELOPE_KEYS, body
    assert body["code"] == code and isinstance(body["code"], int), body
    assert body["success"] is (code == 200) and body["failed"] is (code != 200), body
    if msg is not None:
        assert body["msg"] == msg, body
    if code != 200:
        assert body["data"] is None, body
    return body["data"]


async def upload(
    session: aiohttp.ClientSession,
    emu: EmulatorServer,
    data: bytes,
    filename: str | None = "clip.mp4",
    *,
    key: str | None = None,
) -> tuple[int, Any]:
    """POST /upload with one ``file`` part; returns ``(status, body)``."""
    return await call(
        session,
        "POST",
        emu.base_url + "/upload",
        data=file_form(data, filename),
        headers=auth(key or emu.key),
    )


async def upload_ok(
    session: aiohttp.ClientSession, emu: EmulatorServer, data: bytes, filename: str = "clip.mp4"
) -> str:
    """Upload and return the new asset id (the upload must succeed)."""
    status, body = await upload(session, emu, data, filename)
    assert status == 200, body
    asset_id: str = check_envelope(body, 200)["asset_id"]
    return asset_id


async def metadata(
    session: aiohttp.ClientSession, emu: EmulatorServer, asset_id: str, key: str | None = None
) -> tuple[int, Any]:
    """GET /{asset_id}/metadata; returns ``(status, body)``."""
    return await call(
        session, "GET", f"{emu.base_url}/{asset_id}/metadata", headers=auth(key or emu.key)
    )


async def wait_status(
    session: aiohttp.ClientSession,
    emu: EmulatorServer,
    asset_id: str,
    wanted: str,
    deadline_s: float = 20.0,
) -> dict[str, Any]:
    """Poll metadata until ``upload_status`` is ``wanted``; returns that resource."""
    end = time.monotonic() + deadline_s
    seen = None
    while time.monotonic() < end:
        status, body = await metadata(session, emu, asset_id)
        assert status == 200, body
        resource: dict[str, Any] = body["data"]["resource"][0]
        seen = resource["upload_status"]
        if seen == wanted:
            return resource
        await asyncio.sleep(0.02)
    raise AssertionError(f"{asset_id} still {seen}, not {wanted}, after {deadline_s} s")


async def wait_until(predicate: Any, deadline_s: float = 20.0, what: str = "condition") -> None:
    """Poll a no-argument predicate until it is true; fails the test after the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
