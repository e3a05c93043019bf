"""A file's stat fingerprint: what tells "unchanged" apart from "changed" without reading it."""

from __future__ import annotations

import os
from typing import NamedTuple


class Fingerprint(NamedTuple):
    """Device, inode, size and change times of a file, as ``os.stat`` reports them."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Fingerprint:
        """Given a stat result, return its fingerprint."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @classmethod
    def stat(cls, path: str | bytes) -> Fingerprint:
        """Stat ``path``, following symlinks; returns its fingerprint; raises ``OSError``."""
        return cls.of(os.stat(path))
