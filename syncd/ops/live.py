"""What a running daemon shows of itself: one :class:`Snapshot`, and its renderings.

The daemon takes a snapshot of its stages (``Daemon.snapshot()``); everything that reports on
the running daemon reads that one value: the sd_notify STATUS= line and progress logs
(:meth:`Snapshot.summary`), the heartbeat record that ``syncd status`` reads from the ledger
(:func:`heartbeat_record`), the dashboard's live view (:func:`live_view`) and the CLI's
progress line; and the one summary line a stopping daemon logs (:func:`stopped_line`). Kept
beside the operator's commands because they are its readers: the writer and the readers of the
heartbeat record's shape live in one layer. Imports the stages' counters, the upload stage's
``Pause`` and the endpoint's ``Health``; no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from syncd.ingest.stage import Counters
from syncd.ops.health import Health
from syncd.ops.report import iso, path_fields
from syncd.upload.dispatcher import Pause
from syncd.upload.outcomes import UploadStats


@dataclass(frozen=True)
class Snapshot:
    """The running daemon at one moment."""

    health: Health
    uploaded: int
    bytes_sent: int
    done: int  # assets the poller saw reach their final status
    in_flight: int  # uploads claimed and not finished
    upload_queued: int  # claimed, waiting for a worker
    settling: int  # paths the settler tracks
    hashing: int  # paths a hash worker holds now
    hash_depth: int  # settled paths queued for hashing or being hashed
    pause: Pause | None
    backlog_bytes: int  # bytes still to upload, as of the last heartbeat

    def summary(self) -> str:
        """One line for sd_notify STATUS= and progress logs."""
        text = (
            f"uploaded {self.uploaded}, done {self.done}, in flight {self.in_flight}, "
            f"settling {self.settling}, hashing {self.hashing}"
        )
        if self.pause is not None:
            text += f"; paused: {self.pause.reason}"
        return text

    def queue(self) -> dict[str, int]:
        """Counts per in-memory stage, as the heartbeat and the dashboard show them."""
        return {
            "settling": self.settling,
            "hashing": self.hash_depth,
            "upload_queued": self.upload_queued,
            "uploading": self.in_flight,
        }


@dataclass(frozen=True)
class RootView:
    """One watched root as the dashboard shows it."""

    path: str
    available: bool
    watched: bool
    watch_limit_hits: int


def heartbeat_record(
    snap: Snapshot,
    *,
    started_at: float,
    now: float,
    open_for_write: Mapping[str, float],
    stopping: bool,
) -> dict[str, Any]:
    """Given a snapshot, return the ``daemon`` record the heartbeat writes to the ledger
    (epoch seconds; read back by ``syncd status``)."""
    h = snap.health
    return {
        "pid": os.getpid(),
        "started_at": started_at,
        "updated_at": now,
        "healthy": h.healthy,
        "ready": h.ready and not stopping,
        "reason": h.reason,
        "paused": snap.pause.reason if snap.pause else None,
        "queue": snap.queue(),
        "open_for_write": dict(open_for_write),
        "stopping": stopping,
    }


def live_view(
    snap: Snapshot,
    *,
    started_at: float,
    cooldowns_s: Mapping[str, float],
    roots: Iterable[RootView],
) -> dict[str, Any]:
    """Given a snapshot, the pacer's remaining cool-down per endpoint and the roots, return
    what the dashboard shows of the running daemon beyond the ledger (JSON-ready; see
    :class:`~syncd.ops.dashboard.DaemonView`)."""
    h, pause = snap.health, snap.pause
    return {
        "pid": os.getpid(),
        "started_at": iso(started_at),
        "healthy": h.healthy,
        "ready": h.ready,
        "reason": h.reason,
        "queue": snap.queue(),
        "paused": None
        if pause is None
        else {"kind": pause.kind, "reason": pause.reason, "until": iso(pause.until)},
        "cooldowns": [
            {"endpoint": name, "remaining_s": round(left_s, 1)}
            for name, left_s in cooldowns_s.items()
            if left_s > 0
        ],
        "roots": [
            {
                **path_fields(r.path),
                "available": r.available,
                "watched": r.watched,
                "watch_limit_hits": r.watch_limit_hits,
            }
            for r in roots
        ],
    }


def stopped_line(
    reason: str,
    s: UploadStats,
    c: Counters,
    *,
    done: int,
    cancelled_in_flight: int,
    possible_duplicates: int,
    uptime_s: float,
) -> str:
    """Given why the daemon stopped and what its stages counted, return the one summary line
    it logs (``key=value`` pairs, for people and for grep)."""
    return (
        f"syncd stopped ({reason}): uploaded={s.uploaded} bytes={s.bytes_sent} done={done} "
        f"retried={s.retried} throttled={s.throttled} rejected={s.rejected} "
        f"failed={s.failed} superseded={s.superseded} hashed={c.hashed} "
        f"unchanged={c.unchanged} duplicates={c.duplicates} skipped={c.skipped} "
        f"unsettled={c.unsettled} cancelled_in_flight={cancelled_in_flight} "
        f"possible_remote_duplicates={possible_duplicates} uptime_s={uptime_s:.0f}"
    )
