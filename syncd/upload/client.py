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
malformed or failure answers with HTTP 2xx,
an upload answered before all bytes were sent
other 4xx (404, 405, 409, 415, ...)             :class:`~syncd.errors.ApiPermanent`
==============================================  ===========================================

A redirect is classified as retryable rather than permanent: it usually comes from a proxy or
a maintenance page in front of the API, and retrying later with backoff loses nothing, while a
permanent error would mark the file itself as unsendable. It is never followed, so the
``Authorization`` header only ever goes to the base URL's host; the signed-URL upload never
carries it. Error messages are one line, name the endpoint and the HTTP status, and never
contain the API key (any occurrence is masked) nor a signed URL's query string.

Uploads stream the file from disk in chunks; each chunk is read and hashed (SHA-256) in one
worker-thread call, so the digest returned is the digest of exactly the bytes that were sent.
The request carries a ``Content-Length`` (no chunked encoding). There is no total timeout on an
upload: ``connect_timeout_s`` bounds connecting, ``read_timeout_s`` bounds every silence while
reading the answer, every stall while sending a chunk, and the whole answer once the request
is sent, so a server that trickles its answer cannot hold a worker forever.

Local file problems (the file vanished, cannot be read, shrank while being sent) raise
:class:`LocalFileError`, an ``OSError`` and not an :class:`~syncd.errors.ApiError`: the file,
not the API, is at fault.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, NamedTuple

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from yarl import URL

from syncd import __version__, events
from syncd.errors import (
    EXIT_IOERR,
    ApiAuthError,
    ApiError,
    ApiNoCredits,
    ApiNotFound,
    ApiPermanent,
    ApiRetryable,
    ApiThrottled,
    ConfigError,
    SignedUrlExpired,
    SyncdError,
)
from syncd.fingerprint import Fingerprint
from syncd.formats import FORMATS, extension_of
from syncd.upload.shaper import ByteShaper

log = logging.getLogger(__name__)

ASSET_ID_RE: Final = re.compile(r"re_[0-9]{1,40}")
"""What a valid asset id looks like (matched in full)."""

MAX_ANSWER_BYTES: Final = 1 << 20
"""The most of an answer body the client reads; a longer answer is classified unread."""

_NOT_FOUND_MSG: Final = "asset not found"
# Time allowed for the body writer to finish once a 2xx answer has been read: a well-behaved
# server answers only after it received every byte, so the writer is done or about to be.
_WRITER_GRACE_S: Final = 5.0
_MSG_LIMIT: Final = 300
_QUERY_RE: Final = re.compile(r"(https?://[^\s?#'\"<>]*)[?#][^\s'\"<>]*")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
# Characters that cannot stay raw in a quoted multipart filename. Browsers (WHATWG HTML
# multipart/form-data encoding) percent-encode '"', CR and LF and keep the rest as UTF-8; we
# also encode the other control characters, '\' (unescaped by several parsers) and ';' (split
# on by naive parsers, aiohttp's among them), so every parser sees one well-formed value. '%'
# itself is encoded too: a server that decodes the escapes (RFC 7578 allows it; the emulator
# does) would otherwise turn a literal "%2F" in a name into a slash.
_FILENAME_UNSAFE_RE: Final = re.compile(r'[\x00-\x1f\x7f";\\%]')


class LocalFileError(SyncdError, OSError):
    """The file to upload could not be opened or read, or it shrank while being sent.

    Given the path, what went wrong and the ``errno`` if there is one. It is an ``OSError``
    (``errno``, ``strerror``, ``filename`` are set) because the file, not the API, is at fault;
    nothing about the remote side follows from it, except that the upload was never complete.
    """

    exit_code = EXIT_IOERR

    def __init__(self, path: str, detail: str, errno: int | None = None) -> None:
        super().__init__(f"cannot upload {printable_path(path)}: {detail}")
        self.path = path
        self.detail = detail
        self.errno = errno
        self.strerror = detail
        self.filename = path

    def __str__(self) -> str:
        return str(self.args[0])


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


class _Answer(NamedTuple):
    status: int
    body: bytes
    oversized: bool
    content_type: str
    location: str | None
    body_sent: bool  # for uploads: every byte of the request was handed to the transport


def printable_path(path: str) -> str:
    """Given a path (possibly with surrogate-escaped bytes), return a one-line printable form."""
    return _CONTROL_RE.sub("?", _raw_name(path).decode("utf-8", "backslashreplace"))


