"""One path the settler tracks: its state, and what is read from that state alone.

:class:`Track` holds what the settler knows of one path (its events, its stats, whether it is
open for writing); :func:`next_look` says when the settler should look at it again,
:func:`why` why it still waits, :func:`unsettled_reason` why it was given up, and
:func:`set_writing` changes its open-for-writing state with the time it began. The rules that
change a track on an event or a round stay in :mod:`syncd.ingest.settle`; these are the parts
that need nothing but the track and the settle times. :func:`stat_all` is the blocking stat the
settler's rounds run in a thread.
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from syncd.files import file_kind
from syncd.fingerprint import Fingerprint

Writing = Literal["no", "maybe", "yes", "proc"]


@dataclass(slots=True, eq=False)
class Track:
    """What the settler knows of one tracked path (times on the settler's clock unless said)."""

    path: str
    root: str
    first_seen: float  # settler clock
    last_event: float  # settler clock: the last content event, or the offer
    probe: Fingerprint | None = None
    probe_at: float = -math.inf  # when ``probe`` was taken (clock)
    old_on_offer: bool = False  # offered with an mtime older than quiet_s
    writing: Writing = "no"
    writing_since: float | None = None  # wall clock, for status and reasons
    pids: tuple[int, ...] = ()
    opens: int = 0  # opens seen minus closes seen
    after_create: bool = False  # the last event was its creation: the next open is the creator's
    yes_by_create: bool = False  # "yes" comes only from that guess, no write seen yet
    proc_checked_at: float = -math.inf
    not_before: float = -math.inf
    error: str | None = None  # the last stat failure
    scheduled: float = math.inf  # time of its live heap entry


def set_writing(tr: Track, writing: Writing) -> None:
    """Set ``tr``'s open-for-writing state; the wall-clock time it began is kept while it
    stays other than "no", and the processes found are dropped when it becomes "no"."""
    tr.yes_by_create = False
    if writing == "no":
        tr.writing_since = None
        tr.pids = ()
    elif tr.writing == "no" or tr.writing_since is None:
        tr.writing_since = time.time()
    tr.writing = writing


def next_look(
    tr: Track,
    *,
    quiet_s: float,
    max_wait_s: float,
    half_s: float,
    recheck_s: float,
    lost_close_s: float,
    proc_usable: bool,
) -> float:
    """Return when ``tr`` should next be looked at (settler clock), given the settle times
    (``half_s``: the least spacing of two stats; ``recheck_s``: of two ``/proc`` checks;
    ``lost_close_s``: how long a written file may stay silent before ``/proc`` is asked) and
    whether ``/proc`` can be asked."""
    limit = tr.first_seen + max_wait_s
    if tr.writing == "yes" and proc_usable:
        # A close after writing can be lost (a queue overflow cuts between a file's open
        # and its close). After a long quiet spell /proc decides, as for "maybe": a writer
        # that is only pausing still holds the file open there.
        return min(max(tr.last_event + lost_close_s, tr.not_before), limit)
    if tr.writing == "yes" or (tr.writing == "maybe" and not proc_usable):
        return limit  # only an event (its close) or the time limit can move it on
    if tr.old_on_offer:
        t = tr.last_event
    elif tr.probe is None or tr.probe_at < tr.last_event:
        t = max(tr.last_event + half_s, tr.probe_at + half_s)
    else:
        t = max(tr.last_event + quiet_s, tr.probe_at + half_s)
    if tr.writing == "proc":
        t = max(t, tr.proc_checked_at + recheck_s)
    return min(max(t, tr.not_before), limit)


def why(tr: Track, now: float, quiet_s: float) -> str:
    """Return why ``tr`` is not handed on yet at ``now`` (settler clock), in words."""
    if tr.writing == "proc" and tr.pids:
        return f"open for writing by process {', '.join(map(str, tr.pids))}"
    if tr.writing in ("yes", "proc"):
        return "open for writing; waiting for it to be closed"
    if tr.writing == "maybe":
        return "probably open for writing (written without an open seen); waiting for its close"
    if tr.error is not None:
        return f"cannot be read ({tr.error}); trying again"
    if tr.old_on_offer:
        return "found by a scan; checking that it is not changing"
    quiet = f"complete after {quiet_s:g} s without changes"
    return f"changed {max(0.0, now - tr.last_event):.0f} s ago; {quiet}"


def unsettled_reason(tr: Track, max_wait_s: float) -> str:
    """Return why ``tr`` was given up after ``max_wait_s``, in words (``on_unsettled``'s)."""
    waited = f"{max_wait_s:g} s"
    if tr.writing != "no" and tr.writing_since is not None:
        reason = f"still open for writing since {_iso(tr.writing_since)} after {waited}"
        if tr.pids and tr.writing == "proc":
            reason += f" (process {', '.join(map(str, tr.pids))})"
        return reason
    if tr.error is not None:
        return f"cannot be read ({tr.error}) after {waited}"
    return f"still changing after {waited}"


def stat_all(
    items: Iterable[tuple[str, bool]],
) -> list[Fingerprint | str | OSError | None]:
    """Blocking: stat each ``(path, follow_symlinks)``. Returns per path its fingerprint, what
    it is instead of a regular file (a string), the ``OSError``, or None when it is gone."""
    out: list[Fingerprint | str | OSError | None] = []
    for path, follow in items:
        try:
            st = os.stat(path, follow_symlinks=follow)
        except (FileNotFoundError, NotADirectoryError):
            out.append(None)
        except OSError as exc:
            out.append(exc)
        else:
            out.append(Fingerprint.of(st) if stat.S_ISREG(st.st_mode) else file_kind(st.st_mode))
    return out


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
