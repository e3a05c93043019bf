"""The MAVI v2 API client: one request per call, every outcome classified once.

The client neither paces nor retries: the caller holds the :class:`~syncd.upload.pacer.Pacer`
and the retry policy. Each method makes exactly one HTTP request and either returns a typed
result or raises one of the :class:`~syncd.errors.ApiError` classes:

==============================================  ===========================================
answer                                          raises
==============================================  ===========================================
2xx with a success envelope and a valid answer  (returns)
400 with msg "Asset not found"                  :class:`~syncd.errors.ApiNotFound`
400, 429                                        :class:`~syncd.errors.ApiThrottled`
401, 403                                        :class:`~syncd.errors.ApiAuthError`
401, 403, expired 400 from the signed-URL host  :class:`~syncd.errors.SignedUrlExpired`
402                                             :class:`~syncd.errors.ApiNoCredits`
408, 5xx, 3xx (redirects are never followed),   :class:`~syncd.errors.ApiRetryable`
connection errors, timeouts, oversized,
malformed or failure answers with HTTP 2xx
(those: :class:`~syncd.errors.ApiUnusableAnswer`),
an upload answered before all bytes were sent
409 from the signed-URL host                    :class:`~syncd.errors.ApiAlreadyStored`
other 4xx (404, 405, 409, 415, ...)             :class:`~syncd.errors.ApiPermanent`
==============================================  ===========================================

A redirect is classified as retryable rather than permanent: it usually comes from a proxy or
a maintenance page in front of the API, and retrying later with backoff loses nothing, while a
permanent error would mark the file itself as unsendable. It is never followed, so the
``Authorization`` header only ever goes to the base URL's host; the signed-URL upload never
carries it. Error messages are one line, name the endpoint and the HTTP status, and never
contain the API key (any occurrence is masked) nor a signed URL's query string.

Uploads stream the file from disk in spans of a few chunks; each span is read and hashed
(SHA-256), or checked chunk by chunk against the hash pass's checksums, in one worker-thread
call, so the digest returned is the digest of exactly the bytes that were sent.
The request carries a ``Content-Length`` (no chunked encoding). There is no total timeout on an
upload: ``connect_timeout_s`` bounds connecting, ``read_timeout_s`` bounds every silence while
reading the answer, every stall while sending a chunk, and the whole answer once the request
is sent, so a server that trickles its answer cannot hold a worker forever.

Local file problems (the file vanished, cannot be read, shrank while being sent) raise
:class:`LocalFileError`, an ``OSError`` and not an :class:`~syncd.errors.ApiError`: the file,
not the API, is at fault.

This module makes the requests; reading an answer into a result or an error is
``answers.py``'s (the table above), and the streamed body is ``filebody.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import aiohttp
from yarl import URL

from syncd import __version__
from syncd.chunksums import ChunkSums
from syncd.errors import ApiRetryable, ConfigError
from syncd.fingerprint import Fingerprint
from syncd.upload.answers import (
    ASSET_ID_RE,
    MAX_ANSWER_BYTES,
    Answer,
    Classifier,
    check_asset_id,
    integer,
    is_http_url,
    number,
    string,
)
from syncd.upload.filebody import (
    BytesChanged,
    FilePayload,
    LocalFileError,
    clean_name,
    multipart_filename,
)
from syncd.upload.shaper import ByteShaper

__all__ = [
    "ASSET_ID_RE",
    "MAX_ANSWER_BYTES",
    "AssetStatus",
    "BytesChanged",
    "LocalFileError",
    "MaviClient",
    "SignedUrl",
    "UploadResult",
    "multipart_filename",
]

log = logging.getLogger(__name__)

# Time allowed for the body writer to finish once a 2xx answer has been read: a well-behaved
# server answers only after it received every byte, so the writer is done or about to be.
_WRITER_GRACE_S: Final = 5.0


@dataclass(frozen=True)
class UploadResult:
    """The outcome of a successful upload.

    ``asset_id`` is ``None`` for a signed-URL upload (the id came with the URL). ``sha256`` is
    the hex digest of exactly the ``bytes_sent`` bytes of the file that went on the wire;
    compare it with the ledger's hash before trusting the asset id.
    """

    asset_id: str | None
    sha256: str
    bytes_sent: int
    http_status: int


@dataclass(frozen=True)
class SignedUrl:
    """A signed upload URL and the asset id allocated with it; ``expires_at`` is epoch seconds.

    The expiry is counted from when the allocation request started, so it errs early.
    """

    asset_id: str
    url: str
    expires_at: float


@dataclass(frozen=True)
class AssetStatus:
    """One asset's metadata. ``upload_status`` is upper case: WAITING, UPLOADING, SUCCESS,
    FAILED (or whatever new status the service reports). Times are epoch milliseconds."""

    asset_id: str
    upload_status: str
    file_size: int | None
    extension: str | None
    original_filename: str | None
    create_time_ms: int | None
    modify_time_ms: int | None


class MaviClient:
    """A client for the MAVI v2 asset endpoints, with one HTTP session.

    Given the base URL (``.../serve/api/v2``), the raw API key (sent as ``Authorization``
    without ``Bearer``), the connect and read timeouts, whether to verify TLS certificates,
    the upload chunk size, and the byte budget file bodies are sent under (``None``: none).
    Use it as ``async with MaviClient(...) as client`` or call :meth:`close`. Raises
    :class:`~syncd.errors.ConfigError` for an unusable base URL or key.

    Over ~300 lines because it is the API's calls and the one request path they share
    (:meth:`_send_file`, :meth:`_exchange` with its deadlines): each call is short, and the
    parts that could stand alone already do (``answers.py`` classifies, ``filebody.py``
    streams the body).
    """

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        connect_timeout_s: float = 10,
        read_timeout_s: float = 120,
        verify_tls: bool = True,
        chunk_bytes: int = 1 << 20,
        shaper: ByteShaper | None = None,
    ) -> None:
        try:
            base = URL(base_url.rstrip("/"))
        except (TypeError, ValueError):
            base = URL()
        if base.scheme not in ("http", "https") or not base.host:
            raise ConfigError("api.base_url", [f"not an http(s) URL: {base_url!r}"])
        if not key or any(c.isspace() or not c.isprintable() for c in key):
            raise ConfigError("API key", ["the key is empty or contains spaces/control chars"])
        if connect_timeout_s <= 0 or read_timeout_s <= 0 or chunk_bytes <= 0:
            raise ValueError("timeouts and chunk_bytes must be positive")
        self._base = base
        self._key = key
        self._answers = Classifier(key)
        self._connect_timeout_s = float(connect_timeout_s)
        self._read_timeout_s = float(read_timeout_s)
        self._verify_tls = verify_tls
        self._chunk_bytes = chunk_bytes
        self.shaper = shaper
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"MaviClient({str(self._base)!r})"

    @property
    def base_url(self) -> str:
        """Return the base URL, without a trailing slash."""
        return str(self._base)

    async def __aenter__(self) -> MaviClient:
        self._get_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session; the client cannot be used afterwards. Idempotent."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("MaviClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self._connect_timeout_s,
                    sock_connect=self._connect_timeout_s,
                    sock_read=self._read_timeout_s,
                ),
                connector=aiohttp.TCPConnector(ssl=self._verify_tls),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                headers={"User-Agent": f"syncd/{__version__}"},
            )
        return self._session

    # ---------------------------------------------------------------------------------------
    # Endpoints

    async def upload(
        self,
        path: str,
        *,
        filename: str,
        on_headers_sent: Callable[[], None] | None = None,
        expected: Fingerprint | None = None,
        before_last_bytes: Callable[[], Awaitable[None]] | None = None,
        verify: ChunkSums | None = None,
    ) -> UploadResult:
        """Upload the file at ``path`` with ``POST /upload`` as the multipart ``file`` part.

        Given the path to open (a ``str``, possibly with surrogate-escaped bytes), the file
        name to send, an optional callback run once, just before the first byte of the
        body goes out (from then on the service may create an asset), and optionally the
        fingerprint the opened file must have (else nothing is sent), and an optional
        coroutine function awaited before the body's last bytes (the closing boundary) are
        sent, after which the service may hold a complete file, and optionally the checksums
        the hash pass took of the file's chunks (``verify``: each chunk is checked against its
        checksum instead of being hashed with SHA-256 again). Returns the asset id,
        the SHA-256 and count of the bytes sent, and the HTTP status. Raises an
        :class:`~syncd.errors.ApiError` subclass, or :class:`LocalFileError` (its subclass
        :class:`BytesChanged` when a chunk differed from its checksum: the body was stopped
        before its end).
        """
        answer, payload = await self._send_file(
            "upload",
            self._base / "upload",
            path,
            filename,
            True,
            on_headers_sent,
            expected,
            before_last_bytes,
            verify,
        )
        data = self._answers.success_data("upload", answer)
        if not answer.body_sent:
            raise self._answers.error(
                ApiRetryable, "upload", "answered before the whole file was sent", answer.status
            )
        asset_id = self._answers.asset_id_of("upload", data, answer.status)
        return UploadResult(asset_id, payload.sent_sha256(), payload.bytes_sent, answer.status)

    async def allocate_signed_url(self, original_filename: str) -> SignedUrl:
        """Allocate an asset id and a signed upload URL (``POST /upload/signed-url``).

        Given the file name (with its extension). Returns the :class:`SignedUrl`. Raises an
        :class:`~syncd.errors.ApiError` subclass.
        """
        started_wall = time.time()
        answer = await self._exchange(
            "POST",
            self._base / "upload" / "signed-url",
            endpoint="signed_url",
            auth=True,
            json_body={"original_filename": clean_name(original_filename)},
        )
        data = self._answers.success_data("signed_url", answer)
        asset_id = self._answers.asset_id_of("signed_url", data, answer.status)
        url = data.get("signed_url")
        if not isinstance(url, str) or not is_http_url(url):
            raise self._answers.error(
                ApiRetryable, "signed_url", "answer has no valid signed_url", answer.status
            )
        expires_in = number(data.get("expires_in"))
        if expires_in is None or expires_in <= 0:
            raise self._answers.error(
                ApiRetryable, "signed_url", "answer has no valid expires_in", answer.status
            )
        return SignedUrl(asset_id, url, started_wall + expires_in)

    async def upload_to_signed_url(
        self,
        url: str,
        path: str,
        *,
        filename: str,
        on_headers_sent: Callable[[], None] | None = None,
        expected: Fingerprint | None = None,
        verify: ChunkSums | None = None,
    ) -> UploadResult:
        """Upload the file at ``path`` to a signed URL, without the ``Authorization`` header.

        Given the URL from :meth:`allocate_signed_url`, the path and the file name to send
        (``on_headers_sent``, ``expected`` and ``verify`` as for :meth:`upload`).
        Any 2xx means the bytes were accepted (the answer is not an envelope). Returns an
        :class:`UploadResult` whose ``asset_id`` is ``None``. Raises
        :class:`~syncd.errors.SignedUrlExpired` when the storage host refuses the URL (401,
        403, or a 400 that says "expired"), another :class:`~syncd.errors.ApiError`
        subclass, or :class:`LocalFileError`; ``ValueError`` for a URL that is not http(s).
        """
        if not is_http_url(url):
            raise ValueError("the signed URL is not an http(s) URL")
        answer, payload = await self._send_file(
            "storage",
            URL(url, encoded=True),
            path,
            filename,
            False,
            on_headers_sent,
            expected,
            verify=verify,
        )
        if not 200 <= answer.status < 300:
            raise self._answers.status_error("storage", answer)
        if not answer.body_sent:
            raise self._answers.error(
                ApiRetryable, "storage", "answered before the whole file was sent", answer.status
            )
        return UploadResult(None, payload.sent_sha256(), payload.bytes_sent, answer.status)

    async def metadata(self, asset_id: str) -> AssetStatus:
        """Fetch an asset's status (``GET /{asset_id}/metadata``).

        Given an asset id; returns its :class:`AssetStatus`. Raises
        :class:`~syncd.errors.ApiNotFound` for an unknown or deleted asset, another
        :class:`~syncd.errors.ApiError` subclass otherwise; ``ValueError`` for an id that is
        not ``re_<digits>``.
        """
        check_asset_id(asset_id)
        answer = await self._exchange(
            "GET", self._base / asset_id / "metadata", endpoint="metadata", auth=True
        )
        data = self._answers.success_data("metadata", answer)
        resources = data.get("resource")
        if not isinstance(resources, list) or not resources:
            raise self._answers.error(
                ApiRetryable, "metadata", "answer lists no resource", answer.status
            )
        item = next(
            (r for r in resources if isinstance(r, dict) and r.get("asset_id") == asset_id),
            None,
        )
        if item is None and len(resources) == 1 and isinstance(resources[0], dict):
            # A lone resource that names no asset at all is taken as the one asked for.
            item = resources[0] if "asset_id" not in resources[0] else None
        if item is None:
            raise self._answers.error(
                ApiRetryable, "metadata", f"answer does not describe {asset_id}", answer.status
            )
        status = item.get("upload_status")
        if not isinstance(status, str) or not status.strip():
            raise self._answers.error(
                ApiRetryable, "metadata", "answer has no upload_status", answer.status
            )
        return AssetStatus(
            asset_id=asset_id,
            upload_status=status.strip().upper(),
            file_size=integer(item.get("file_size")),
            extension=string(item.get("extension")),
            original_filename=string(item.get("original_filename")),
            create_time_ms=integer(item.get("create_time")),
            modify_time_ms=integer(item.get("modify_time")),
        )

    async def delete(self, asset_id: str) -> None:
        """Delete an asset (``DELETE /{asset_id}``); irreversible.

        Raises :class:`~syncd.errors.ApiNotFound` for an unknown or already deleted asset,
        another :class:`~syncd.errors.ApiError` subclass otherwise; ``ValueError`` for an id
        that is not ``re_<digits>``.
        """
        check_asset_id(asset_id)
        answer = await self._exchange("DELETE", self._base / asset_id, endpoint="delete", auth=True)
        self._answers.success_data("delete", answer, data_required=False)

    # ---------------------------------------------------------------------------------------
    # One exchange

    async def _send_file(
        self,
        endpoint: str,
        url: URL,
        path: str,
        filename: str,
        auth: bool,
        on_headers_sent: Callable[[], None] | None,
        expected: Fingerprint | None,
        before_last_bytes: Callable[[], Awaitable[None]] | None = None,
        verify: ChunkSums | None = None,
    ) -> tuple[Answer, FilePayload]:
        payload = await asyncio.to_thread(
            FilePayload.open,
            path,
            expected,
            filename=filename,
            chunk_bytes=self._chunk_bytes,
            stall_timeout_s=self._read_timeout_s,
            on_headers_sent=on_headers_sent,
            before_last_bytes=before_last_bytes,
            verify=verify,
            shaper=self.shaper,
        )
        try:
            answer = await self._exchange("POST", url, endpoint=endpoint, auth=auth, body=payload)
            return answer, payload
        finally:
            # A worker thread may still be in pread() on this fd if we were cancelled; the
            # kernel keeps the open file alive for it, and its result is discarded.
            os.close(payload.fd)

    async def _exchange(
        self,
        method: str,
        url: URL,
        *,
        endpoint: str,
        auth: bool,
        body: FilePayload | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> Answer:
        """Make one request and read at most ``MAX_ANSWER_BYTES`` of its answer.

        Returns the answer, whatever its status; raises :class:`~syncd.errors.ApiRetryable`
        for transport failures and timeouts, :class:`LocalFileError` if the body's file failed.
        """
        session = self._get_session()
        loop = asyncio.get_running_loop()
        # Answers are small JSON: no compression, so no decompression bomb either.
        headers: dict[str, str] = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if auth:
            headers["Authorization"] = self._key
        started = loop.time()
        deadline = asyncio.timeout(None)
        try:
            async with deadline:
                if body is None:
                    deadline.reschedule(started + self._connect_timeout_s + self._read_timeout_s)
                else:
                    # The whole answer must arrive within read_timeout_s of the last byte sent.
                    body.on_complete = lambda: _tighten(deadline, loop, self._read_timeout_s)
                async with session.request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    json=json_body,
                    allow_redirects=False,
                ) as resp:
                    _tighten(deadline, loop, self._read_timeout_s)
                    raw, oversized = await _read_capped(resp, MAX_ANSWER_BYTES)
                    body_sent = True
                    if body is not None:
                        if 200 <= resp.status < 300 and not body.done.is_set():
                            try:
                                async with asyncio.timeout(_WRITER_GRACE_S):
                                    await body.done.wait()
                            except TimeoutError:
                                pass
                        body_sent = body.complete
                    answer = Answer(
                        resp.status,
                        raw,
                        oversized,
                        resp.headers.get("Content-Type", ""),
                        resp.headers.get("Location"),
                        body_sent,
                    )
                    if oversized:
                        resp.close()  # drop the connection rather than read the rest
        except TimeoutError as exc:
            if body is not None and body.local_error is not None:
                raise body.local_error from None
            if deadline.expired():
                what = f"no complete answer after {loop.time() - started:.1f} s"
            elif body is not None and body.stalled:
                what = f"sending stalled for {self._read_timeout_s:g} s"
            else:
                what = f"timed out ({_describe(exc)})"
            raise self._answers.error(ApiRetryable, endpoint, what, None) from None
        except (aiohttp.ClientError, OSError) as exc:
            if body is not None and body.local_error is not None:
                raise body.local_error from None
            raise self._answers.error(ApiRetryable, endpoint, _describe(exc), None) from None
        if body is not None and body.local_error is not None:
            # The server answered although the body was cut short: the file is at fault.
            raise body.local_error
        log.debug(
            "%s %s: HTTP %d in %.3f s", method, endpoint, answer.status, loop.time() - started
        )
        return answer


# -------------------------------------------------------------------------------------------
# Helpers


def _tighten(deadline: asyncio.Timeout, loop: asyncio.AbstractEventLoop, within_s: float) -> None:
    """Move ``deadline`` to at most ``within_s`` from now (never later than it already is)."""
    when = loop.time() + within_s
    current = deadline.when()
    if current is None or current > when:
        deadline.reschedule(when)


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """Read at most ``cap`` bytes of the answer; returns (body, whether it was longer)."""
    length = resp.content_length
    if length is not None and length > cap:
        return b"", True
    buf = bytearray()
    while len(buf) <= cap:
        chunk = await resp.content.read(cap + 1 - len(buf))
        if not chunk:
            break
        buf += chunk
    if len(buf) > cap:
        return bytes(buf[:cap]), True
    return bytes(buf), False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