def multipart_filename(name: str) -> str:
    """Return ``name`` as it goes between the quotes of the multipart ``filename`` parameter.

    Bytes that are not UTF-8 (surrogate-escaped by ``os.fsdecode``) become U+FFFD; control
    characters, ``"``, ``;``, ``\\`` and ``%`` are percent-encoded; everything else stays as
    UTF-8.
    """
    return _FILENAME_UNSAFE_RE.sub(lambda m: f"%{ord(m.group()):02X}", _clean_name(name))


def _clean_name(name: str) -> str:
    """Return ``name`` as valid Unicode: undecodable bytes and lone surrogates become U+FFFD."""
    return _raw_name(name).decode("utf-8", "replace")


def _raw_name(name: str) -> bytes:
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate that surrogateescape did not produce
        return name.encode("utf-8", "replace")


def _content_type_for(filename: str) -> str:
    kind = FORMATS.get(extension_of(filename))
    return kind[1] if kind else "application/octet-stream"


def _read_and_hash(fd: int, size: int, offset: int, sha: Any) -> bytes:
    """Runs in a worker thread: read up to ``size`` bytes at ``offset`` and hash them."""
    data = os.pread(fd, size, offset)
    sha.update(data)
    return data


def _open_regular(path: str, expected: Fingerprint | None) -> tuple[int, int]:
    """Runs in a worker thread: open ``path`` for reading; returns (fd, size).

    ``expected``, when given, is the fingerprint the caller checked: the file opened must be
    exactly that file (a symlink or another file swapped in since is refused, unsent).
    """
    try:
        # O_NONBLOCK: a FIFO in the file's place opens at once (and is refused below) instead
        # of blocking this thread until a writer comes; reads of a regular file ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise LocalFileError(path, exc.strerror or str(exc), exc.errno) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LocalFileError(path, "not a regular file")
        if expected is not None and Fingerprint.of(st) != expected:
            raise LocalFileError(path, "changed since it was checked; nothing was sent")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


class _FilePayload(aiohttp.Payload):
    """A ``multipart/form-data`` body with one ``file`` part streamed from an open file.

    The size is known up front, so aiohttp sends a ``Content-Length``. Each chunk is read and
    hashed in one worker-thread call; each write to the socket must make progress within
    ``stall_timeout_s``. With a ``shaper``, each chunk is at most what it grants, after its
    wait: the byte budget every worker shares.
    """

    def __init__(
        self,
        fd: int,
        file_size: int,
        *,
        path: str,
        filename: str,
        chunk_bytes: int,
        stall_timeout_s: float,
        on_headers_sent: Callable[[], None] | None,
        before_last_bytes: Callable[[], Awaitable[None]] | None = None,
        shaper: ByteShaper | None = None,
    ) -> None:
        boundary = "syncd-" + secrets.token_hex(16)
        super().__init__(None, content_type=f"multipart/form-data; boundary={boundary}")
        self._fd = fd
        self._file_size = file_size
        self._path = path
        self._chunk_bytes = chunk_bytes
        self._stall_timeout_s = stall_timeout_s
        self._on_headers_sent = on_headers_sent
        self._before_last_bytes = before_last_bytes
        self._shaper = shaper
        self._head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; '
            f'filename="{multipart_filename(filename)}"\r\n'
            f"Content-Type: {_content_type_for(filename)}\r\n"
            "\r\n"
        ).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._size = len(self._head) + file_size + len(self._tail)
        self.sha256 = hashlib.sha256()
        self.bytes_sent = 0
        self.complete = False  # every byte was handed to the transport
        self.done = asyncio.Event()  # the writer finished, failed or was cancelled
        self.on_complete: Callable[[], None] | None = None
        self.local_error: LocalFileError | None = None
        self.stalled = False

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed file body cannot be decoded")

    async def write(self, writer: AbstractStreamWriter) -> None:
        if self._consumed:
            raise RuntimeError("a streamed file body can be sent only once")
        self._consumed = True
        try:
            await self._write_all(writer)
        finally:
            self.done.set()

    async def _write_all(self, writer: AbstractStreamWriter) -> None:
        if self._on_headers_sent is not None:
            try:
                self._on_headers_sent()
            except Exception:
                log.exception("on_headers_sent callback failed")
        events.progress(self._path, 0, self._file_size)
        await self._send(writer, self._head)
        offset = 0
        while offset < self._file_size:
            want = min(self._chunk_bytes, self._file_size - offset)
            if self._shaper is not None:
                want = await self._shaper.take(want)
            try:
                data = await asyncio.to_thread(_read_and_hash, self._fd, want, offset, self.sha256)
            except OSError as exc:
                self.local_error = LocalFileError(self._path, exc.strerror or str(exc), exc.errno)
                raise self.local_error from None
            if not data:
                self.local_error = LocalFileError(
                    self._path, f"file shrank while being sent ({offset} of {self._file_size})"
                )
                raise self.local_error
            await self._send(writer, data)
            offset += len(data)
            self.bytes_sent = offset
            events.progress(self._path, offset, self._file_size)
        if self._before_last_bytes is not None:
            # Until the closing boundary arrives the service cannot have a complete file: the
            # caller may hold the rest back (see the uploader's one-finisher rule).
            await self._before_last_bytes()
        await self._send(writer, self._tail)
        self.complete = True
        if self.on_complete is not None:
            self.on_complete()

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await self.write(writer)

    async def _send(self, writer: AbstractStreamWriter, data: bytes) -> None:
        try:
            async with asyncio.timeout(self._stall_timeout_s):
                await writer.write(data)
        except TimeoutError:
            self.stalled = True
            raise


