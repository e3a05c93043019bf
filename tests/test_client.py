"""The API client against purpose-built servers over real HTTP on loopback.

``ScriptedServer`` records every request it receives (headers, multipart part headers, the
SHA-256 of the file part streamed through it) and answers with whatever the test scripts.
The hostile-answer tests in ``test_client_hostile.py`` reuse it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import ssl
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from samples import write_media

from syncd.chunksums import SUM_BYTES, ChunkSums
from syncd.emulator import EmulatorServer
from syncd.emulator.clock import FakeClock
from syncd.errors import (
    ApiAlreadyStored,
    ApiAuthError,
    ApiError,
    ApiNoCredits,
    ApiNotFound,
    ApiPermanent,
    ApiRetryable,
    ApiThrottled,
    ApiUnusableAnswer,
    ConfigError,
    SignedUrlExpired,
)
from syncd.fingerprint import Fingerprint
from syncd.ingest.hashing import Hasher
from syncd.upload.client import (
    AssetStatus,
    BytesChanged,
    LocalFileError,
    MaviClient,
    multipart_filename,
)
from syncd.upload.filebody import READ_BATCH_BYTES

KEY = "sk-mavi-T3stK3y0123456789abcdefXYZ"
BASE_PATH = "/serve/api/v2"
THROTTLE_MSG = "Request has exceeded the limit."


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    disposition: str | None = None  # the file part's raw Content-Disposition
    part_type: str | None = None
    parsed_filename: str | None = None  # what aiohttp's multipart parser makes of it
    file_sha256: str | None = None
    file_bytes: int = 0
    json_body: Any = None


Answer = tuple[int, Any] | web.StreamResponse
Script = Callable[[Seen, web.Request], Awaitable[Answer] | Answer]


def envelope(data: Any = None, *, code: Any = 200, msg: str = "success") -> dict[str, Any]:
    ok = code in (200, "200", "0000")
    return {"code": code, "msg": msg, "data": data, "success": ok, "failed": not ok}


def error_envelope(status: int, msg: str) -> dict[str, Any]:
    return {"code": status, "msg": msg, "data": None, "success": False, "failed": True}


def default_script(seen: Seen, request: web.Request) -> Answer:
    if seen.path.endswith("/upload"):
        return 200, envelope({"asset_id": "re_660727003963174912"})
    return 404, error_envelope(404, "no such route")


@dataclass
class ScriptedServer:
    """A real aiohttp server on loopback that records requests and answers as scripted."""

    host: str = "127.0.0.1"
    script: Script = default_script
    ssl_context: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def origin(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + BASE_PATH

    async def start(self) -> ScriptedServer:
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0, ssl_context=self.ssl_context)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.path, request.rel_url.raw_query_string, request.headers)
        self.seen.append(seen)
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                seen.disposition = part.headers.get("Content-Disposition")
                seen.part_type = part.headers.get("Content-Type")
                with warnings.catch_warnings(record=True):
                    warnings.simplefilter("always")
                    seen.parsed_filename = part.filename  # type: ignore[union-attr]
                sha = hashlib.sha256()
                while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                    sha.update(chunk)
                    seen.file_bytes += len(chunk)
                seen.file_sha256 = sha.hexdigest()
        elif ctype.startswith("application/json"):
            seen.json_body = await request.json()
        answer = self.script(seen, request)
        if asyncio.iscoroutine(answer):
            answer = await answer
        if isinstance(answer, web.StreamResponse):
            return answer
        status, body = answer  # type: ignore[misc]
        if isinstance(body, bytes | str):
            return web.Response(status=status, body=body, content_type="text/plain")
        return web.json_response(body, status=status)


@pytest.fixture
async def api() -> AsyncIterator[ScriptedServer]:
    server = await ScriptedServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def storage() -> AsyncIterator[ScriptedServer]:
    """A second server on another loopback address: the signed-URL storage host."""
    server = await ScriptedServer(host="127.0.0.2").start()
    yield server
    await server.stop()


@pytest.fixture
async def client(api: ScriptedServer) -> AsyncIterator[MaviClient]:
    async with MaviClient(api.base_url, KEY, connect_timeout_s=5, read_timeout_s=10) as c:
        yield c


@pytest.fixture
def media(tmp_path: Path) -> tuple[str, str, int]:
    """A small MP4 file: (path, sha256, size)."""
    path = tmp_path / "clip.mp4"
    sha = write_media(path, size=300_000)
    return str(path), sha, 300_000


def assert_clean_message(exc: ApiError, endpoint: str, status: int | None) -> None:
    text = str(exc)
    assert KEY not in text and KEY not in repr(exc)
    assert "\n" not in text and "\r" not in text
    assert text.startswith(f"{endpoint}: ")
    assert exc.endpoint == endpoint
    assert exc.status == status
    if status is not None:
        assert f"HTTP {status}" in text


# ------------------------------------------------------------------------------------------
# Direct upload


@pytest.mark.parametrize("code", [200, "200", "0000"])
async def test_upload_success_for_every_success_code(
    api: ScriptedServer, client: MaviClient, media: tuple[str, str, int], code: Any
) -> None:
    path, sha, size = media
    api.script = lambda seen, req: (200, envelope({"asset_id": "re_42"}, code=code))
    calls: list[int] = []
    result = await client.upload(path, filename="clip.mp4", on_headers_sent=lambda: calls.append(1))
    assert result.asset_id == "re_42"
    assert result.sha256 == sha
    assert result.bytes_sent == size
    assert result.http_status == 200
    assert calls == [1]
    (seen,) = api.seen
    assert (seen.method, seen.path) == ("POST", f"{BASE_PATH}/upload")
    assert seen.headers["Authorization"] == KEY  # the raw key, no "Bearer"
    assert seen.file_sha256 == sha and seen.file_bytes == size
    assert seen.disposition == 'form-data; name="file"; filename="clip.mp4"'
    assert seen.part_type == "video/mp4"
    # A known length, not chunked encoding.
    assert "Transfer-Encoding" not in seen.headers
    assert int(seen.headers["Content-Length"]) > size


async def test_upload_sends_the_filename_it_is_given_not_the_path(
    api: ScriptedServer, client: MaviClient, media: tuple[str, str, int]
) -> None:
    path, _, _ = media
    await client.upload(path, filename="Holiday.MOV")
    assert api.seen[0].parsed_filename == "Holiday.MOV"
    assert api.seen[0].part_type == "video/quicktime"
    await client.upload(path, filename="notes.bin")
    assert api.seen[1].part_type == "application/octet-stream"


@pytest.mark.parametrize(
    ("name", "on_wire"),
    [
        ("vidéo 日本語 🎬.mp4", "vidéo 日本語 🎬.mp4"),
        ('say "cheese".jpg', "say %22cheese%22.jpg"),
        ("two\nlines\r.mp4", "two%0Alines%0D.mp4"),
        ("a;b;c.mp4", "a%3Bb%3Bc.mp4"),
        ("back\\slash.mp4", "back%5Cslash.mp4"),
        ("tab\there.mp4", "tab%09here.mp4"),
        (os.fsdecode(b"caf\xe9 latin1.mp4"), "caf\ufffd latin1.mp4"),
        ("lone\ud800surrogate.mp4", "lone?surrogate.mp4"),
    ],
)
async def test_any_filename_is_encoded_as_one_wellformed_value(
    api: ScriptedServer, client: MaviClient, media: tuple[str, str, int], name: str, on_wire: str
) -> None:
    path, sha, _ = media
    assert multipart_filename(name) == on_wire
    result = await client.upload(path, filename=name)
    assert result.sha256 == sha
    (seen,) = api.seen
    assert seen.disposition == f'form-data; name="file"; filename="{on_wire}"'
    assert seen.parsed_filename == on_wire  # an off-the-shelf parser reads it back intact


async def test_a_path_with_undecodable_bytes_is_opened_as_is(
    api: ScriptedServer, client: MaviClient, tmp_path: Path
) -> None:
    raw = os.fsencode(tmp_path) + b"/\xff\xfe clip.mp4"
    with open(raw, "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + b"x" * 5000)
    expected = hashlib.sha256(b"\x00\x00\x00\x18ftypmp42" + b"x" * 5000).hexdigest()
    path = os.fsdecode(raw)
    result = await client.upload(path, filename=os.path.basename(path))
    assert result.sha256 == expected
    assert api.seen[0].parsed_filename == "\ufffd\ufffd clip.mp4"


async def test_an_empty_file_is_sent_with_an_empty_part(
    api: ScriptedServer, client: MaviClient, tmp_path: Path
) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    result = await client.upload(str(path), filename="empty.mp4")
    assert result.bytes_sent == 0
    assert result.sha256 == hashlib.sha256(b"").hexdigest()
    assert api.seen[0].file_bytes == 0


# ------------------------------------------------------------------------------------------
# Classification of statuses


STATUS_CASES: list[tuple[int, str, type[ApiError]]] = [
    (400, THROTTLE_MSG, ApiThrottled),
    (429, "Too Many Requests", ApiThrottled),
    (401, "Unauthorized", ApiAuthError),
    (403, "Forbidden", ApiAuthError),
    (402, "Insufficient balance", ApiNoCredits),
    (415, "Unsupported Media Type", ApiPermanent),
    (404, "Not Found", ApiPermanent),
    (405, "Method Not Allowed", ApiPermanent),
    (409, "Conflict", ApiPermanent),
    (408, "Request Timeout", ApiRetryable),
    (500, "The network is abnormal, please try again later", ApiRetryable),
    (502, "Bad Gateway", ApiRetryable),
    (503, "Service Unavailable", ApiRetryable),
    (504, "Gateway Timeout", ApiRetryable),
]


@pytest.mark.parametrize(("status", "msg", "cls"), STATUS_CASES)
async def test_upload_statuses_are_classified(
    api: ScriptedServer,
    client: MaviClient,
    media: tuple[str, str, int],
    status: int,
    msg: str,
    cls: type[ApiError],
) -> None:
    api.script = lambda seen, req: (status, error_envelope(status, msg))
    with pytest.raises(cls) as info:
        await client.upload(media[0], filename="clip.mp4")
    assert type(info.value) is cls
    assert_clean_message(info.value, "upload", status)
    assert msg in str(info.value)


@pytest.mark.parametrize(("status", "msg", "cls"), STATUS_CASES)
async def test_metadata_statuses_are_classified(
    api: ScriptedServer, client: MaviClient, status: int, msg: str, cls: type[ApiError]
) -> None:
    api.script = lambda seen, req: (status, error_envelope(status, msg))
    with pytest.raises(cls) as info:
        await client.metadata("re_1")
    assert type(info.value) is cls
    assert_clean_message(info.value, "metadata", status)


@pytest.mark.parametrize("msg", ["Asset not found", "asset not found.", " Asset not found "])
async def test_asset_not_found_is_its_own_class(
    api: ScriptedServer, client: MaviClient, msg: str
) -> None:
    api.script = lambda seen, req: (400, error_envelope(400, msg))
    with pytest.raises(ApiNotFound) as info:
        await client.metadata("re_7")
    assert_clean_message(info.value, "metadata", 400)
    with pytest.raises(ApiNotFound):
        await client.delete("re_7")
    assert isinstance(info.value, ApiPermanent)


async def test_a_key_echoed_by_the_server_is_masked(
    api: ScriptedServer, client: MaviClient, media: tuple[str, str, int]
) -> None:
    api.script = lambda seen, req: (401, error_envelope(401, f"bad key {KEY}\nrejected"))
    with pytest.raises(ApiAuthError) as info:
        await client.upload(media[0], filename="clip.mp4")
    assert_clean_message(info.value, "upload", 401)
    assert "<key>" in str(info.value)


async def test_connection_refused_is_retryable(tmp_path: Path, media: tuple[str, str, int]) -> None:
    server = await ScriptedServer().start()
    base = server.base_url
    await server.stop()  # nothing listens on that port any more
    async with MaviClient(base, KEY, connect_timeout_s=2, read_timeout_s=2) as c:
        with pytest.raises(ApiRetryable) as info:
            await c.upload(media[0], filename="clip.mp4")
        assert_clean_message(info.value, "upload", None)
        with pytest.raises(ApiRetryable):
            await c.metadata("re_1")


# ------------------------------------------------------------------------------------------
# Local file problems


async def test_a_missing_file_fails_locally_before_any_request(
    api: ScriptedServer, client: MaviClient, tmp_path: Path
) -> None:
    calls: list[int] = []
    with pytest.raises(LocalFileError) as info:
        await client.upload(
            str(tmp_path / "gone.mp4"), filename="gone.mp4", on_headers_sent=lambda: calls.append(1)
        )
    assert isinstance(info.value, OSError)
    assert info.value.errno == 2
    assert "gone.mp4" in str(info.value)
    with pytest.raises(LocalFileError, match="not a regular file"):
        await client.upload(str(tmp_path), filename="dir.mp4")
    assert api.seen == [] and calls == []


async def test_a_file_that_shrinks_mid_upload_is_a_local_error(
    api: ScriptedServer, tmp_path: Path
) -> None:
    path = tmp_path / "shrinks.mp4"
    write_media(path, size=3 << 20)
    async with MaviClient(api.base_url, KEY, chunk_bytes=1 << 20) as c:
        with pytest.raises(LocalFileError, match="shrank"):
            # The callback runs just before the first body byte: truncate the file then.
            await c.upload(
                str(path), filename="shrinks.mp4", on_headers_sent=lambda: os.truncate(path, 1000)
            )
    # Whatever reached the server was incomplete, and no asset id came back to anyone.
    assert all(s.file_sha256 is None or s.file_bytes < 3 << 20 for s in api.seen)


async def test_a_file_that_grows_mid_upload_sends_and_hashes_the_original_length(
    api: ScriptedServer, tmp_path: Path
) -> None:
    path = tmp_path / "grows.mp4"
    sha = write_media(path, size=2 << 20)

    def grow() -> None:
        with open(path, "ab") as f:
            f.write(b"appended" * 1000)

    async with MaviClient(api.base_url, KEY, chunk_bytes=256 << 10) as c:
        result = await c.upload(str(path), filename="grows.mp4", on_headers_sent=grow)
    assert result.sha256 == sha
    assert result.bytes_sent == 2 << 20
    assert api.seen[0].file_sha256 == sha


async def test_a_failing_callback_does_not_break_the_upload(
    api: ScriptedServer, client: MaviClient, media: tuple[str, str, int]
) -> None:
    def boom() -> None:
        raise RuntimeError("callback bug")

    result = await client.upload(media[0], filename="clip.mp4", on_headers_sent=boom)
    assert result.asset_id == "re_660727003963174912"


# ------------------------------------------------------------------------------------------
# Streaming a large file with flat memory


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field_name} not in /proc/self/status")


async def test_a_256_mib_file_streams_with_flat_memory_and_the_right_hash(
    api: ScriptedServer, tmp_path: Path
) -> None:
    size = 256 << 20
    path = tmp_path / "big.mkv"
    with open(path, "wb") as f:  # sparse, with a few real bytes so the hash means something
        f.write(b"\x1a\x45\xdf\xa3 head")
        f.seek(size // 2)
        f.write(b"middle")
        f.truncate(size)
        f.seek(size - 4)
        f.write(b"tail")

    def file_sha() -> str:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                sha.update(block)
        return sha.hexdigest()

    expected = await asyncio.to_thread(file_sha)
    # Reset the peak-RSS mark so the peak below belongs to this upload alone.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before_kib = _rss_kib("VmRSS")
    async with MaviClient(api.base_url, KEY) as c:
        result = await c.upload(str(path), filename="big.mkv")
    growth_mib = (_rss_kib("VmHWM") - before_kib) / 1024
    assert result.sha256 == expected
    assert result.bytes_sent == size
    assert api.seen[0].file_sha256 == expected
    assert api.seen[0].file_bytes == size
    # Client and server share this process; a buffered upload would add >= 256 MiB.
    assert growth_mib < 64, f"peak RSS grew by {growth_mib:.0f} MiB"


# ------------------------------------------------------------------------------------------
# Signed URL


def signed_script(storage: ScriptedServer, *, expires_in: Any = 93600) -> Script:
    def script(seen: Seen, req: web.Request) -> Answer:
        if seen.path == f"{BASE_PATH}/upload/signed-url":
            url = f"{storage.origin}/bucket/re_77?X-Goog-Signature=ab%2Fcd%3D&X-Goog-Expires=60"
            return 200, envelope({"asset_id": "re_77", "signed_url": url, "expires_in": expires_in})
        return 404, error_envelope(404, "no")

    return script


async def test_signed_url_flow_never_sends_the_key_to_storage(
    api: ScriptedServer, storage: ScriptedServer, client: MaviClient, media: tuple[str, str, int]
) -> None:
    path, sha, size = media
    api.script = signed_script(storage)
    storage.script = lambda seen, req: (200, b"")
    before = time.time()
    signed = await client.allocate_signed_url("clip.mp4")
    assert signed.asset_id == "re_77"
    assert before + 93600 <= signed.expires_at <= time.time() + 93600
    (alloc,) = api.seen
    assert alloc.method == "POST" and alloc.headers["Authorization"] == KEY
    assert alloc.json_body == {"original_filename": "clip.mp4"}

    result = await client.upload_to_signed_url(signed.url, path, filename="clip.mp4")
    assert result.asset_id is None
    assert (result.sha256, result.bytes_sent, result.http_status) == (sha, size, 200)
    (put,) = storage.seen
    assert "Authorization" not in put.headers
    assert put.method == "POST" and put.path == "/bucket/re_77"
    assert put.query_string == "X-Goog-Signature=ab%2Fcd%3D&X-Goog-Expires=60"  # untouched
    assert put.file_sha256 == sha
    assert len(api.seen) == 1  # nothing else went to the API host


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_any_2xx_from_storage_means_accepted(
    storage: ScriptedServer, client: MaviClient, media: tuple[str, str, int], status: int
) -> None:
    storage.script = lambda seen, req: web.Response(status=status, text="<ok/>" * (status != 204))
    result = await client.upload_to_signed_url(
        f"{storage.origin}/b/o?sig=1", media[0], filename="clip.mp4"
    )
    assert result.http_status == status


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (403, b"<Error><Code>AccessDenied</Code></Error>", SignedUrlExpired),
        (401, b"", SignedUrlExpired),
        (400, b"<Error><Code>ExpiredToken</Code></Error>", SignedUrlExpired),
        (400, b"<Error><Code>InvalidArgument</Code></Error>", ApiThrottled),
        (429, b"slow down", ApiThrottled),
        (404, b"NoSuchBucket", ApiPermanent),
        (409, b"Conflict: no longer waiting", ApiAlreadyStored),
        (500, b"oops", ApiRetryable),
        (503, b"", ApiRetryable),
    ],
)
async def test_storage_refusals_are_classified(
    storage: ScriptedServer,
    client: MaviClient,
    media: tuple[str, str, int],
    status: int,
    body: bytes,
    cls: type[ApiError],
) -> None:
    storage.script = lambda seen, req: (status, body)
    with pytest.raises(cls) as info:
        await client.upload_to_signed_url(
            f"{storage.origin}/b/o?X-Goog-Signature=secret", media[0], filename="clip.mp4"
        )
    assert type(info.value) is cls
    assert_clean_message(info.value, "storage", status)
    assert "secret" not in str(info.value)


async def test_a_signed_url_that_is_not_http_is_refused(
    client: MaviClient, media: tuple[str, str, int]
) -> None:
    with pytest.raises(ValueError):
        await client.upload_to_signed_url("file:///etc/passwd", media[0], filename="x.mp4")


@pytest.mark.parametrize(
    "data",
    [
        {"asset_id": "re_1", "expires_in": 60},
        {"asset_id": "re_1", "signed_url": "ftp://x/y", "expires_in": 60},
        {"asset_id": "re_1", "signed_url": "http://127.0.0.2/x", "expires_in": 0},
        {"asset_id": "re_1", "signed_url": "http://127.0.0.2/x", "expires_in": "soon"},
        {"asset_id": "nope", "signed_url": "http://127.0.0.2/x", "expires_in": 60},
        {"signed_url": "http://127.0.0.2/x", "expires_in": 60},
    ],
)
async def test_a_wrong_allocation_answer_is_retryable(
    api: ScriptedServer, client: MaviClient, data: dict[str, Any]
) -> None:
    api.script = lambda seen, req: (200, envelope(data))
    with pytest.raises(ApiRetryable) as info:
        await client.allocate_signed_url("clip.mp4")
    assert_clean_message(info.value, "signed_url", 200)


@pytest.mark.parametrize(
    "answer",
    [
        envelope({"asset_id": "nope"}),
        envelope({}),
        envelope(None, code=500, msg="failed"),
        {"no": "envelope"},
    ],
)
async def test_an_upload_answered_2xx_without_a_usable_asset_says_the_body_was_taken(
    api: ScriptedServer, client: MaviClient, media: tuple[str, str, int], answer: Any
) -> None:
    """The uploader marks a possible remote duplicate by this class, never by the status."""
    api.script = lambda seen, req: (200, answer)
    with pytest.raises(ApiUnusableAnswer) as info:
        await client.upload(media[0], filename="clip.mp4")
    assert_clean_message(info.value, "upload", 200)


async def test_expires_in_as_a_string_is_accepted(api: ScriptedServer, client: MaviClient) -> None:
    api.script = lambda seen, req: (
        200,
        envelope({"asset_id": "re_5", "signed_url": "https://h.example/x?s=1", "expires_in": "60"}),
    )
    signed = await client.allocate_signed_url(os.fsdecode(b"\xff.mp4"))
    assert signed.expires_at == pytest.approx(time.time() + 60, abs=5)
    assert api.seen[0].json_body == {"original_filename": "\ufffd.mp4"}


# ------------------------------------------------------------------------------------------
# Metadata and delete


def metadata_answer(**item: Any) -> dict[str, Any]:
    resource = {
        "extension": "mp4",
        "asset_id": "re_660729180626595840",
        "original_filename": "clip",
        "file_size": "133652816",
        "upload_status": "SUCCESS",
        "create_time": "1766989317192",
        "modify_time": "1766989317999",
    }
    resource.update(item)
    return envelope({"total": 1, "resource": [resource]})


async def test_metadata_is_parsed_into_an_asset_status(
    api: ScriptedServer, client: MaviClient
) -> None:
    api.script = lambda seen, req: (200, metadata_answer())
    status = await client.metadata("re_660729180626595840")
    assert status.asset_id == "re_660729180626595840"
    assert status.upload_status == "SUCCESS"
    assert status.file_size == 133652816
    assert status.extension == "mp4"
    assert status.original_filename == "clip"
    assert status.create_time_ms == 1766989317192
    assert status.modify_time_ms == 1766989317999
    (seen,) = api.seen
    assert (seen.method, seen.path) == ("GET", f"{BASE_PATH}/re_660729180626595840/metadata")
    assert seen.headers["Authorization"] == KEY


async def test_metadata_tolerates_numbers_and_missing_optional_fields(
    api: ScriptedServer, client: MaviClient
) -> None:
    api.script = lambda seen, req: (
        200,
        metadata_answer(
            asset_id="re_9", upload_status="waiting", file_size=12, create_time=None, extension=3
        ),
    )
    status = await client.metadata("re_9")
    assert status.upload_status == "WAITING"
    assert status.asset_id == "re_9"
    assert status.file_size == 12
    assert status.create_time_ms is None
    assert status.extension is None


async def test_metadata_picks_the_resource_of_the_asset_asked_for(
    api: ScriptedServer, client: MaviClient
) -> None:
    other = metadata_answer(asset_id="re_8", upload_status="FAILED")["data"]["resource"][0]
    mine = metadata_answer(asset_id="re_9", upload_status="SUCCESS")["data"]["resource"][0]
    api.script = lambda seen, req: (200, envelope({"total": 2, "resource": [other, mine]}))
    assert (await client.metadata("re_9")).upload_status == "SUCCESS"
    # A lone resource that names no asset at all is taken as the one asked for.
    anonymous = {k: v for k, v in mine.items() if k != "asset_id"}
    api.script = lambda seen, req: (200, envelope({"total": 1, "resource": [anonymous]}))
    assert (await client.metadata("re_9")).asset_id == "re_9"


@pytest.mark.parametrize(
    "answer",
    [
        envelope({"total": 0, "resource": []}),
        envelope({"total": 1}),
        metadata_answer(asset_id="re_other"),
        metadata_answer(asset_id="re_9", upload_status=""),
        metadata_answer(asset_id="re_9", upload_status=None),
        envelope(None),
    ],
)
async def test_a_wrong_metadata_answer_is_retryable(
    api: ScriptedServer, client: MaviClient, answer: dict[str, Any]
) -> None:
    api.script = lambda seen, req: (200, answer)
    with pytest.raises(ApiRetryable) as info:
        await client.metadata("re_9")
    assert_clean_message(info.value, "metadata", 200)


async def test_delete(api: ScriptedServer, client: MaviClient) -> None:
    api.script = lambda seen, req: (200, envelope(None))
    await client.delete("re_123")
    (seen,) = api.seen
    assert (seen.method, seen.path) == ("DELETE", f"{BASE_PATH}/re_123")
    assert seen.headers["Authorization"] == KEY


@pytest.mark.parametrize("bad", ["", "re_", "re_12a", "../re_1", "re_1/metadata", "RE_1", " re_1"])
async def test_an_invalid_asset_id_is_refused_before_any_request(
    api: ScriptedServer, client: MaviClient, bad: str
) -> None:
    with pytest.raises(ValueError):
        await client.metadata(bad)
    with pytest.raises(ValueError):
        await client.delete(bad)
    assert api.seen == []


# ------------------------------------------------------------------------------------------
# Construction and lifetime


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        MaviClient("ftp://example.com/api", KEY)
    with pytest.raises(ConfigError):
        MaviClient("not a url", KEY)
    for key in ("", "sk-mavi-abc\n", "Bearer sk-mavi-abc", "sk\x00"):
        with pytest.raises(ConfigError) as info:
            MaviClient("https://example.com/api", key)
        assert key.strip() == "" or key.strip() not in str(info.value)


async def test_tls_certificates_are_verified_unless_turned_off(
    tmp_path: Path, media: tuple[str, str, int]
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await ScriptedServer(ssl_context=context).start()
    try:
        async with MaviClient(server.base_url, KEY, connect_timeout_s=5) as c:
            with pytest.raises(ApiRetryable) as info:
                await c.upload(media[0], filename="clip.mp4")
            assert_clean_message(info.value, "upload", None)
            assert "certificate" in str(info.value).lower()
        assert server.seen == []
        async with MaviClient(server.base_url, KEY, verify_tls=False) as c:
            result = await c.upload(media[0], filename="clip.mp4")
        assert result.sha256 == media[1]
        assert server.seen[0].headers["Authorization"] == KEY
    finally:
        await server.stop()


async def test_the_client_hides_its_key_and_closes_cleanly(api: ScriptedServer) -> None:
    c = MaviClient(api.base_url + "/", KEY)
    assert KEY not in repr(c)
    assert c.base_url == api.base_url
    await c.close()
    await c.close()
    with pytest.raises(RuntimeError):
        await c.metadata("re_1")


async def test_one_session_serves_concurrent_requests(
    api: ScriptedServer, client: MaviClient, tmp_path: Path
) -> None:
    paths = []
    for i in range(6):
        p = tmp_path / f"c{i}.mp4"
        write_media(p, size=50_000, seed=i)
        paths.append(str(p))
    results = await asyncio.gather(*(client.upload(p, filename="c.mp4") for p in paths))
    assert {r.sha256 for r in results} == {s.file_sha256 for s in api.seen}
    assert len(api.seen) == 6


# ------------------------------------------------------------------------------------------
# Contract tests against the bundled emulator


async def wait_for_status(c: MaviClient, asset_id: str, wanted: str) -> AssetStatus:
    deadline = time.monotonic() + 20
    while True:
        status = await c.metadata(asset_id)
        if status.upload_status == wanted:
            return status
        assert time.monotonic() < deadline, f"{asset_id} stuck in {status.upload_status}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def emu_client(emulator: EmulatorServer) -> AsyncIterator[MaviClient]:
    async with MaviClient(emulator.base_url, emulator.key, read_timeout_s=10) as c:
        yield c


async def test_emulator_direct_upload_reaches_success(
    emulator: EmulatorServer, emu_client: MaviClient, tmp_path: Path
) -> None:
    path = tmp_path / "Beach Day.mp4"
    sha = write_media(path, size=200_000)
    result = await emu_client.upload(str(path), filename="Beach Day.mp4")
    assert result.asset_id is not None and result.sha256 == sha
    (record,) = emulator.assets()
    assert (record.asset_id, record.sha256, record.size) == (result.asset_id, sha, 200_000)
    status = await wait_for_status(emu_client, result.asset_id, "SUCCESS")
    assert status.original_filename == "Beach Day"
    assert status.extension == "mp4"
    assert status.file_size == 200_000
    assert status.create_time_ms is not None and status.modify_time_ms is not None


async def test_emulator_signed_url_upload_reaches_success_without_the_key(
    emulator: EmulatorServer, emu_client: MaviClient, tmp_path: Path
) -> None:
    path = tmp_path / "long take.mov"
    sha = write_media(path, size=500_000)
    signed = await emu_client.allocate_signed_url("long take.mov")
    assert signed.expires_at > time.time() + 3600
    result = await emu_client.upload_to_signed_url(signed.url, str(path), filename="long take.mov")
    assert result.asset_id is None and result.sha256 == sha
    status = await wait_for_status(emu_client, signed.asset_id, "SUCCESS")
    assert status.original_filename == "long take"
    (record,) = emulator.assets()
    assert record.sha256 == sha
    (put,) = emulator.requests("storage")
    assert put.key is None  # no Authorization header reached the storage route


CHUNK = 256 << 10


async def _hash_chunks(path: Path) -> tuple[str, Fingerprint, Any]:
    async with Hasher(buffer_bytes=CHUNK) as hasher:
        hashed = await hasher.hash(str(path))
    return hashed.sha256, hashed.fingerprint, hashed.chunks()


async def _send(
    c: MaviClient, mode: str, path: Path, fingerprint: Fingerprint, verify: Any, **kw: Any
) -> tuple[str, str | None]:
    """Upload directly or to a signed URL; returns (sha256 sent, asset id)."""
    if mode == "direct":
        result = await c.upload(
            str(path), filename=path.name, expected=fingerprint, verify=verify, **kw
        )
        return result.sha256, result.asset_id
    signed = await c.allocate_signed_url(path.name)
    result = await c.upload_to_signed_url(
        signed.url, str(path), filename=path.name, expected=fingerprint, verify=verify, **kw
    )
    return result.sha256, signed.asset_id


@pytest.mark.parametrize("mode", ["direct", "signed_url"])
async def test_chunks_checked_against_the_hash_pass_send_the_hashed_bytes(
    emulator: EmulatorServer, emu_client: MaviClient, tmp_path: Path, mode: str
) -> None:
    path = tmp_path / "big.mp4"
    sha = write_media(path, size=4 * CHUNK + 1000)
    hashed_sha, fingerprint, verify = await _hash_chunks(path)
    assert hashed_sha == sha and verify.count == 5
    sent_sha, asset_id = await _send(emu_client, mode, path, fingerprint, verify)
    assert sent_sha == sha
    (record,) = emulator.assets()
    assert (record.asset_id, record.sha256) == (asset_id, sha)


@pytest.mark.parametrize("mode", ["direct", "signed_url"])
async def test_a_chunk_changed_during_the_upload_stops_the_body_before_its_end(
    emulator: EmulatorServer, emu_client: MaviClient, tmp_path: Path, mode: str
) -> None:
    path = tmp_path / "changing.mp4"
    write_media(path, size=4 * CHUNK + 1000)
    _sha, fingerprint, verify = await _hash_chunks(path)

    def overwrite_chunk_2() -> None:
        # Same size, other bytes, once the request is under way (the file was opened and its
        # fingerprint checked before): only the check of each chunk sent can see it.
        with open(path, "r+b") as f:
            f.seek(2 * CHUNK + 10)
            f.write(b"\xff" * 100)

    with pytest.raises(BytesChanged, match="chunk 2 ") as info:
        await _send(emu_client, mode, path, fingerprint, verify, on_headers_sent=overwrite_chunk_2)
    assert info.value.index == 2
    # The body stopped at the changed chunk: the service holds no file at all.
    assert [a for a in emulator.assets() if a.sha256 is not None] == []


async def test_a_chunk_changed_past_the_first_span_stops_the_body_before_that_chunk(
    api: ScriptedServer, tmp_path: Path
) -> None:
    # Spans of several chunks are read and checked per worker-thread call: a change in a
    # later span is still caught at its own chunk, and none of that chunk is sent.
    path = tmp_path / "long.mp4"
    span_chunks = READ_BATCH_BYTES // CHUNK
    write_media(path, size=(span_chunks + 4) * CHUNK + 1000)
    _sha, fingerprint, verify = await _hash_chunks(path)
    bad = span_chunks + 2

    def overwrite() -> None:
        with open(path, "r+b") as f:
            f.seek(bad * CHUNK + 5)
            f.write(b"\xff" * 10)

    async with MaviClient(api.base_url, KEY) as c:
        with pytest.raises(BytesChanged, match=f"chunk {bad} ") as info:
            await c.upload(
                str(path),
                filename=path.name,
                expected=fingerprint,
                verify=verify,
                on_headers_sent=overwrite,
            )
    assert info.value.index == bad
    # What reached the server stops before the changed chunk (and it got no whole file).
    assert all(s.file_bytes <= bad * CHUNK for s in api.seen)


@pytest.mark.parametrize("mode", ["direct", "signed_url"])
async def test_a_small_file_whose_bytes_do_not_match_its_checksum_sends_none_of_them(
    emulator: EmulatorServer, emu_client: MaviClient, tmp_path: Path, mode: str
) -> None:
    # A file of one chunk is read and checked in the same worker-thread call that opens it;
    # checksums that do not match (as after a change that kept the fingerprint) stop the body
    # before any of the file's bytes.
    path = tmp_path / "small.mp4"
    write_media(path, size=5000)
    _sha, fingerprint, verify = await _hash_chunks(path)
    wrong = ChunkSums(verify.sha256, fingerprint, verify.chunk_bytes, b"\0" * SUM_BYTES)
    with pytest.raises(BytesChanged, match="chunk 0 ") as info:
        await _send(emu_client, mode, path, fingerprint, wrong)
    assert info.value.index == 0
    assert [a for a in emulator.assets() if a.sha256 is not None] == []


async def test_a_small_file_is_read_when_it_is_opened_and_sends_those_bytes(
    api: ScriptedServer, tmp_path: Path
) -> None:
    # One thread hop opens, reads and checks a small file: a write after that (here, just
    # before the first body byte) does not reach the body, which stays the bytes checked.
    # The uploader's stat after the answer is what notices such a change.
    path = tmp_path / "small.mp4"
    sha = write_media(path, size=5000)
    _sha, fingerprint, verify = await _hash_chunks(path)

    def overwrite() -> None:
        with open(path, "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 10)

    async with MaviClient(api.base_url, KEY) as c:
        result = await c.upload(
            str(path),
            filename=path.name,
            expected=fingerprint,
            verify=verify,
            on_headers_sent=overwrite,
        )
    assert (result.sha256, result.bytes_sent) == (sha, 5000)
    assert (api.seen[0].file_sha256, api.seen[0].file_bytes) == (sha, 5000)


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("vidéo 日本語.mp4", "vidéo 日本語"),
        ('say "cheese".jpg', 'say "cheese"'),
        ("a;b;c.png", "a;b;c"),
        ("100% real.mp3", "100% real"),
    ],
)
async def test_emulator_stores_unusual_filenames_intact(
    emu_client: MaviClient, tmp_path: Path, name: str, stored: str
) -> None:
    path = tmp_path / "sample"
    write_media(path, ext=name.rsplit(".", 1)[1], size=5000)
    result = await emu_client.upload(str(path), filename=name)
    assert result.asset_id is not None
    status = await emu_client.metadata(result.asset_id)
    assert status.original_filename == stored


async def test_emulator_errors_are_classified(
    emulator: EmulatorServer, emu_client: MaviClient, tmp_path: Path
) -> None:
    path = tmp_path / "clip.mp4"
    write_media(path, size=10_000)
    with pytest.raises(ApiNotFound):
        await emu_client.metadata("re_123456789012345678")
    async with MaviClient(emulator.base_url, "sk-mavi-wrong-key") as wrong:
        with pytest.raises(ApiAuthError) as auth:
            await wrong.upload(str(path), filename="clip.mp4")
        assert "sk-mavi-wrong-key" not in str(auth.value)
    # A format outside the list: the ambiguous 400.
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ApiThrottled):
        await emu_client.upload(str(text), filename="notes.txt")
    # Delete, then the asset is gone for metadata and for a second delete.
    result = await emu_client.upload(str(path), filename="clip.mp4")
    assert result.asset_id is not None
    await emu_client.delete(result.asset_id)
    with pytest.raises(ApiNotFound):
        await emu_client.metadata(result.asset_id)
    with pytest.raises(ApiNotFound):
        await emu_client.delete(result.asset_id)


@pytest.mark.parametrize(
    ("fault", "cls"),
    [
        ({"endpoint": "upload", "status": 500}, ApiRetryable),
        ({"endpoint": "upload", "status": 503, "msg": "The network is abnormal"}, ApiRetryable),
        ({"endpoint": "upload", "status": 429}, ApiThrottled),
        ({"endpoint": "upload", "status": 402}, ApiNoCredits),
        ({"endpoint": "upload", "status": 403}, ApiAuthError),
        ({"endpoint": "upload", "status": 415}, ApiPermanent),
        ({"endpoint": "upload", "reset": True}, ApiRetryable),
        ({"credits_after": 0}, ApiNoCredits),
        ({"throttle_for_s": 60}, ApiThrottled),
    ],
)
async def test_emulator_faults_are_classified(
    emulator: EmulatorServer,
    emu_client: MaviClient,
    tmp_path: Path,
    fault: dict[str, Any],
    cls: type[ApiError],
) -> None:
    path = tmp_path / "clip.mp4"
    write_media(path, size=100_000)
    emulator.add_faults(fault)
    with pytest.raises(cls) as info:
        await emu_client.upload(str(path), filename="clip.mp4")
    assert type(info.value) is cls
    assert emulator.key not in str(info.value)
    assert emulator.assets() == [] or cls is ApiRetryable


async def test_emulator_hang_ends_in_the_read_timeout(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    path = tmp_path / "clip.mp4"
    write_media(path, size=10_000)
    emulator.add_faults({"endpoint": "upload", "hang": True})
    async with MaviClient(emulator.base_url, emulator.key, read_timeout_s=0.3) as c:
        with pytest.raises(ApiRetryable):
            await c.upload(str(path), filename="clip.mp4")


async def test_emulator_rate_limit_answers_are_throttles(
    emulator: EmulatorServer, emu_client: MaviClient
) -> None:
    emulator.update_settings(rates={"metadata": 0.2})
    with pytest.raises(ApiNotFound):
        await emu_client.metadata("re_1")
    with pytest.raises(ApiThrottled) as info:
        await emu_client.metadata("re_1")
    assert info.value.status == 400


async def test_emulator_expired_signed_url_is_refused(
    make_emulator: Callable[..., Awaitable[EmulatorServer]], tmp_path: Path
) -> None:
    clock = FakeClock()
    emulator = await make_emulator(clock=clock, signed_url_ttl_s=60)
    path = tmp_path / "clip.mp4"
    write_media(path, size=10_000)
    async with MaviClient(emulator.base_url, emulator.key) as c:
        signed = await c.allocate_signed_url("clip.mp4")
        clock.advance(61)
        with pytest.raises(SignedUrlExpired) as info:
            await c.upload_to_signed_url(signed.url, str(path), filename="clip.mp4")
        assert_clean_message(info.value, "storage", 403)
