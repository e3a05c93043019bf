"""The watched roots at run time: their state, which one owns a path, and whether one is
still the folder that was armed.

Shared by the intake (which arms, watches and monitors the roots) and the scans (which walk
them); the ingest stage reads it to find a path's root.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from syncd.config import WatchRoot
from syncd.ingest.pathfilter import PathFilter
from syncd.ingest.rootcheck import RootIdentity, root_available


@dataclass
class RootState:
    """One watched root at run time."""

    cfg: WatchRoot
    filt: PathFilter
    available: bool = False
    identity: RootIdentity | None = None  # what it was when first armed
    watched: bool = False
    reported: bool = False  # its unavailability was logged (once, until it comes back)
    full_scan: asyncio.Task[None] | None = None
    rescan_wanted: bool = False  # a full scan was asked for while one ran
    following_up: bool = False  # the next full scan is a follow-up of a repeated request
    pending_rescan: asyncio.TimerHandle | None = None
    scans: set[asyncio.Task[None]] = field(default_factory=set)


class Roots:
    """The watched roots by configured path, and which of them owns a path (nested roots)."""

    def __init__(self) -> None:
        self.by_path: dict[str, RootState] = {}

    def __getitem__(self, path: str) -> RootState:
        return self.by_path[path]

    def get(self, path: str) -> RootState | None:
        """Given a configured root path, return its state, or None when it is not watched."""
        return self.by_path.get(path)

    def __iter__(self) -> Iterator[RootState]:
        return iter(list(self.by_path.values()))

    def __len__(self) -> int:
        return len(self.by_path)

    def root_of(self, path: str) -> RootState | None:
        """The deepest root ``path`` lies under: with nested roots, the one that owns it."""
        best: RootState | None = None
        best_len = -1
        for state in self.by_path.values():
            root = os.path.normpath(state.cfg.path).rstrip("/") + "/"
            if path.startswith(root) and len(root) > best_len:
                best, best_len = state, len(root)
        return best

    def owns(self, root: str, path: str) -> bool:
        """Whether the root configured as ``root`` owns ``path`` (no deeper root holds it)."""
        owner = self.root_of(path)
        return owner is None or owner.cfg.path == root


async def same_root(state: RootState) -> bool:
    """Whether the root is there and is still what it was when first armed (the same file
    system, or a mount point mounted again); blocking checks run in a thread."""
    return await asyncio.to_thread(root_available, state.cfg.path, state.identity)
