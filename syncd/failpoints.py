"""Crash points for the kill -9 torture test.

``SYNCD_FAILPOINTS=name:N[,name:N...]`` makes the process SIGKILL itself the Nth time it reaches
the crash point ``name`` (the windows a kill at a random moment rarely hits, such as between the
API's answer and the ledger commit). Without the variable, and so always in production, reaching
a crash point costs one dictionary lookup and does nothing.

Crash points: ``hashed`` (hashed, not yet recorded), ``attempt_started`` (attempt committed,
request not sent), ``answered`` (the API answered with an asset id, not yet committed),
``allocated`` (a signed URL was allocated, not yet committed), ``stored`` (storage accepted the
bytes, not yet committed), ``cleanup_committed`` (a clean-up's intent is committed, the file
not yet touched), ``cleanup_placed`` (a file being moved after SUCCESS is linked or
copied to its destination, the source not yet removed), ``cleanup_unlinked`` (the source is
deleted or moved, not yet committed).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

NAMES = frozenset(
    {
        "hashed",
        "attempt_started",
        "answered",
        "allocated",
        "stored",
        "cleanup_committed",
        "cleanup_placed",
        "cleanup_unlinked",
    }
)


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        if name in NAMES:
            points[name] = int(count) if count.isdigit() and int(count) > 0 else 1
    return points


_POINTS = _parse(os.environ.get("SYNCD_FAILPOINTS", ""))
_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Reach crash point ``name``: SIGKILL this process if the environment asks for it here."""
    if not _POINTS or name not in _POINTS:
        return
    _hits[name] += 1
    if _hits[name] >= _POINTS[name]:
        os.kill(os.getpid(), signal.SIGKILL)
