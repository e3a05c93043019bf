"""The settler's timers: one heap of deadlines instead of a timer per path.

:class:`Deadlines` keeps ``(when, key)`` entries on a heap and lets one task sleep until the
first is due. An entry is never removed when its key is rescheduled or forgotten: it goes
stale, and the owner's ``is_live(key, when)`` says which entries still count, so moving a
deadline costs one push and no search.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class Deadlines:
    """A heap of deadlines on ``clock`` whose live entries ``is_live(key, when)`` tells.

    Given the clock the deadlines are on and the liveness test. :meth:`push` adds an entry
    (and wakes a sleeper when it is the new first), :meth:`sleep_until_due` waits until a live
    entry is due, :meth:`pop_due` takes one.
    """

    def __init__(self, clock: Callable[[], float], is_live: Callable[[str, float], bool]) -> None:
        self._clock = clock
        self._is_live = is_live
        self._heap: list[tuple[float, int, str]] = []
        # Ties are broken by order of push, never by comparing keys.
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    def push(self, key: str, when: float) -> None:
        """Add a deadline for ``key`` at ``when``; a sleeper wakes if it is the first now."""
        first = not self._heap or when < self._heap[0][0]
        heapq.heappush(self._heap, (when, next(self._seq), key))
        if first:
            self._wake.set()

    def clear(self) -> None:
        """Drop every entry."""
        self._heap.clear()

    async def sleep_until_due(self) -> None:
        """Return once a live entry is due (at once if one already is); stale entries met on
        the way are dropped. With no entry it waits for a :meth:`push`."""
        while True:
            while self._heap and not self._live(self._heap[0]):
                heapq.heappop(self._heap)
            now = self._clock()
            if self._heap and self._heap[0][0] <= now:
                return
            self._wake.clear()
            if not self._heap:
                await self._wake.wait()
                continue
            try:
                async with asyncio.timeout(self._heap[0][0] - now):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def pop_due(self, now: float) -> str | None:
        """Remove and return the key of the first live entry due at ``now``; None when there
        is none (stale entries on the way are dropped)."""
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if self._live(entry):
                return entry[2]
        return None

    def _live(self, entry: tuple[float, int, str]) -> bool:
        return self._is_live(entry[2], entry[0])
