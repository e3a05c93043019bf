"""Per-chunk checksums of a file, taken in the same pass as its SHA-256, checked while sending.

Invariant 1 (``docs/guarantees.md``): the bytes sent are the bytes hashed. The hasher reads a
file once and feeds every chunk both to SHA-256 and to xxh3-64 (the ``xxhash`` package: ~0.02
CPU-s per GiB against SHA-256's ~0.6); the upload then checks each chunk it reads for
sending against the checksum of the same chunk, and stops at the first one that differs,
before the body is complete. So a big file is SHA-256-hashed once instead of twice, and a
change is caught at the chunk it hit instead of at the end of the body.

The checksums live only in memory (:class:`ChunkSumsCache`, bounded): an upload that finds
none for its content (after a restart, or pushed out of the cache) hashes the bytes it sends
with SHA-256 as before. xxh3 is not a cryptographic hash: it catches accidental change (a
writer, a truncation, a swapped file) with a chance of 2^-64 per changed chunk to miss it,
which is what invariant 1 is about; it is no defence against a local writer that crafts
collisions, which could as well have written its bytes before the hash.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import xxhash

from syncd.fingerprint import Fingerprint

SUM_BYTES = 8
"""Bytes per chunk checksum (xxh3-64, big-endian, as ``xxh3_64_digest`` returns it)."""

DEFAULT_CACHE_ENTRIES = 1024


def new_sum() -> xxhash.xxh3_64:
    """Return a fresh streaming xxh3-64 state (``update``, ``digest``, ``reset``)."""
    return xxhash.xxh3_64()


def chunk_sum(data: bytes | memoryview) -> bytes:
    """Return the checksum of one chunk (``SUM_BYTES`` bytes)."""
    return xxhash.xxh3_64_digest(data)


@dataclass(frozen=True, slots=True)
class ChunkSums:
    """The checksums of a file's chunks, from the pass that computed its SHA-256.

    ``sha256`` and ``fingerprint`` are the content's hash and the file's fingerprint in that
    pass; chunk ``i`` covers bytes ``[i * chunk_bytes, (i + 1) * chunk_bytes)`` (the last one
    what is left); ``sums`` holds ``SUM_BYTES`` per chunk, in order.
    """

    sha256: str
    fingerprint: Fingerprint
    chunk_bytes: int
    sums: bytes

    @property
    def count(self) -> int:
        """How many chunks."""
        return len(self.sums) // SUM_BYTES

    def of(self, index: int) -> bytes:
        """Return the checksum of chunk ``index``. Raises ``IndexError`` past the last."""
        if not 0 <= index < self.count:
            raise IndexError(f"chunk {index} of {self.count}")
        return self.sums[index * SUM_BYTES : (index + 1) * SUM_BYTES]

    def covers(self, size: int) -> bool:
        """Whether these chunks describe a file of ``size`` bytes (one chunk at size 0)."""
        if self.chunk_bytes <= 0 or size != self.fingerprint.size:
            return False
        return self.count == max(1, -(-size // self.chunk_bytes))


class ChunkSumsCache:
    """The chunk checksums of contents waiting for upload, by SHA-256; the oldest go first.

    Given the most entries to keep. The ingest stage puts, the uploader gets; both on the event
    loop, but a lock keeps it safe from any thread.
    """

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, ChunkSums] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, sums: ChunkSums) -> None:
        """Keep ``sums`` for its content, replacing what was kept for it."""
        with self._lock:
            self._entries.pop(sums.sha256, None)
            self._entries[sums.sha256] = sums
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, sha256: str, fingerprint: Fingerprint) -> ChunkSums | None:
        """Return the checksums kept for ``sha256`` if they were taken from a file with
        ``fingerprint`` (the one about to be sent), else None."""
        with self._lock:
            sums = self._entries.get(sha256)
        if sums is None or sums.fingerprint != fingerprint or not sums.covers(fingerprint.size):
            return None
        return sums

    def discard(self, sha256: str) -> None:
        """Forget what was kept for ``sha256`` (its upload is over)."""
        with self._lock:
            self._entries.pop(sha256, None)
