"""Per-account, per-endpoint rate limiting, decided when a request arrives.

Two algorithms, both with a capacity of one request:

- ``gcra`` (default): a request is allowed when at least ``1/rate`` seconds have passed since the
  last *allowed* request of the same (account, endpoint) bucket. This is a token bucket of
  capacity 1, also known as the generic cell rate algorithm with no burst tolerance.
- ``fixed_window``: time is cut into windows of ``1/rate`` seconds aligned on the epoch (for
  1/s: calendar seconds); one request per window is allowed. Two requests can then be allowed
  only a few milliseconds apart, on either side of a window boundary.

Rejected requests never consume the bucket, so a client that retries too fast is not punished
beyond its own rejections.
"""

from __future__ import annotations

import math

from syncd.emulator.clock import Clock
from syncd.emulator.settings import RateAlgorithm

# Epoch seconds as floats carry ~0.2 us of rounding; without this slack a client pacing itself
# at exactly 1/rate (or a fake clock advanced by exactly 1/rate) could be throttled by noise.
_ROUNDING_S = 1e-6


class RateLimiter:
    """Decides whether a request may proceed. Given the clock to read time from."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # (account, endpoint) -> time of the last allowed request (gcra) or its window (fixed).
        self._last_allowed_s: dict[tuple[str, str], float] = {}
        self._last_window: dict[tuple[str, str], int] = {}

    def allow(
        self, account: str, endpoint: str, rate_per_s: float, algorithm: RateAlgorithm = "gcra"
    ) -> bool:
        """Decide one request now.

        Given the account, the endpoint name, the endpoint's rate (requests per second; 0 or
        less disables limiting) and the algorithm; returns True when the request is allowed,
        and records it as the bucket's last allowed request. Returns False (recording nothing)
        when it must be throttled.
        """
        if rate_per_s <= 0:
            return True
        now_s = self._clock()
        bucket = (account, endpoint)
        if algorithm == "fixed_window":
            window = math.floor(now_s * rate_per_s)
            if self._last_window.get(bucket) == window:
                return False
            self._last_window[bucket] = window
            return True
        last_s = self._last_allowed_s.get(bucket)
        if last_s is not None and now_s - last_s < 1.0 / rate_per_s - _ROUNDING_S:
            return False
        self._last_allowed_s[bucket] = now_s
        return True

    def retry_after_s(self, account: str, endpoint: str, rate_per_s: float) -> float:
        """Return the seconds until the gcra bucket would allow a request (0 when it would now).

        The real service sends no ``Retry-After``; this is for the emulator's own inspection.
        """
        if rate_per_s <= 0:
            return 0.0
        last_s = self._last_allowed_s.get((account, endpoint))
        if last_s is None:
            return 0.0
        return max(0.0, last_s + 1.0 / rate_per_s - self._clock())

    def reset(self) -> None:
        """Forget every bucket (all accounts may send at once again)."""
        self._last_allowed_s.clear()
        self._last_window.clear()
