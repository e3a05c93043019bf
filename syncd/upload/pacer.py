"""The shared pacer: one token bucket per API endpoint plus a shared cool-down and a global pause.

Every request start, from every upload worker and from the status poller, passes through
:meth:`Pacer.acquire` for its endpoint (``"upload"``, ``"signed_url"``, ``"metadata"``, ...).
The bucket is a GCRA (generic cell rate algorithm): with rate ``r`` and burst ``b``, at most
``b`` starts may happen at once and after that starts are spaced ``(1 / r) * (1 + margin)``
apart. The margin exists because the server counts requests when they *arrive*, and loop
latency and the network add jitter between our start and its arrival; callers that do work
between the grant and the send report the send with :meth:`Pacer.sent`, which keeps the
spacing from there.

The API answers a throttle with an ambiguous 400 (or 429), so any such answer calls
:meth:`Pacer.throttled`, which extends the endpoint's cool-down for every caller. Cool-downs
grow exponentially while throttles keep coming and shrink additively with each success, so the
daemon neither hammers a throttled account nor oscillates between bursts and pauses.

The pacer never sleeps on the real clock directly: the monotonic clock, the wall clock, the
sleep function and the random generator are all injectable, so tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from syncd.config import RateLimitsConfig

log = logging.getLogger(__name__)

ENDPOINTS: tuple[str, ...] = ("upload", "signed_url", "metadata")
"""The endpoints the daemon paces; the API limits each to 1 request per second."""


@dataclass(frozen=True)
class EndpointStats:
    """Counters and gauges of one endpoint's bucket, for metrics.

    ``granted`` and ``throttles`` count since the pacer was created; ``cooldown_remaining_s``
    is how long a new caller would still wait for the cool-down; ``cooldown_level_s`` is the
    length the next cool-down starts from; ``waiting`` is how many callers wait in
    :meth:`Pacer.acquire` right now; ``interval_s`` is the spacing between starts.
    """

    granted: int
    throttles: int
    cooldown_remaining_s: float
    cooldown_level_s: float
    waiting: int
    interval_s: float


class _Bucket:
    """State of one endpoint. Times are on the pacer's monotonic clock."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        # Theoretical arrival time of the next start (GCRA); a start is allowed at t when
        # t >= tat - (burst - 1) * interval.
        self.tat = -math.inf
        self.cooldown_end = -math.inf
        self.cooldown_level_s = 0.0
        self.lock = asyncio.Lock()  # FIFO: waiters are served in arrival order
        self.granted = 0
        self.throttles = 0
        self.waiting = 0


