"""Transfer shaping: one byte budget for every upload worker, with a weekly timetable.

Given a default limit (``upload.max_bytes_per_s``, ``None`` for none) and a list of windows
(``upload.schedule``: days, from, to, limit; a limit of 0 means no uploads in that window),
:class:`ByteShaper` hands out bytes to whoever sends them, a grant of at most ``grant_bytes``
at a time. A zero window holds new uploads back (:meth:`ByteShaper.wait_open`, called before
a request starts); a body already on its way when one opens finishes at the last limit in
force before it, because a body held back for hours would only be dropped by the server and
sent again. The budget is a token bucket kept as a theoretical arrival time (GCRA): each grant
moves ``tat`` on by ``n / rate``, and a sender waits until ``tat`` reached its turn. The bucket
holds no credit for idle time, so nothing bursts when a window opens or a worker comes back;
the largest burst is one grant.

Windows are read in the host's local time zone. The first window that covers a moment
decides its limit; outside every window the default applies. A window whose ``to`` is not
after its ``from`` runs past midnight and belongs to the day it starts on.

No I/O and no threads: the clocks and the sleep are injected, so tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from syncd.config import UploadConfig
from syncd.units import parse_clock_time, parse_days

# A grant covers at most this long at the current rate, so a slow limit still moves in small
# steps and a window that opens or closes takes effect within about this time.
GRANT_S = 0.05
DEFAULT_GRANT_BYTES = 256 * 1024
# How long a sender held by a zero-rate window sleeps before it looks at the timetable again,
# at most: a SIGHUP that lifts the pause also wakes it at once (see ByteShaper.update).
PAUSED_RECHECK_S = 60.0


@dataclass(frozen=True)
class Window:
    """One line of the timetable: on ``days``, from ``start_min`` to ``end_min`` (minutes
    after midnight, local time), at most ``bytes_per_s`` (0: no uploads)."""

    days: frozenset[int]
    start_min: int
    end_min: int
    bytes_per_s: int

    def covers(self, when: dt.datetime) -> bool:
        """Given a local wall-clock time, return whether this window holds then."""
        minute = when.hour * 60 + when.minute + when.second / 60 + when.microsecond / 6e7
        weekday = when.weekday()
        if self.start_min < self.end_min:
            return weekday in self.days and self.start_min <= minute < self.end_min
        # Past midnight (or a whole day, when from == to): the tail belongs to the day before.
        if weekday in self.days and minute >= self.start_min:
            return True
        return (weekday - 1) % 7 in self.days and minute < self.end_min

    def edges(self, day: dt.date) -> list[dt.datetime]:
        """The local times on ``day`` at which this window may open or close."""
        out = []
        for minute in {self.start_min, self.end_min}:
            if minute < 24 * 60:
                out.append(dt.datetime.combine(day, dt.time(minute // 60, minute % 60)))
        return out


@dataclass(frozen=True)
class Timetable:
    """The limit in force at any local time: the first covering window, else ``default``
    (``None``: no limit)."""

    default: int | None
    windows: tuple[Window, ...] = ()

    def rate_at(self, when: dt.datetime) -> int | None:
        """Given a local wall-clock time, return the byte rate limit then (``None``: none)."""
        for window in self.windows:
            if window.covers(when):
                return window.bytes_per_s
        return self.default

    def next_change(self, when: dt.datetime) -> dt.datetime | None:
        """Given a local time, return the first later edge of a window at which the limit
        differs from the one at ``when``, or ``None`` when it never changes."""
        if not self.windows:
            return None
        now_rate = self.rate_at(when)
        edges = sorted(
            {
                edge
                for offset in range(9)
                for window in self.windows
                for edge in window.edges(when.date() + dt.timedelta(days=offset))
                if edge > when
            }
        )
        for edge in edges:
            if self.rate_at(edge) != now_rate:
                return edge
        return None


def timetable_from(upload: UploadConfig) -> Timetable:
    """Given the validated ``upload`` settings, return their timetable."""
    windows = tuple(
        Window(
            parse_days(w.days), parse_clock_time(w.from_), parse_clock_time(w.to), w.max_bytes_per_s
        )
        for w in upload.schedule
    )
    return Timetable(upload.max_bytes_per_s, windows)


def local_now(epoch_s: float) -> dt.datetime:
    """Given seconds since the epoch, return the host's local wall-clock time (naive)."""
    return dt.datetime.fromtimestamp(epoch_s)


class ByteShaper:
    """The byte budget every upload worker spends from, one grant at a time.

    Given the timetable, the size of one grant, a monotonic clock and a wall clock (seconds
    since the epoch, for the timetable) and a sleep; all but the timetable default to the real
    ones. ``await take(n)`` returns the number of bytes (at most ``n``) its caller may now
    send; callers loop until their data is out. Grants are first come, first served.
    """

    def __init__(
        self,
        timetable: Timetable,
        *,
        grant_bytes: int = DEFAULT_GRANT_BYTES,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if grant_bytes < 1:
            raise ValueError(f"grant_bytes must be at least 1, got {grant_bytes}")
        self.timetable = timetable
        self.grant_bytes = grant_bytes
        self._monotonic = monotonic
        self._wall = wall
        self._sleep = sleep
        self._tat = monotonic()
        self._changed = asyncio.Event()
        self._last_rate: int | None = timetable.default or None
        self.granted_bytes = 0

    def update(self, timetable: Timetable) -> None:
        """Use a new timetable from now on (SIGHUP); uploads held by a pause look again."""
        self.timetable = timetable
        self._changed.set()
        self._changed = asyncio.Event()

    def rate_now(self) -> int | None:
        """The byte rate limit in force now (``None``: none; 0: paused)."""
        return self.timetable.rate_at(local_now(self._wall()))

    def paused_for_s(self) -> float | None:
        """While a zero-rate window holds: seconds until the limit changes (capped at
        :data:`PAUSED_RECHECK_S`); otherwise ``None``."""
        now = local_now(self._wall())
        if self.timetable.rate_at(now) != 0:
            return None
        change = self.timetable.next_change(now)
        if change is None:
            return PAUSED_RECHECK_S
        return min(PAUSED_RECHECK_S, max(0.01, (change - now).total_seconds()))

    async def wait_open(self) -> None:
        """Return once no zero window holds (at once when none does); a new timetable
        (:meth:`update`) makes waiters look again."""
        while (wait_s := self.paused_for_s()) is not None:
            changed = self._changed
            sleeper = asyncio.ensure_future(self._sleep(wait_s))
            woken = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                woken.cancel()
            # A pause must not leave credit behind: the budget starts afresh when it ends.
            self._tat = max(self._tat, self._monotonic())

    async def take(self, wanted: int) -> int:
        """Given how many bytes the caller has left to send (at least 1), wait for its turn
        and return how many it may send now (at least 1, at most ``wanted`` and one grant).
        In a zero window the last limit before it applies (see the module docstring).
        Raises ``ValueError`` for ``wanted < 1``."""
        if wanted < 1:
            raise ValueError(f"wanted must be at least 1, got {wanted}")
        rate = self.rate_now()
        if rate == 0:
            rate = self._last_rate
        elif rate is not None:
            self._last_rate = rate
        if rate is None:
            n = min(wanted, self.grant_bytes)
            self.granted_bytes += n
            return n
        n = min(wanted, self.grant_bytes, max(1, int(rate * GRANT_S)))
        now = self._monotonic()
        start = max(now, self._tat)
        # Reserve before sleeping, so concurrent callers queue behind each other in order.
        self._tat = start + n / rate
        self.granted_bytes += n
        if start > now:
            await self._sleep(start - now)
        return n
