"""What the MAVI v2 API accepts: media formats by extension, their MIME types and media kinds.

A foundation leaf: the client (content types), the ingest pre-flight and the emulator all read
this one table, so none of them has to import another's layer for it.
"""

from __future__ import annotations

from typing import Literal

MediaKind = Literal["video", "audio", "image"]

# Extension (lower case, no dot) -> (kind, MIME type). The API's documented list: video MP4,
# MOV, AVI, WebM, MKV, FLV, WMV, MPEG; audio MP3, WAV, AAC, FLAC, OGG, M4A; image JPEG, PNG,
# GIF, WebP, BMP, TIFF. Common alternative extensions of the same formats are included.
FORMATS: dict[str, tuple[MediaKind, str]] = {
    "mp4": ("video", "video/mp4"),
    "m4v": ("video", "video/mp4"),
    "mov": ("video", "video/quicktime"),
    "avi": ("video", "video/x-msvideo"),
    "webm": ("video", "video/webm"),
    "mkv": ("video", "video/x-matroska"),
    "flv": ("video", "video/x-flv"),
    "wmv": ("video", "video/x-ms-wmv"),
    "mpeg": ("video", "video/mpeg"),
    "mpg": ("video", "video/mpeg"),
    "mp3": ("audio", "audio/mpeg"),
    "wav": ("audio", "audio/wav"),
    "aac": ("audio", "audio/aac"),
    "flac": ("audio", "audio/flac"),
    "ogg": ("audio", "audio/ogg"),
    "m4a": ("audio", "audio/mp4"),
    "jpg": ("image", "image/jpeg"),
    "jpeg": ("image", "image/jpeg"),
    "png": ("image", "image/png"),
    "gif": ("image", "image/gif"),
    "webp": ("image", "image/webp"),
    "bmp": ("image", "image/bmp"),
    "tif": ("image", "image/tiff"),
    "tiff": ("image", "image/tiff"),
}

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(FORMATS)


def extension_of(filename: str) -> str:
    """Given a file name, return its extension in lower case without the dot ('' if none)."""
    base = filename.rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return ext.lower() if dot and stem else ""