class Pacer:
    """Token buckets per endpoint, shared cool-downs, a global pause; persistable.

    Given the rate (requests per second) for each endpoint name, the bucket capacity
    ``burst``, the first and the longest cool-down, the safety ``margin`` added to the spacing,
    the ``jitter`` fraction taken off each cool-down (a cool-down lasts between
    ``level * (1 - jitter)`` and ``level``), the ``ease_step_s`` each success takes off the
    cool-down level (default: ``cooldown_initial_s``), and the injectable ``clock``
    (monotonic seconds), ``wall`` (epoch seconds), ``sleep`` and ``rng``.

    Raises ``ValueError`` for a non-positive rate or an inconsistent setting.
    """

    def __init__(
        self,
        rates_per_s: Mapping[str, float],
        *,
        burst: int = 1,
        cooldown_initial_s: float = 2.0,
        cooldown_max_s: float = 300.0,
        margin: float = 0.04,
        jitter: float = 0.2,
        ease_step_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not rates_per_s:
            raise ValueError("the pacer needs at least one endpoint")
        for name, rate in rates_per_s.items():
            if not (math.isfinite(rate) and rate > 0):
                raise ValueError(f"rate for {name!r} must be a positive number, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if not 0 < cooldown_initial_s <= cooldown_max_s:
            raise ValueError("cooldown_initial_s must be positive and at most cooldown_max_s")
        if not 0 <= margin < 10:
            raise ValueError(f"margin must be in [0, 10), got {margin}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        step = cooldown_initial_s if ease_step_s is None else ease_step_s
        if step <= 0:
            raise ValueError(f"ease_step_s must be positive, got {step}")
        self._burst = burst
        self._cooldown_initial_s = cooldown_initial_s
        self._cooldown_max_s = cooldown_max_s
        self._margin = margin
        self._jitter = jitter
        self._ease_step_s = step
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not crypto)
        self._buckets = {
            name: _Bucket((1.0 / rate) * (1.0 + margin)) for name, rate in rates_per_s.items()
        }
        self._pause_reason: str | None = None
        self._pause_end: float | None = None  # monotonic; None with a reason = until resume()
        # Replaced by a fresh event each time it is set: waiters that must notice a resume
        # wait on the event current when they started waiting.
        self._wake = asyncio.Event()

    @classmethod
    def from_config(cls, cfg: RateLimitsConfig, **kwargs: Any) -> Pacer:
        """Given the ``rate_limits`` settings (and any keyword of the constructor), return a
        pacer for the three paced endpoints."""
        rates = {
            "upload": cfg.upload_per_s,
            "signed_url": cfg.signed_url_per_s,
            "metadata": cfg.metadata_per_s,
        }
        return cls(
            rates,
            burst=cfg.burst,
            cooldown_initial_s=cfg.cooldown_initial_s,
            cooldown_max_s=cfg.cooldown_max_s,
            **kwargs,
        )

    # ---------------------------------------------------------------------------------------
    # Introspection

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Return the endpoint names this pacer knows."""
        return tuple(self._buckets)

    def interval_s(self, endpoint: str) -> float:
        """Return the spacing between starts on ``endpoint``; raises ``ValueError`` if unknown."""
        return self._bucket(endpoint).interval_s

    def cooldown_remaining_s(self, endpoint: str) -> float:
        """Return the seconds left in ``endpoint``'s cool-down (0.0 when none)."""
        return max(0.0, self._bucket(endpoint).cooldown_end - self._clock())

    @property
    def paused(self) -> str | None:
        """Return the reason of the current global pause, or ``None`` when not paused."""
        self._expire_pause(self._clock())
        return self._pause_reason

    def pause_remaining_s(self) -> float | None:
        """Return the seconds left in the pause: 0.0 if none, ``None`` if until resume()."""
        now = self._clock()
        self._expire_pause(now)
        if self._pause_reason is None:
            return 0.0
        if self._pause_end is None:
            return None
        return max(0.0, self._pause_end - now)

    def stats(self) -> dict[str, EndpointStats]:
        """Return the counters of every endpoint, keyed by endpoint name."""
        now = self._clock()
        return {
            name: EndpointStats(
                granted=b.granted,
                throttles=b.throttles,
                cooldown_remaining_s=max(0.0, b.cooldown_end - now),
                cooldown_level_s=b.cooldown_level_s,
                waiting=b.waiting,
                interval_s=b.interval_s,
            )
            for name, b in self._buckets.items()
        }

    # ---------------------------------------------------------------------------------------
    # Pacing

    async def acquire(self, endpoint: str) -> None:
        """Wait until the caller may start one request on ``endpoint``, then take the token.

        Callers are served first come, first served. A caller cancelled while waiting takes
        no token. Waits out the spacing, the endpoint's cool-down and any global pause.
        Raises ``ValueError`` for an unknown endpoint.
        """
        bucket = self._bucket(endpoint)
        bucket.waiting += 1
        try:
            async with bucket.lock:
                while True:
                    now = self._clock()
                    ready_at = self._ready_at(bucket, now)
                    if ready_at <= now:
                        # Granting is synchronous with the check, so a cancellation can only
                        # land before it (no token taken) or after acquire() returned.
                        bucket.tat = max(bucket.tat, now) + bucket.interval_s
                        bucket.granted += 1
                        return
                    await self._wait(None if math.isinf(ready_at) else ready_at - now)
        finally:
            bucket.waiting -= 1

    def sent(self, endpoint: str) -> None:
        """Record that the request granted last on ``endpoint`` actually went out now.

        The API counts a request when it arrives, not when we were allowed to start it; work
        between the grant and the send (a ledger commit, opening the file) delays it by a few
        milliseconds, or by tens under load. If the next grant kept its spacing from the grant
        it would arrive less than one interval after this request, and be throttled. So the
        next start is pushed to at least one interval after this send.
        """
        bucket = self._bucket(endpoint)
        bucket.tat = max(bucket.tat, self._clock() + bucket.interval_s)

    def _ready_at(self, bucket: _Bucket, now: float) -> float:
        ready = max(bucket.tat - (self._burst - 1) * bucket.interval_s, bucket.cooldown_end)
        self._expire_pause(now)
        if self._pause_reason is not None:
            ready = math.inf if self._pause_end is None else max(ready, self._pause_end)
        return ready

    async def _wait(self, delay_s: float | None) -> None:
        """Sleep ``delay_s`` (``None``: until woken); a resume() wakes it early."""
        wake = self._wake
        if delay_s is None:
            await wake.wait()
            return
        if self._pause_reason is None:
            # Only a resume can make a wait shorter, and only while paused; a cool-down that
            # grows meanwhile is caught by the caller's re-check after the sleep.
            await self._sleep(delay_s)
            return
        sleeper = asyncio.ensure_future(self._sleep(delay_s))
        waker = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    def _poke(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    # ---------------------------------------------------------------------------------------
    # Feedback from answers

    def throttled(self, endpoint: str) -> float:
        """Record a 400/429 on ``endpoint`` and extend its cool-down for every caller.

        A throttle that arrives while the endpoint's cool-down is still running belongs to the
        same episode (its request started before the cool-down), so it does not escalate. A
        throttle after the cool-down ended starts a longer one: the first is
        ``cooldown_initial_s``, each consecutive one doubles, capped at ``cooldown_max_s``,
        each with jitter taken off. Returns the seconds the cool-down lasts from now.
        """
        bucket = self._bucket(endpoint)
        now = self._clock()
        bucket.throttles += 1
        if bucket.cooldown_end > now:
            return bucket.cooldown_end - now
        if bucket.cooldown_level_s <= 0:
            level = self._cooldown_initial_s
        else:
            level = min(
                max(bucket.cooldown_level_s * 2, self._cooldown_initial_s), self._cooldown_max_s
            )
        bucket.cooldown_level_s = level
        length_s = level * (1.0 - self._jitter * self._rng.random())
        bucket.cooldown_end = now + length_s
        # No burst right after a cool-down: the first start may happen at its end, the next
        # ones are spaced again.
        bucket.tat = max(bucket.tat, bucket.cooldown_end + (self._burst - 1) * bucket.interval_s)
        log.info("pacer: %s throttled, cooling down %.1f s", endpoint, length_s)
        return length_s

    def succeeded(self, endpoint: str) -> None:
        """Record an accepted request on ``endpoint``: the cool-down level eases off additively.

        The cool-down that is running is not shortened (the success came from a request that
        started before it); the next throttle starts from the eased level.
        """
        bucket = self._bucket(endpoint)
        bucket.cooldown_level_s = max(0.0, bucket.cooldown_level_s - self._ease_step_s)

    # ---------------------------------------------------------------------------------------
    # Global pause

    def pause(self, reason: str, *, for_s: float | None = None) -> None:
        """Stop every endpoint: until :meth:`resume` (``for_s=None``) or for ``for_s`` seconds.

        Given a reason for logs and status (e.g. "out of credits"). A pause never shortens one
        in force: an open-ended pause wins, otherwise the later end wins.
        """
        if for_s is not None and not (math.isfinite(for_s) and for_s >= 0):
            raise ValueError(f"for_s must be a non-negative number, got {for_s!r}")
        now = self._clock()
        self._expire_pause(now)
        end = None if for_s is None else now + for_s
        if self._pause_reason is not None and (
            self._pause_end is None or (end is not None and end <= self._pause_end)
        ):
            self._pause_reason = reason
            return
        self._pause_reason = reason
        self._pause_end = end
        log.warning("pacer: paused (%s)%s", reason, "" if for_s is None else f" for {for_s:.0f} s")

    def resume(self) -> None:
        """End the global pause now (no-op when not paused); waiting callers wake up."""
        if self._pause_reason is not None:
            log.info("pacer: resumed (was paused: %s)", self._pause_reason)
        self._pause_reason = None
        self._pause_end = None
        self._poke()

    def _expire_pause(self, now: float) -> None:
        if self._pause_end is not None and now >= self._pause_end:
            self._pause_reason = None
            self._pause_end = None

    # ---------------------------------------------------------------------------------------
    # Persistence

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Return the cool-down state to store across restarts.

        For each endpoint: ``level_s`` (the cool-down level, i.e. the length the next
        throttle grows from) and ``until_epoch_s`` (when the running cool-down ends, as
        wall-clock epoch seconds; 0.0 when none is running).
        """
        now = self._clock()
        wall_now = self._wall()
        out: dict[str, dict[str, float]] = {}
        for name, b in self._buckets.items():
            remaining = b.cooldown_end - now
            out[name] = {
                "level_s": b.cooldown_level_s,
                "until_epoch_s": wall_now + remaining if remaining > 0 else 0.0,
            }
        return out

    def restore(self, snapshot: Mapping[str, Mapping[str, float]]) -> None:
        """Load a :meth:`snapshot` taken by an earlier process.

        Unknown endpoints and malformed values are skipped with a warning (the snapshot comes
        from disk). A cool-down end in the past is ignored; one further away than
        ``cooldown_max_s`` (a wall-clock jump) is clamped to it. Levels are clamped to
        ``[0, cooldown_max_s]``.
        """
        now = self._clock()
        wall_now = self._wall()
        for name, entry in snapshot.items():
            bucket = self._buckets.get(name)
            if bucket is None:
                log.warning("pacer: ignoring saved state of unknown endpoint %r", name)
                continue
            try:
                level_s = float(entry.get("level_s", 0.0))
                until_s = float(entry.get("until_epoch_s", 0.0))
            except (TypeError, ValueError, AttributeError):
                log.warning("pacer: ignoring malformed saved state of %r", name)
                continue
            if not (math.isfinite(level_s) and math.isfinite(until_s)):
                log.warning("pacer: ignoring malformed saved state of %r", name)
                continue
            bucket.cooldown_level_s = min(max(level_s, 0.0), self._cooldown_max_s)
            remaining = min(until_s - wall_now, self._cooldown_max_s)
            if remaining > 0:
                bucket.cooldown_end = max(bucket.cooldown_end, now + remaining)
                bucket.tat = max(
                    bucket.tat, bucket.cooldown_end + (self._burst - 1) * bucket.interval_s
                )

    async def aclose(self) -> None:
        """Release what the pacer holds (nothing here; the fleet's pacer closes its Redis)."""

    # ---------------------------------------------------------------------------------------

    def _bucket(self, endpoint: str) -> _Bucket:
        try:
            return self._buckets[endpoint]
        except KeyError:
            known = ", ".join(self._buckets)
            raise ValueError(f"unknown endpoint {endpoint!r} (known: {known})") from None
