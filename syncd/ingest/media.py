"""The media pre-flight: what a file must look like before it may cost an upload request.

The format table itself (extensions, MIME types, kinds) is :mod:`syncd.formats`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Final

from syncd.files import open_regular
from syncd.formats import SUPPORTED_EXTENSIONS, extension_of

# --------------------------------------------------------------------------------------------
# Pre-flight: what a file must look like before it may cost an upload request.

# How many leading bytes :func:`sniff` looks at: enough for five MPEG-TS packets (188 bytes
# each, 192 in M2TS), the longest signature that needs more than a few bytes.
HEAD_BYTES: Final = 1024

# The format family each extension's files normally hold (for :func:`family_mismatch`).
FAMILIES_BY_EXTENSION: dict[str, frozenset[str]] = {
    ext: frozenset(families)
    for exts, families in (
        (("mp4", "m4v", "mov", "m4a"), ("iso-bmff",)),
        (("avi",), ("riff-avi",)),
        (("wav",), ("riff-wave",)),
        (("webp",), ("riff-webp",)),
        (("mkv", "webm"), ("ebml",)),
        (("flv",), ("flv",)),
        (("wmv",), ("asf",)),
        (("mpeg", "mpg"), ("mpeg-ps", "mpeg-ts")),
        (("mp3",), ("mp3",)),
        (("aac",), ("aac",)),
        (("flac",), ("flac",)),
        (("ogg",), ("ogg",)),
        (("jpg", "jpeg"), ("jpeg",)),
        (("png",), ("png",)),
        (("gif",), ("gif",)),
        (("bmp",), ("bmp",)),
        (("tif", "tiff"), ("tiff",)),
    )
    for ext in exts
}

# Old QuickTime files may start with any of these atoms instead of `ftyp`.
_QUICKTIME_ATOMS = frozenset((b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"))
_RIFF_FORMS = {b"AVI ": "riff-avi", b"WAVE": "riff-wave", b"WEBP": "riff-webp"}
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\x1a\x45\xdf\xa3", "ebml"),
    (b"FLV\x01", "flv"),
    (_ASF_GUID, "asf"),
    (b"\x00\x00\x01\xba", "mpeg-ps"),
    (b"\x00\x00\x01\xb3", "mpeg-ps"),  # an MPEG-1/2 video elementary stream
    (b"fLaC", "flac"),
    (b"OggS", "ogg"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"ID3", "mp3"),
    (b"ADIF", "aac"),
)


def sniff(head: bytes) -> str | None:
    """Given a file's leading bytes (up to :data:`HEAD_BYTES`), return the format family they
    show (``"iso-bmff"``, ``"riff-avi"``, ``"ebml"``, ``"mpeg-ts"``, ``"mp3"``, ``"jpeg"``, ...;
    see :data:`FAMILIES_BY_EXTENSION`), or ``None`` when no known signature is there."""
    if head[4:8] in _QUICKTIME_ATOMS:
        return "iso-bmff"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] in _RIFF_FORMS:
        return _RIFF_FORMS[head[8:12]]
    for prefix, family in _PREFIXES:
        if head.startswith(prefix):
            return family
    if head[:2] == b"BM" and len(head) >= 10 and head[6:10] == b"\x00\x00\x00\x00":
        return "bmp"  # "BM" alone is too weak: the reserved header fields must be zero
    if _is_transport_stream(head):
        return "mpeg-ts"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac"  # ADTS: 12 sync bits, then layer 00
    if _is_mpeg_audio_frame(head):
        return "mp3"
    return None


def _is_transport_stream(head: bytes) -> bool:
    """0x47 at the start of every packet in ``head`` (at least two packets): 188-byte TS
    packets, or 192-byte M2TS packets with their 4-byte time code."""
    for first, step in ((0, 188), (4, 192)):
        starts = range(first, len(head), step)
        if len(starts) >= 2 and all(head[i] == 0x47 for i in starts):
            return True
    return False


def _is_mpeg_audio_frame(head: bytes) -> bool:
    """An MPEG audio frame header: 11 sync bits and no reserved version, layer, bit rate or
    sample rate."""
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0x3
    layer = (head[1] >> 1) & 0x3
    bitrate = head[2] >> 4
    sample_rate = (head[2] >> 2) & 0x3
    return version != 1 and layer != 0 and bitrate != 0xF and sample_rate != 3


def _describe_head(head: bytes) -> str:
    """Given leading bytes with no media signature, say what they look like instead."""
    if not head:
        return "has no content at the start"
    if not head.strip(b"\x00"):
        return "starts with zero bytes"
    text = head[:256].decode("utf-8", errors="replace")
    # One replacement is allowed: the cut at 256 bytes may split a multi-byte character.
    if text.count("\ufffd") <= 1 and all(c.isprintable() or c in "\t\n\r\f" for c in text):
        return "starts with text"
    return "has no known media signature"


def check_extension(name: str) -> str | None:
    """Given a file name, return why its extension is not one the API accepts, or ``None``.

    The first step of :func:`preflight`, usable before any byte is read.
    """
    ext = extension_of(name)
    if ext in SUPPORTED_EXTENSIONS:
        return None
    return f"not a supported media format ({'.' + ext if ext else 'no extension'})"


def preflight(name: str, size: int, head: bytes, *, max_bytes: int | None) -> str | None:
    """Decide whether a file may be uploaded at all.

    Given its name, size in bytes, leading bytes (:func:`read_head`) and
    ``upload.max_file_bytes``. Returns ``None`` when it may, else the one-line reason it is
    skipped: an unsupported extension, ``"empty file"``, larger than the limit, or content
    with no known media signature. A known signature of another family than the extension's
    (an ``.mp4`` holding Matroska) is accepted: the service reads the content, not the name.
    """
    why = check_extension(name)
    if why is not None:
        return why
    if size == 0:
        return "empty file"
    if max_bytes is not None and size > max_bytes:
        return f"larger than upload.max_file_bytes ({size} > {max_bytes})"
    if sniff(head) is None:
        return f"content is not media (.{extension_of(name)} that {_describe_head(head)})"
    return None


def family_mismatch(name: str, head: bytes) -> str | None:
    """Given a file name and its leading bytes, return a note when the content is a known
    format of another family than the extension suggests (for a debug log), else ``None``."""
    family = sniff(head)
    expected = FAMILIES_BY_EXTENSION.get(extension_of(name))
    if family is None or expected is None or family in expected:
        return None
    return f".{extension_of(name)} file holds {family} content"


def _read_head_sync(path: str, follow_symlinks: bool) -> bytes:
    fd, _ = open_regular(path, follow_symlinks=follow_symlinks)
    try:
        chunks: list[bytes] = []
        got = 0
        while got < HEAD_BYTES:
            chunk = os.read(fd, HEAD_BYTES - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


async def read_head(path: str, *, follow_symlinks: bool = False) -> bytes:
    """Read a file's first :data:`HEAD_BYTES` bytes (fewer if it is shorter) in a thread.

    Given its path and whether a final symlink may be followed. Never opens a FIFO, socket or
    device: raises :class:`~syncd.files.NotRegularFile` for them, and the ``OSError`` of a
    vanished or unreadable file.
    """
    return await asyncio.to_thread(_read_head_sync, path, follow_symlinks)