class MaviClient:
    """A client for the MAVI v2 asset endpoints, with one HTTP session.

    Given the base URL (``.../serve/api/v2``), the raw API key (sent as ``Authorization``
    without ``Bearer``), the connect and read timeouts, whether to verify TLS certificates,
    the upload chunk size, and the byte budget file bodies are sent under (``None``: none).
    Use it as ``async with MaviClient(...) as client`` or call :meth:`close`. Raises
    :class:`~syncd.errors.ConfigError` for an unusable base URL or key.
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
    ) -> UploadResult:
        """Upload the file at ``path`` with ``POST /upload`` as the multipart ``file`` part.

        Given the path to open (a ``str``, possibly with surrogate-escaped bytes), the file
        name to send, an optional callback run once, just before the first byte of the
        body goes out (from then on the service may create an asset), and optionally the
        fingerprint the opened file must have (else nothing is sent), and an optional
        coroutine function awaited before the body's last bytes (the closing boundary) are
        sent, after which the service may hold a complete file. Returns the asset id,
        the SHA-256 and count of the bytes sent, and the HTTP status. Raises an
        :class:`~syncd.errors.ApiError` subclass, or :class:`LocalFileError`.
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
        )
        data = self._success_data("upload", answer)
        if not answer.body_sent:
            raise self._error(
                ApiRetryable, "upload", "answered before the whole file was sent", answer.status
            )
        asset_id = self._asset_id_of("upload", data, answer.status)
        return UploadResult(asset_id, payload.sha256.hexdigest(), payload.bytes_sent, answer.status)

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
            json_body={"original_filename": _clean_name(original_filename)},
        )
        data = self._success_data("signed_url", answer)
        asset_id = self._asset_id_of("signed_url", data, answer.status)
        url = data.get("signed_url")
        if not isinstance(url, str) or not _is_http_url(url):
            raise self._error(
                ApiRetryable, "signed_url", "answer has no valid signed_url", answer.status
            )
        expires_in = _number(data.get("expires_in"))
        if expires_in is None or expires_in <= 0:
            raise self._error(
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
    ) -> UploadResult:
        """Upload the file at ``path`` to a signed URL, without the ``Authorization`` header.

        Given the URL from :meth:`allocate_signed_url`, the path and the file name to send
        (``on_headers_sent`` and ``expected`` as for :meth:`upload`).
        Any 2xx means the bytes were accepted (the answer is not an envelope). Returns an
        :class:`UploadResult` whose ``asset_id`` is ``None``. Raises
        :class:`~syncd.errors.SignedUrlExpired` when the storage host refuses the URL (401,
        403, or a 400 that says "expired"), another :class:`~syncd.errors.ApiError`
        subclass, or :class:`LocalFileError`; ``ValueError`` for a URL that is not http(s).
        """
        if not _is_http_url(url):
            raise ValueError("the signed URL is not an http(s) URL")
        answer, payload = await self._send_file(
            "storage", URL(url, encoded=True), path, filename, False, on_headers_sent, expected
        )
        if not 200 <= answer.status < 300:
            raise self._status_error("storage", answer)
        if not answer.body_sent:
            raise self._error(
                ApiRetryable, "storage", "answered before the whole file was sent", answer.status
            )
        return UploadResult(None, payload.sha256.hexdigest(), payload.bytes_sent, answer.status)

    async def metadata(self, asset_id: str) -> AssetStatus:
        """Fetch an asset's status (``GET /{asset_id}/metadata``).

        Given an asset id; returns its :class:`AssetStatus`. Raises
        :class:`~syncd.errors.ApiNotFound` for an unknown or deleted asset, another
        :class:`~syncd.errors.ApiError` subclass otherwise; ``ValueError`` for an id that is
        not ``re_<digits>``.
        """
        _check_asset_id(asset_id)
        answer = await self._exchange(
            "GET", self._base / asset_id / "metadata", endpoint="metadata", auth=True
        )
        data = self._success_data("metadata", answer)
        resources = data.get("resource")
        if not isinstance(resources, list) or not resources:
            raise self._error(ApiRetryable, "metadata", "answer lists no resource", answer.status)
        item = next(
            (r for r in resources if isinstance(r, dict) and r.get("asset_id") == asset_id),
            None,
        )
        if item is None and len(resources) == 1 and isinstance(resources[0], dict):
            # A lone resource that names no asset at all is taken as the one asked for.
            item = resources[0] if "asset_id" not in resources[0] else None
        if item is None:
            raise self._error(
                ApiRetryable, "metadata", f"answer does not describe {asset_id}", answer.status
            )
        status = item.get("upload_status")
        if not isinstance(status, str) or not status.strip():
            raise self._error(
                ApiRetryable, "metadata", "answer has no upload_status", answer.status
            )
        return AssetStatus(
            asset_id=asset_id,
            upload_status=status.strip().upper(),
            file_size=_integer(item.get("file_size")),
            extension=_string(item.get("extension")),
            original_filename=_string(item.get("original_filename")),
            create_time_ms=_integer(item.get("create_time")),
            modify_time_ms=_integer(item.get("modify_time")),
        )

    async def delete(self, asset_id: str) -> None:
        """Delete an asset (``DELETE /{asset_id}``); irreversible.

        Raises :class:`~syncd.errors.ApiNotFound` for an unknown or already deleted asset,
        another :class:`~syncd.errors.ApiError` subclass otherwise; ``ValueError`` for an id
        that is not ``re_<digits>``.
        """
        _check_asset_id(asset_id)
        answer = await self._exchange("DELETE", self._base / asset_id, endpoint="delete", auth=True)
        self._success_data("delete", answer, data_required=False)

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
    ) -> tuple[_Answer, _FilePayload]:
        fd, size = await asyncio.to_thread(_open_regular, path, expected)
        try:
            payload = _FilePayload(
                fd,
                size,
                path=path,
                filename=filename,
                chunk_bytes=self._chunk_bytes,
                stall_timeout_s=self._read_timeout_s,
                on_headers_sent=on_headers_sent,
                before_last_bytes=before_last_bytes,
                shaper=self.shaper,
            )
            answer = await self._exchange("POST", url, endpoint=endpoint, auth=auth, body=payload)
            return answer, payload
        finally:
            # A worker thread may still be in pread() on this fd if we were cancelled; the
            # kernel keeps the open file alive for it, and its result is discarded.
            os.close(fd)

    async def _exchange(
        self,
        method: str,
        url: URL,
        *,
        endpoint: str,
        auth: bool,
        body: _FilePayload | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> _Answer:
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
                    answer = _Answer(
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
            raise self._error(ApiRetryable, endpoint, what, None) from None
        except (aiohttp.ClientError, OSError) as exc:
            if body is not None and body.local_error is not None:
                raise body.local_error from None
            raise self._error(ApiRetryable, endpoint, _describe(exc), None) from None
        if body is not None and body.local_error is not None:
            # The server answered although the body was cut short: the file is at fault.
            raise body.local_error
        log.debug(
            "%s %s: HTTP %d in %.3f s", method, endpoint, answer.status, loop.time() - started
        )
        return answer

    # ---------------------------------------------------------------------------------------
    # Classification

    def _success_data(
        self, endpoint: str, answer: _Answer, *, data_required: bool = True
    ) -> dict[str, Any]:
        """Return the envelope's ``data`` of a successful answer; raise the classified error."""
        if not 200 <= answer.status < 300:
            raise self._status_error(endpoint, answer)
        if answer.oversized:
            raise self._error(
                ApiRetryable,
                endpoint,
                f"answer larger than {MAX_ANSWER_BYTES} bytes, not read",
                answer.status,
            )
        envelope = _parse_json(answer.body)
        if not isinstance(envelope, dict) or "code" not in envelope:
            raise self._error(
                ApiRetryable, endpoint, f"not an API answer ({_kind(answer)})", answer.status
            )
        if not _is_success(envelope):
            msg = _short(envelope.get("msg"))
            code = _short(envelope.get("code"))
            raise self._error(
                ApiRetryable, endpoint, f"answer says failure (code {code}: {msg})", answer.status
            )
        data = envelope.get("data")
        if isinstance(data, dict):
            return data
        if data_required:
            raise self._error(ApiRetryable, endpoint, "answer has no data", answer.status)
        return {}

    def _status_error(self, endpoint: str, answer: _Answer) -> ApiError:
        """Return the error for a non-2xx answer."""
        status = answer.status
        storage = endpoint == "storage"
        envelope = None if answer.oversized else _parse_json(answer.body)
        msg = envelope.get("msg") if isinstance(envelope, dict) else None
        detail = _short(msg) if isinstance(msg, str) and msg.strip() else _kind(answer)
        cls: type[ApiError]
        if 300 <= status < 400:
            where = _strip_query(answer.location) if answer.location else "nowhere"
            return self._error(
                ApiRetryable,
                endpoint,
                f"redirect to {where} not followed (check api.base_url)",
                status,
            )
        if status in (400, 429):
            if (
                not storage
                and status == 400
                and isinstance(msg, str)
                and msg.strip().rstrip(".").lower() == _NOT_FOUND_MSG
            ):
                cls = ApiNotFound
            elif storage and status == 400 and b"expired" in answer.body.lower():
                cls = SignedUrlExpired
            else:
                cls = ApiThrottled
        elif status in (401, 403):
            cls = SignedUrlExpired if storage else ApiAuthError
        elif status == 402:
            cls = ApiNoCredits
        elif status == 408:
            cls = ApiRetryable
        elif 400 <= status < 500:
            cls = ApiPermanent
        else:
            cls = ApiRetryable
        return self._error(cls, endpoint, detail, status)

    def _asset_id_of(self, endpoint: str, data: dict[str, Any], status: int) -> str:
        asset_id = data.get("asset_id")
        if not isinstance(asset_id, str) or not ASSET_ID_RE.fullmatch(asset_id):
            shown = _short(asset_id) if asset_id is not None else "none"
            raise self._error(
                ApiRetryable, endpoint, f"answer has no valid asset_id ({shown})", status
            )
        return asset_id

    def _error(self, cls: type[ApiError], endpoint: str, what: str, status: int | None) -> ApiError:
        """Build a one-line error that names the endpoint and status and hides the key."""
        where = f"HTTP {status}" if status is not None else "no answer"
        message = f"{endpoint}: {where}: {what}"
        message = _CONTROL_RE.sub(" ", _strip_query(message))
        message = message.replace(self._key, "<key>")
        if len(message) > _MSG_LIMIT:
            message = message[: _MSG_LIMIT - 3] + "..."
            message = message.replace(self._key, "<key>")
        return cls(message, status=status, endpoint=endpoint)


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


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _is_success(envelope: dict[str, Any]) -> bool:
    code = envelope.get("code")
    ok_code = (type(code) is int and code == 200) or code in ("200", "0000")
    return (
        ok_code and envelope.get("success", True) is True and envelope.get("failed", False) is False
    )


def _kind(answer: _Answer) -> str:
    if answer.oversized:
        return f"answer larger than {MAX_ANSWER_BYTES} bytes"
    if not answer.body:
        return "empty answer"
    ctype = answer.content_type.split(";", 1)[0].strip() or "no content type"
    if _parse_json(answer.body) is None:
        return f"non-JSON answer ({ctype})"
    return f"JSON answer without msg ({ctype})"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = _CONTROL_RE.sub(" ", text).strip()
    return text if len(text) <= 120 else text[:117] + "..."


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _strip_query(text: str) -> str:
    return _QUERY_RE.sub(r"\1?...", text)


def _is_http_url(url: str) -> bool:
    try:
        parsed = URL(url, encoded=True)
    except (TypeError, ValueError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def _check_asset_id(asset_id: str) -> None:
    if not isinstance(asset_id, str) or not ASSET_ID_RE.fullmatch(asset_id):
        raise ValueError(f"not an asset id: {asset_id!r}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None
