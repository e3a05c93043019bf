"""The request rates the dashboard plots, from the daemon's own counters.

:class:`RateHistory` keeps the last hour of per-endpoint request counts, throttled answers and
bytes uploaded in buckets of :data:`RATE_BUCKET_S`, sampled from the metrics (not the ledger),
and gives the plot's series and the byte rate behind the ETA. Apart from the page assembly in
``dashboard.py`` because it is state sampled over time, not a view of one request.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from syncd.metrics import Metrics
from syncd.ops.report import iso

RATE_BUCKET_S: Final = 10.0
RATE_SPAN_S: Final = 3600.0
# The bucket still open is shown once it is this old: younger, one request would read as a
# burst (1 request in 0.1 s is 10/s).
OPEN_BUCKET_MIN_S: Final = 1.0
# The byte rate behind the ETA is taken over this much of the recent history.
ETA_WINDOW_S: Final = 600.0
# The endpoints the plot shows, as syncd_requests_total labels them.
ENDPOINTS: Final = ("upload", "signed_url", "storage", "metadata")


class RateHistory:
    """Per-endpoint request counts of the last hour in buckets of ``bucket_s`` seconds.

    :meth:`sample` reads the running totals from the metrics (requests per endpoint, the
    throttled answers, the bytes uploaded) and keeps the difference to the previous sample.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        bucket_s: float = RATE_BUCKET_S,
        span_s: float = RATE_SPAN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.bucket_s = bucket_s
        self.clock = clock
        self._buckets: collections.deque[tuple[float, dict[str, tuple[float, float]], float]] = (
            collections.deque(maxlen=max(1, int(span_s / bucket_s)))
        )
        self._last = self._totals()
        self._last_at = clock()

    def _totals(self) -> tuple[dict[str, tuple[float, float]], float]:
        m = self.metrics
        per = {
            e: (
                m.total("syncd_requests_total", endpoint=e),
                m.total("syncd_throttle_events_total", endpoint=e),
            )
            for e in ENDPOINTS
        }
        return per, m.total("syncd_bytes_uploaded_total")

    def sample(self) -> None:
        """Close one bucket: what was counted since the previous sample."""
        now = self.clock()
        per, sent = self._totals()
        last_per, last_sent = self._last
        delta = {e: (per[e][0] - last_per[e][0], per[e][1] - last_per[e][1]) for e in per}
        self._buckets.append((now, delta, sent - last_sent))
        self._last, self._last_at = (per, sent), now

    def bytes_per_s(self, window_s: float = ETA_WINDOW_S) -> float | None:
        """The upload rate over the last ``window_s`` (None before the first sample)."""
        now = self.clock()
        recent = [b for b in self._buckets if b[0] >= now - window_s]
        if not recent:
            return None
        span = max(self.bucket_s, now - (recent[0][0] - self.bucket_s))
        return sum(b[2] for b in recent) / span

    def _open_bucket(self) -> tuple[float, dict[str, tuple[float, float]], float] | None:
        """What was counted since the last sample, as a bucket of its own (its counts scaled
        to a whole bucket), or None when less than :data:`OPEN_BUCKET_MIN_S` has passed."""
        now = self.clock()
        elapsed = now - self._last_at
        if elapsed < OPEN_BUCKET_MIN_S:
            return None
        per, _ = self._totals()
        last_per, _ = self._last
        scale = self.bucket_s / min(elapsed, self.bucket_s)
        delta = {e: ((per[e][0] - last_per[e][0]) * scale, per[e][1] - last_per[e][1]) for e in per}
        return now, delta, 0.0

    def json(self, limits_per_s: Mapping[str, float]) -> dict[str, Any]:
        """The plot's data: per endpoint, the rate of each bucket (requests/s), the throttled
        answers per bucket, and the configured limit; the time each bucket ended. The last
        bucket is the one still open (since the last sample, when that is at least
        :data:`OPEN_BUCKET_MIN_S`), so a request or a throttled answer shows at once rather
        than up to ``bucket_s`` later."""
        buckets = list(self._buckets)
        current = self._open_bucket()
        if current is not None:
            buckets.append(current)
        out: dict[str, Any] = {
            "bucket_s": self.bucket_s,
            "ends": [iso(b[0]) for b in buckets],
            "endpoints": {},
        }
        limit_of = {"storage": limits_per_s.get("upload")}
        for e in ENDPOINTS:
            out["endpoints"][e] = {
                "limit_per_s": limits_per_s.get(e, limit_of.get(e)),
                "requests_per_s": [round(b[1][e][0] / self.bucket_s, 3) for b in buckets],
                "throttled": [int(b[1][e][1]) for b in buckets],
            }
        return out
