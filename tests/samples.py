"""Sample media files for tests: a real format signature followed by deterministic bytes."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

# Leading bytes that identify each format (what a real file of that type starts with).
HEADERS: dict[str, bytes] = {
    "mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
    "mov": b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ",
    "m4a": b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A isom",
    "mkv": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01",
    "webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01",
    "avi": b"RIFF\x00\x00\x00\x00AVI LIST",
    "wav": b"RIFF\x00\x00\x00\x00WAVEfmt ",
    "webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "flv": b"FLV\x01\x05\x00\x00\x00\x09",
    "wmv": b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa\x00\x62\xce\x6c",
    "mpeg": b"\x00\x00\x01\xba\x44\x00\x04\x00\x04\x01",
    "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00",
    "aac": b"\xff\xf1\x50\x80\x02\x1f\xfc",
    "flac": b"fLaC\x00\x00\x00\x22",
    "ogg": b"OggS\x00\x02\x00\x00",
    "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "gif": b"GIF89a\x01\x00\x01\x00",
    "bmp": b"BM\x00\x00\x00\x00\x00\x00\x00\x00",
    "tiff": b"II*\x00\x08\x00\x00\x00",
}


def media_bytes(ext: str = "mp4", size: int = 4096, seed: int = 0) -> bytes:
    """Return ``size`` bytes starting with the ``ext`` signature, the rest seeded pseudo-random."""
    head = HEADERS[ext]
    if size < len(head):
        raise ValueError(f"size {size} is shorter than the {ext} header")
    rng = random.Random(f"{ext}:{size}:{seed}")
    return head + rng.randbytes(size - len(head))


def write_media(path: Path, ext: str | None = None, size: int = 4096, seed: int = 0) -> str:
    """Write a sample file at ``path`` (format from its suffix unless given); return its sha256."""
    data = media_bytes(ext or path.suffix.lstrip(".").lower(), size, seed)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()
