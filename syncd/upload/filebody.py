"""The request body of an upload: one file streamed from disk, hashed as it goes.

:func:`open_checked` opens the file in a worker thread (a regular file only, and exactly the
one the caller checked); :class:`FilePayload` is the ``multipart/form-data`` body (or, for a
signed URL, the same stream) aiohttp sends with a ``Content-Length``: each chunk is read and
hashed (SHA-256) in one worker-thread call, so the digest is of exactly the bytes that were
sent, or, given the checksums the hash pass took of each chunk (:mod:`syncd.chunksums`),
checked against the checksum of the same chunk (one SHA-256 pass per byte instead of two,
and a change is caught at the chunk it hit); each write to the socket must make progress
within the stall timeout. File problems raise :class:`LocalFileError`, an ``OSError``: the
file, not the API, is at fault.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
from aiohttp.abc import AbstractStreamWriter

from syncd import events
from syncd.chunksums import ChunkSums, chunk_sum
from syncd.display import display_path
from syncd.errors import EXIT_IOERR, SyncdError
from syncd.files import NotRegularFile, open_regular
from syncd.fingerprint import Fingerprint
from syncd.formats import FORMATS, extension_of
from syncd.upload.shaper import ByteShaper

log = logging.getLogger(__name__)

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
        super().__init__(f"cannot upload {display_path(path)}: {detail}")
        self.path = path
        self.detail = detail
        self.errno = errno
        self.strerror = detail
        self.filename = path

    def __str__(self) -> str:
        return str(self.args[0])


def multipart_filename(name: str) -> str:
    """Return ``name`` as it goes between the quotes of the multipart ``filename`` parameter.

    Bytes that are not UTF-8 (surrogate-escaped by ``os.fsdecode``) become U+FFFD; control
    characters, ``"``, ``;``, ``\\`` and ``%`` are percent-encoded; everything else stays as
    UTF-8.
    """
    return _FILENAME_UNSAFE_RE.sub(lambda m: f"%{ord(m.group()):02X}", clean_name(name))


def clean_name(name: str) -> str:
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


def open_checked(path: str, expected: Fingerprint | None) -> tuple[int, int]:
    """Runs in a worker thread: open ``path`` for reading; returns (fd, size).

    ``expected``, when given, is the fingerprint the caller checked: the file opened must be
    exactly that file (a symlink or another file swapped in since is refused, unsent). Raises
    :class:`LocalFileError` for a file that cannot be opened or is not a regular file.
    """
    try:
        fd, st = open_regular(path, follow_symlinks=True)
    except NotRegularFile as exc:
        raise LocalFileError(path, f"not a regular file (it is {exc.kind})") from None
    except OSError as exc:
        raise LocalFileError(path, exc.strerror or str(exc), exc.errno) from None
    if expected is not None and Fingerprint.of(st) != expected:
        os.close(fd)
        raise LocalFileError(path, "changed since it was checked; nothing was sent")
    return fd, st.st_size


class BytesChanged(LocalFileError):
    """A chunk read for sending is not the chunk that was hashed: the file changed under the
    upload. The body was stopped there, before its end, so the service holds no complete file.

    Given the path, the chunk's index and its first and last byte offsets.
    """

    def __init__(self, path: str, index: int, start: int, end: int) -> None:
        super().__init__(
            path,
            f"chunk {index} (bytes {start}-{end - 1}) changed since it was hashed; "
            "stopped before the end of the body",
        )
        self.index = index


def _read_and_check(fd: int, size: int, offset: int, expected: bytes) -> tuple[bytes, bool]:
    """Runs in a worker thread: read up to ``size`` bytes at ``offset``; returns them and
    whether they are exactly ``size`` bytes whose checksum is ``expected``."""
    data = os.pread(fd, size, offset)
    return data, len(data) == size and chunk_sum(data) == expected


class FilePayload(aiohttp.Payload):
    """A ``multipart/form-data`` body with one ``file`` part streamed from an open file.

    The size is known up front, so aiohttp sends a ``Content-Length``. Each chunk is read and
    hashed (SHA-256) in one worker-thread call; given ``verify`` (the checksums the hash pass
    took of this file's chunks), each chunk of ``verify.chunk_bytes`` is instead read and
    checked against the checksum of the same chunk, and the body stops at the first that
    differs (:class:`BytesChanged`). Each write to the socket must make progress within
    ``stall_timeout_s``.
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
        verify: ChunkSums | None = None,
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
        self._verify = verify if verify is not None and verify.covers(file_size) else None
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

    def sent_sha256(self) -> str:
        """The SHA-256 (hex) of the file bytes sent: computed while sending, or, when every
        chunk was checked against the hash pass's checksums, that pass's SHA-256."""
        if self._verify is not None:
            return self._verify.sha256
        return self.sha256.hexdigest()

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
        verify = self._verify
        chunk_bytes = verify.chunk_bytes if verify is not None else self._chunk_bytes
        index = 0
        while offset < self._file_size:
            want = min(chunk_bytes, self._file_size - offset)
            if self._shaper is not None and verify is None:
                # The byte budget every worker shares: at most what it grants, after its wait.
                want = await self._shaper.take(want)
            try:
                if verify is None:
                    data = await asyncio.to_thread(
                        _read_and_hash, self._fd, want, offset, self.sha256
                    )
                else:
                    data, same = await asyncio.to_thread(
                        _read_and_check, self._fd, want, offset, verify.of(index)
                    )
                    if not same:
                        self.local_error = BytesChanged(self._path, index, offset, offset + want)
                        raise self.local_error
            except BytesChanged:
                raise
            except OSError as exc:
                self.local_error = LocalFileError(self._path, exc.strerror or str(exc), exc.errno)
                raise self.local_error from None
            if not data:
                self.local_error = LocalFileError(
                    self._path, f"file shrank while being sent ({offset} of {self._file_size})"
                )
                raise self.local_error
            if self._shaper is not None and verify is not None:
                # A checked chunk is read whole (its checksum covers all of it), then sent in
                # the slices the shared byte budget grants, each after its wait.
                rest = memoryview(data)
                while rest:
                    n = await self._shaper.take(len(rest))
                    await self._send(writer, rest[:n])
                    rest = rest[n:]
            else:
                await self._send(writer, data)
            index += 1
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

    async def _send(self, writer: AbstractStreamWriter, data: bytes | memoryview) -> None:
        try:
            async with asyncio.timeout(self._stall_timeout_s):
                await writer.write(data)
        except TimeoutError:
            self.stalled = True
            raise
