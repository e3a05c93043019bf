"""The API client against hostile and broken servers: every answer is a classified error.

None of these may crash the client, hang it, make it buffer an answer, follow a redirect, or
yield an asset id. Raw asyncio servers produce what no well-behaved HTTP server would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from samples import write_media
from test_client import (
    KEY,
    ScriptedServer,
    Seen,
    assert_clean_message,
    envelope,
)

from syncd.errors import ApiRetryable
from syncd.upload.client import MaviClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server on loopback whose handler writes whatever bytes the test wants."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/serve/api/v2"

    async def start(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # Swallowing the cancellation from stop(): Python 3.11's start_server logs a
            # cancelled handler task as an error.
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> int:
    """Read a request's head; returns its Content-Length (0 if none)."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def read_request(reader: asyncio.StreamReader) -> None:
    """Read a request's head and its whole body (discarded)."""
    remaining = await read_head(reader)
    while remaining:
        chunk = await reader.read(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("client went away")
        remaining -= len(chunk)


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    server = await RawServer(handler).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def media(tmp_path: Path) -> str:
    path = tmp_path / "clip.mp4"
    write_media(path, size=100_000)
    return str(path)


@pytest.fixture
def big_sparse(tmp_path: Path) -> str:
    """64 MiB: far more than loopback socket buffers can swallow without a reader."""
    path = tmp_path / "big.mp4"
    with open(path, "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42")
        f.truncate(64 << 20)
    return str(path)


def client_for(base_url: str, read_timeout_s: float = 5.0) -> MaviClient:
    return MaviClient(base_url, KEY, connect_timeout_s=2, read_timeout_s=read_timeout_s)


async def expect_retryable(call: Awaitable[Any], endpoint: str, status: int | None) -> ApiRetryable:
    with pytest.raises(ApiRetryable) as info:
        await call
    assert_clean_message(info.value, endpoint, status)
    return info.value


async def poll_until(predicate: Callable[[], bool], deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------
# Proxy pages and wrong answers


async def test_an_html_502_page_from_a_proxy_is_retryable(media: str) -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body><h1>502</h1></body></html>"
    server = await ScriptedServer(
        script=lambda seen, req: web.Response(status=502, text=page, content_type="text/html")
    ).start()
    try:
        async with client_for(server.base_url) as c:
            exc = await expect_retryable(c.upload(media, filename="clip.mp4"), "upload", 502)
            assert "text/html" in str(exc) and "<" not in str(exc)
            await expect_retryable(c.metadata("re_1"), "metadata", 502)
    finally:
        await server.stop()


WRONG_SUCCESS_ANSWERS: list[Any] = [
    b"",
    b"not json at all",
    b'{"code":200,"msg":"success","data":{"asset_id":"re_1"',
    b"[" * 100_000 + b"]" * 100_000,
    [],
    "re_1",
    {"asset_id": "re_1"},
    {"code": 200, "msg": "success", "success": False, "failed": True, "data": {"asset_id": "re_1"}},
    {"code": 200, "msg": "success", "success": True, "failed": True, "data": {"asset_id": "re_1"}},
    {"code": 500, "msg": "boom", "success": False, "failed": True, "data": {"asset_id": "re_1"}},
    {"code": "0001", "msg": "odd", "data": {"asset_id": "re_1"}},
    {"code": True, "msg": "success", "data": {"asset_id": "re_1"}},
    envelope(None),
    envelope({}),
    envelope(["re_1"]),
    envelope({"asset_id": None}),
    envelope({"asset_id": 660727003963174912}),
    envelope({"asset_id": ""}),
    envelope({"asset_id": "re_"}),
    envelope({"asset_id": "re_12ab"}),
    envelope({"asset_id": "re_1 "}),
    envelope({"asset_id": "re_1/../2"}),
    envelope({"asset_id": "RE_1"}),
    envelope({"asset_id": "re_" + "9" * 1000}),
    envelope({"asset_id": "re_1\nX-Injected: yes"}),
]


@pytest.mark.parametrize("answer", WRONG_SUCCESS_ANSWERS)
async def test_a_wrong_answer_with_http_200_never_yields_an_asset_id(
    media: str, answer: Any
) -> None:
    def script(seen: Seen, req: web.Request) -> web.StreamResponse:
        body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        return web.Response(status=200, body=body, content_type="application/json")

    server = await ScriptedServer(script=script).start()
    try:
        async with client_for(server.base_url) as c:
            await expect_retryable(c.upload(media, filename="clip.mp4"), "upload", 200)
            await expect_retryable(c.allocate_signed_url("clip.mp4"), "signed_url", 200)
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("with_length", "status", "prefix"),
    [
        (True, 200, b'{"code":200,"msg":"success","data":{"asset_id":"re_1"},"pad":"'),
        (False, 200, b'{"code":200,"msg":"success","data":{"asset_id":"re_1"},"pad":"'),
        (False, 500, b"<html>"),
    ],
)
async def test_a_100_mb_answer_is_not_read(
    media: str, with_length: bool, status: int, prefix: bytes
) -> None:
    size = 100 << 20
    sent = {"bytes": 0, "done": False}

    async def huge(seen: Seen, req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        if with_length:
            resp.content_length = size
        await resp.prepare(req)
        try:
            await resp.write(prefix)
            block = b"x" * (1 << 20)
            while sent["bytes"] < size:
                await resp.write(block)
                sent["bytes"] += len(block)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        finally:
            sent["done"] = True
        return resp

    server = await ScriptedServer(script=huge).start()
    try:
        async with client_for(server.base_url) as c:
            exc = await expect_retryable(c.upload(media, filename="clip.mp4"), "upload", status)
            if status == 200:
                assert "larger than" in str(exc)
        await poll_until(lambda: sent["done"])
        # Socket buffers take a few MiB; a client reading the whole answer would take all.
        assert sent["bytes"] < 50 << 20
    finally:
        await server.stop()


async def test_an_answer_with_an_oversized_header_is_retryable(media: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 200_000 + b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(handler) as server, client_for(server.base_url) as c:
        await expect_retryable(c.upload(media, filename="clip.mp4"), "upload", None)


@pytest.mark.parametrize(
    "reply",
    [
        b"",  # closes without a word
        b"HTTP/1.1 200 OK\r\nContent-Le",  # closes mid-head
        b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + b'{"code":200,',  # mid-body
        b"THIS IS NOT HTTP\r\n\r\n",
        b"HTTP/1.1 999 Whatever\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_cut_or_garbled_answers_are_retryable(media: str, reply: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async with raw_server(handler) as server, client_for(server.base_url) as c:
        with pytest.raises(ApiRetryable) as info:
            await c.upload(media, filename="clip.mp4")
        assert_clean_message(info.value, "upload", info.value.status)
        with pytest.raises(ApiRetryable):
            await c.metadata("re_1")


async def test_a_connection_reset_is_retryable(media: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        sock = writer.get_extra_info("socket")
        # SO_LINGER with a zero timeout turns the close into a RST.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with raw_server(handler) as server, client_for(server.base_url) as c:
        await expect_retryable(c.upload(media, filename="clip.mp4"), "upload", None)


# ------------------------------------------------------------------------------------------
# Slow and stuck servers


def trickler(interval_s: float, *, head_too: bool = False) -> Handler:
    body = json.dumps(envelope({"asset_id": "re_1"})).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n\r\n" % len(body)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if not head_too:
            writer.write(head)
            await writer.drain()
        for i in range(len(head) * head_too + len(body)):
            data = (head + body) if head_too else body
            await asyncio.sleep(interval_s)
            writer.write(data[i : i + 1])
            await writer.drain()

    return handler


async def test_an_answer_trickling_one_byte_per_second_hits_the_read_timeout(
    media: str,
) -> None:
    async with (
        raw_server(trickler(1.0)) as server,
        client_for(server.base_url, read_timeout_s=0.3) as c,
    ):
        exc = await expect_retryable(c.upload(media, filename="clip.mp4"), "upload", None)
        assert "no complete answer" in str(exc)
        await expect_retryable(c.metadata("re_1"), "metadata", None)


@pytest.mark.parametrize("head_too", [False, True])
async def test_a_trickle_faster_than_the_read_timeout_still_ends(
    media: str, head_too: bool
) -> None:
    # Each byte comes well within read_timeout_s, so only the whole-answer deadline can end it.
    async with (
        raw_server(trickler(0.05, head_too=head_too)) as server,
        client_for(server.base_url, read_timeout_s=0.4) as c,
    ):
        exc = await expect_retryable(c.upload(media, filename="clip.mp4"), "upload", None)
        assert "no complete answer" in str(exc)
        exc = await expect_retryable(c.metadata("re_1"), "metadata", None)
        assert "no complete answer" in str(exc)


async def test_a_server_that_stops_reading_the_upload_is_a_stall(big_sparse: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(60)  # never reads the body

    async with raw_server(handler) as server, client_for(server.base_url, 0.5) as c:
        exc = await expect_retryable(c.upload(big_sparse, filename="big.mp4"), "upload", None)
        assert "stalled" in str(exc)


@pytest.mark.parametrize("then_close", [False, True])
async def test_a_success_answered_before_the_body_was_read_is_not_trusted(
    big_sparse: str, then_close: bool
) -> None:
    body = json.dumps(envelope({"asset_id": "re_1"})).encode()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        if not then_close:
            await asyncio.sleep(60)

    async with raw_server(handler) as server, client_for(server.base_url, 0.5) as c:
        with pytest.raises(ApiRetryable) as info:
            await c.upload(big_sparse, filename="big.mp4")
        assert_clean_message(info.value, "upload", info.value.status)


# ------------------------------------------------------------------------------------------
# Redirects are never followed, and the key never leaves the base URL's host


@pytest.fixture
async def elsewhere() -> AsyncIterator[ScriptedServer]:
    """Another host, where redirects point; it must never see a request."""
    server = await ScriptedServer(host="127.0.0.2").start()
    yield server
    await server.stop()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed_on_any_endpoint(
    media: str, elsewhere: ScriptedServer, status: int
) -> None:
    target = f"{elsewhere.origin}/{KEY}/steal?token=secret-token"

    def script(seen: Seen, req: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": target})

    origin = await ScriptedServer(script=script).start()
    try:
        async with client_for(origin.base_url) as c:
            calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                ("upload", lambda: c.upload(media, filename="clip.mp4")),
                ("signed_url", lambda: c.allocate_signed_url("clip.mp4")),
                ("metadata", lambda: c.metadata("re_1")),
                ("delete", lambda: c.delete("re_1")),
                (
                    "storage",
                    lambda: c.upload_to_signed_url(origin.origin + "/b?s=1", media, filename="x"),
                ),
            ]
            for endpoint, call in calls:
                exc = await expect_retryable(call(), endpoint, status)
                assert "redirect" in str(exc) and "secret-token" not in str(exc)
                assert "127.0.0.2" in str(exc)  # says where it pointed, minus the query
        assert elsewhere.seen == []
        assert len(origin.seen) == 5
    finally:
        await origin.stop()


async def test_a_relative_redirect_is_not_followed_either(media: str) -> None:
    origin = await ScriptedServer(
        script=lambda seen, req: web.Response(status=307, headers={"Location": "/serve/x"})
    ).start()
    try:
        async with client_for(origin.base_url) as c:
            await expect_retryable(c.metadata("re_1"), "metadata", 307)
        assert [s.path for s in origin.seen] == ["/serve/api/v2/re_1/metadata"]
    finally:
        await origin.stop()


async def test_the_key_goes_to_the_api_host_only(media: str, elsewhere: ScriptedServer) -> None:
    def script(seen: Seen, req: web.Request) -> tuple[int, Any]:
        if seen.path.endswith("/signed-url"):
            url = f"{elsewhere.origin}/bucket/o?sig=1"
            return 200, envelope({"asset_id": "re_3", "signed_url": url, "expires_in": 60})
        return 200, envelope({"asset_id": "re_4"})

    elsewhere.script = lambda seen, req: (200, b"")
    origin = await ScriptedServer(script=script).start()
    try:
        async with client_for(origin.base_url) as c:
            signed = await c.allocate_signed_url("clip.mp4")
            await c.upload_to_signed_url(signed.url, media, filename="clip.mp4")
            await c.upload(media, filename="clip.mp4")
        assert all(s.headers.get("Authorization") == KEY for s in origin.seen)
        assert len(elsewhere.seen) == 1
        assert all("Authorization" not in s.headers for s in elsewhere.seen)
        assert all(KEY not in str(s.headers) for s in elsewhere.seen)
    finally:
        await origin.stop()
