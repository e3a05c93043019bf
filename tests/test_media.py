"""Media pre-flight: extension, magic bytes, empty files, the size limit, reading the head."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from samples import HEADERS, media_bytes, write_media

from syncd.files import NotRegularFile
from syncd.ingest.media import (
    FAMILIES_BY_EXTENSION,
    HEAD_BYTES,
    SUPPORTED_EXTENSIONS,
    check_extension,
    family_mismatch,
    preflight,
    read_head,
    sniff,
)


@pytest.mark.parametrize("ext", sorted(HEADERS))
async def test_every_sample_is_accepted_with_its_extension(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"clip.{ext}"
    write_media(path)
    head = await read_head(str(path))
    assert len(head) == HEAD_BYTES
    assert sniff(head) in FAMILIES_BY_EXTENSION[ext]
    assert preflight(path.name, path.stat().st_size, head, max_bytes=None) is None
    assert family_mismatch(path.name, head) is None


@pytest.mark.parametrize("ext", sorted(HEADERS))
def test_the_bare_header_is_enough(ext: str) -> None:
    # Only the signature, nothing after it (except MPEG-TS, which needs two packets).
    assert sniff(HEADERS[ext]) in FAMILIES_BY_EXTENSION[ext]


def test_every_supported_extension_has_a_family() -> None:
    assert set(FAMILIES_BY_EXTENSION) == set(SUPPORTED_EXTENSIONS)


@pytest.mark.parametrize(
    ("head", "family"),
    [
        (b"\x00\x00\x00\x08wide\x00\x00\x00\x00mdat", "iso-bmff"),  # old QuickTime
        (b"\x00\x00\x00\x00moov", "iso-bmff"),
        (b"\x00\x00\x10\x00mdat", "iso-bmff"),
        (b"\x00\x00\x00\x08free", "iso-bmff"),
        (b"\x00\x00\x00\x08skip", "iso-bmff"),
        (b"\x00\x00\x00\x14pnot", "iso-bmff"),
        (b"RF64\xff\xff\xff\xffWAVEds64", "riff-wave"),
        (b"\x00\x00\x01\xb3\x16\x00\xf0\x15", "mpeg-ps"),
        (b"\xff\xfb\x90\x64\x00", "mp3"),  # MPEG-1 layer III, 128 kb/s, 44.1 kHz
        (b"\xff\xf3\x48\xc4", "mp3"),  # MPEG-2 layer III
        (b"\xff\xf9\x50\x80", "aac"),  # ADTS, MPEG-2
        (b"ADIF\x00", "aac"),
        (b"GIF87a\x01\x00", "gif"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (b"II+\x00\x08\x00\x00\x00", "tiff"),
    ],
)
def test_other_signatures(head: bytes, family: str) -> None:
    assert sniff(head) == family


def test_transport_stream_needs_sync_bytes_on_every_packet() -> None:
    packet = b"\x47" + bytes(187)
    assert sniff(packet * 6) == "mpeg-ts"
    assert sniff((packet * 6)[:HEAD_BYTES]) == "mpeg-ts"
    m2ts = (bytes(4) + packet) * 6
    assert sniff(m2ts) == "mpeg-ts"
    assert sniff(packet) is None  # one packet is not enough evidence
    broken = bytearray(packet * 6)
    broken[376] = 0x00
    assert sniff(bytes(broken)) is None
    assert sniff(b"G" + b"ood morning, this is text" * 20) is None


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"hello world, this is not a video\n",
        b"BMW service notes, not a bitmap",  # "BM" alone is not a BMP
        b"\xff\xff\xff\xff",  # reserved MPEG audio fields
        b"\xff\xe0\x00\x00",  # MPEG audio layer "reserved"
        b"\xff\xea\x00\x00",  # MPEG audio version "reserved"
        b"RIFF\x00\x00\x00\x00XXXX",  # RIFF of an unknown form
        b"PK\x03\x04zip",
        b"%PDF-1.7",
        bytes(64),
    ],
)
def test_not_media(head: bytes) -> None:
    assert sniff(head) is None


def test_text_in_an_mp4_is_rejected() -> None:
    head = b"#!/bin/sh\necho this is a script, not a movie\n"
    assert (
        preflight("clip.mp4", len(head), head, max_bytes=None)
        == "content is not media (.mp4 that starts with text)"
    )


def test_other_non_media_reasons() -> None:
    zeros = bytes(100)
    assert preflight("a.mov", 100, zeros, max_bytes=None) == (
        "content is not media (.mov that starts with zero bytes)"
    )
    blob = b"\x01\x02\x03\x80\x81\xfe" * 10
    assert preflight("a.png", 60, blob, max_bytes=None) == (
        "content is not media (.png that has no known media signature)"
    )
    utf8 = "Grüße, ceci n'est pas une vidéo ".encode() * 20
    reason = preflight("a.mp4", len(utf8), utf8[:HEAD_BYTES], max_bytes=None)
    assert reason == "content is not media (.mp4 that starts with text)"


def test_empty_file_is_rejected() -> None:
    assert preflight("clip.mp4", 0, b"", max_bytes=None) == "empty file"


def test_unsupported_extension_is_rejected_before_anything_else() -> None:
    head = HEADERS["mp4"]
    assert preflight("notes.txt", 10, head, max_bytes=None) == (
        "not a supported media format (.txt)"
    )
    assert preflight("README", 10, head, max_bytes=None) == (
        "not a supported media format (no extension)"
    )
    assert preflight(".mp4", 10, head, max_bytes=None) == (
        "not a supported media format (no extension)"
    )
    assert check_extension("clip.MP4") is None
    assert check_extension("clip.heic") == "not a supported media format (.heic)"


def test_size_limit() -> None:
    head = media_bytes("mp4", 64)
    assert preflight("a.mp4", 1000, head, max_bytes=1000) is None
    assert preflight("a.mp4", 1001, head, max_bytes=1000) == (
        "larger than upload.max_file_bytes (1001 > 1000)"
    )
    assert preflight("a.mp4", 10**12, head, max_bytes=None) is None


def test_mismatched_family_is_accepted_but_noted() -> None:
    head = HEADERS["mkv"]
    assert preflight("clip.mp4", 100, head, max_bytes=None) is None
    assert family_mismatch("clip.mp4", head) == ".mp4 file holds ebml content"
    assert family_mismatch("clip.mp4", b"text") is None


async def test_read_head_of_a_short_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gif"
    path.write_bytes(HEADERS["gif"])
    assert await read_head(str(path)) == HEADERS["gif"]


async def test_read_head_never_opens_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    # Opening a FIFO for reading would wait for a writer forever: the timeout makes a
    # regression fail instead of hanging.
    with pytest.raises(NotRegularFile, match="a FIFO"):
        await asyncio.wait_for(read_head(str(fifo)), timeout=10)


async def test_read_head_refuses_a_socket_and_a_device(tmp_path: Path) -> None:
    sock_path = tmp_path / "clip.mp4"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(NotRegularFile, match="a socket"):
            await asyncio.wait_for(read_head(str(sock_path)), timeout=10)
    with pytest.raises(NotRegularFile, match="a character device"):
        await asyncio.wait_for(read_head("/dev/zero"), timeout=10)


async def test_read_head_and_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "real.png"
    write_media(target)
    link = tmp_path / "link.png"
    link.symlink_to(target)
    with pytest.raises(NotRegularFile, match="a symlink"):
        await read_head(str(link))
    assert await read_head(str(link), follow_symlinks=True) == target.read_bytes()[:HEAD_BYTES]


async def test_read_head_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await read_head(str(tmp_path / "gone.mp4"))
