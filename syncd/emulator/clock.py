"""Clocks for the emulator: epoch seconds that never go backwards, and a fake one for tests."""

from __future__ import annotations

import time
from collections.abc import Callable

# A clock is a callable returning epoch seconds as a float.
Clock = Callable[[], float]


class MonotonicWallClock:
    """Epoch seconds anchored to the wall clock once, then advanced by the monotonic clock.

    The emulator's rate limiter and timestamps need both a wall time (timestamps, expiry that
    survives restarts) and a time that does not jump when NTP steps the system clock.
    """

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def __call__(self) -> float:
        """Return the current time in epoch seconds."""
        return self._wall0 + (time.monotonic() - self._mono0)


class FakeClock:
    """A clock that moves only when told to. Given the starting epoch seconds."""

    def __init__(self, start_s: float = 1_766_989_317.0) -> None:
        self.now_s = float(start_s)

    def __call__(self) -> float:
        """Return the current fake time in epoch seconds."""
        return self.now_s

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``; raises ValueError for a negative amount."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self.now_s += seconds
