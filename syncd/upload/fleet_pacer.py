"""The fleet's pacer: every endpoint's budget and the shared cool-down live on Redis.

:class:`RedisPacer` is a :class:`~syncd.upload.pacer.Pacer` (same methods, so the uploader and
the poller do not know which one they hold) whose state is on a Redis server that every host
of one account shares (``fleet.redis_url``, ``docs/fleet.md``). Each grant is two atomic Lua
scripts on the **Redis server's clock** (``TIME``), never the hosts' clocks:

1. *Reserve*: ``slot = max(now, tat, cool_until)``, ``tat = slot + interval`` (the interval
   carries the pacer's margin), and the caller sleeps ``slot - now``. Hosts take turns without
   polling, one outstanding reservation per host and endpoint.
2. *Start*, when the caller wakes: a slot woken more than :data:`LATE_SLOT_S` late (a loaded
   box, a GC pause, SIGSTOP) is void and the caller reserves again, since sending late could land
   inside another host's slot; a start closer than the interval to the fleet's last start or
   send (an earlier host that was a little late) waits the difference; a cool-down that began
   meanwhile voids the slot. Otherwise the start is recorded (``last_start``) and the request
   may go.

Any host's 400/429 extends the shared cool-down for every host (one script, the same
escalation as the local pacer: doubling from ``cooldown_initial_s`` to ``cooldown_max_s``, with
jitter off, and a throttle during a running cool-down does not escalate); successes ease the
shared level off additively.

**Fail closed**: when Redis does not answer, no request starts. One warning line says it is
lost, one line says it is back; reconnection retries with backoff. Reservations start from the
server's now, so the hosts resume one slot after another, without a burst.

Each host writes a heartbeat key with a TTL (its grants per second per endpoint); any host, and
``syncd status``, reads the fleet's view from them
(:func:`~syncd.upload.fleet_redis.read_fleet_view`). The keys and the scripts live in
:mod:`syncd.upload.fleet_redis`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from syncd.config import Config
from syncd.metrics import Metrics
from syncd.upload.fleet_redis import (
    REDIS_TIMEOUT_S,
    RESERVE_SCRIPT,
    SENT_SCRIPT,
    START_SCRIPT,
    STATE_TTL_MS,
    SUCCEEDED_SCRIPT,
    THROTTLED_SCRIPT,
    UNREACHABLE,
    US,
    account_name,
    connect,
    endpoint_key,
    host_key,
    read_fleet_view,
    safe_url,
)
from syncd.upload.pacer import EndpointStats, Pacer

log = logging.getLogger(__name__)

LATE_SLOT_S = 0.2
"""A slot woken later than this after its time is void: the caller reserves again."""
HEARTBEAT_S = 2.0
HEARTBEAT_TTL_S = 10.0
"""A host whose heartbeat key is older than this is no longer counted as alive."""
RATE_WINDOW_S = 10.0
"""Grants per second are averaged over this window."""
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 5.0


def _raise_if_cancelling(exc: BaseException | None = None) -> None:
    """Raise ``CancelledError`` when the current task was asked to cancel.

    The client can swallow a cancel that lands while a command runs (the command then returns
    normally, or fails as a lost connection): seen in a closing pacer, whose heartbeat kept
    going after ``cancel()``. Checked after every call to Redis, so a cancelled caller (a
    worker at shutdown) neither takes a slot nor retries for ever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


class RedisPacer(Pacer):
    """A :class:`Pacer` whose budgets and cool-downs are shared through Redis.

    Given the Redis client, the account name, this host's name, the optional metrics, and the
    keywords of :class:`Pacer`. The global pause (:meth:`pause`) stays local to this host.
    Call :meth:`start` before use and :meth:`aclose` at the end.

    Over ~300 lines because it is the local pacer's whole interface again, on Redis (pacing,
    reports, introspection, the heartbeat that keeps the fleet's view), each method short and
    all of them on one connection and its fail-closed state; the keys, the scripts and
    reading the view are in :mod:`syncd.upload.fleet_redis`.
    """

    def __init__(
        self,
        rates_per_s: Mapping[str, float],
        *,
        client: aioredis.Redis,
        account: str,
        host: str,
        url: str = "redis",
        metrics: Metrics | None = None,
        late_slot_s: float = LATE_SLOT_S,
        heartbeat_s: float = HEARTBEAT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(rates_per_s, **kwargs)
        self._redis = client
        self._account = account
        self._host = host
        self._url = safe_url(url)
        self._metrics = metrics
        self._late_us = int(late_slot_s * US)
        self._heartbeat_s = heartbeat_s
        # The least distance between two starts (and from a send to the next start): the
        # interval with its margin, as the local pacer keeps it after a send; without the
        # margin, the variance between a send and its arrival at the API would have no room.
        self._gaps_us = {name: int(b.interval_s * US) for name, b in self._buckets.items()}
        self._locks = {name: asyncio.Lock() for name in rates_per_s}
        self._grants: dict[str, collections.deque[float]] = {
            name: collections.deque() for name in rates_per_s
        }
        self._reserve = client.register_script(RESERVE_SCRIPT)
        self._start = client.register_script(START_SCRIPT)
        self._sent = client.register_script(SENT_SCRIPT)
        self._throttled = client.register_script(THROTTLED_SCRIPT)
        self._succeeded = client.register_script(SUCCEEDED_SCRIPT)
        self._lost = False
        self._voided = 0
        self.last_start_us = 0
        """The Redis server's time (epoch microseconds) of this host's last granted start."""
        self._shared: dict[str, dict[str, float]] = {}
        self._shared_at = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._heartbeat_task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, cfg: Any, **kwargs: Any) -> Pacer:
        """Not used: build a fleet pacer with :func:`build_pacer`."""
        raise TypeError("build a RedisPacer with build_pacer()")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the heartbeat (a Redis that is down now is retried there, not raised)."""
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="fleet heartbeat")

    async def aclose(self) -> None:
        """Stop the heartbeat and the pending reports, drop this host's heartbeat key, close."""
        self._closing = True
        tasks = [*self._background]
        if self._heartbeat_task is not None:
            tasks.append(self._heartbeat_task)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=REDIS_TIMEOUT_S)
        with contextlib.suppress(RedisError, OSError):
            await asyncio.wait_for(self._redis.delete(self._host_key), REDIS_TIMEOUT_S)
        await self._redis.aclose()

    @property
    def account(self) -> str:
        """The account's name in the Redis keys."""
        return self._account

    @property
    def host(self) -> str:
        """This host's name in the fleet."""
        return self._host

    @property
    def connected(self) -> bool:
        """Whether the last call to Redis succeeded."""
        return not self._lost

    @property
    def voided(self) -> int:
        """Slots given up because this host woke too late for them (since start)."""
        return self._voided

    @property
    def _host_key(self) -> str:
        return host_key(self._account, self._host)

    def _key(self, endpoint: str) -> str:
        self._bucket(endpoint)  # raises ValueError for an unknown endpoint
        return endpoint_key(self._account, endpoint)

    # ------------------------------------------------------------------ calls to Redis

    async def _call(self, script: Any, key: str, *args: float | str) -> Any:
        """Run ``script`` until Redis answers: fail closed, with backoff and one line each way."""
        delay_s = BACKOFF_INITIAL_S
        while True:
            try:
                result = await script(keys=[key], args=list(args))
            except UNREACHABLE as exc:
                _raise_if_cancelling(exc)
                self._mark_lost(exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, BACKOFF_MAX_S)
                continue
            _raise_if_cancelling()
            self._mark_back()
            return result

    def _mark_lost(self, exc: BaseException) -> None:
        if not self._lost:
            self._lost = True
            log.warning(
                "pacer: Redis at %s unreachable (%s); no request starts until it is back "
                "(fail closed)",
                self._url,
                exc or type(exc).__name__,
            )
            if self._metrics is not None:
                self._metrics.set("syncd_fleet_redis_up", 0)

    def _mark_back(self) -> None:
        if self._lost:
            self._lost = False
            log.info("pacer: Redis at %s reachable again; pacing resumes", self._url)
            if self._metrics is not None:
                self._metrics.set("syncd_fleet_redis_up", 1)

    def _report(self, script: Any, key: str, *args: float | str) -> None:
        """Send a report (sent, throttled, succeeded) without making the caller wait."""
        task = asyncio.ensure_future(self._call(script, key, *args))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ pacing

    async def acquire(self, endpoint: str) -> None:
        """Wait for this host's turn in the fleet's budget of ``endpoint`` and take it.

        Waits out any local pause, then reserves a slot on Redis and sleeps to it; a slot woken
        late, or overtaken by a cool-down, is reserved again. While Redis cannot be reached it
        waits (fail closed). Raises ``ValueError`` for an unknown endpoint.
        """
        key = self._key(endpoint)
        bucket = self._bucket(endpoint)
        interval_us = int(bucket.interval_s * US)
        bucket.waiting += 1
        try:
            async with self._locks[endpoint]:
                await self._wait_pause()
                while True:
                    slot_us, now_us = await self._call(
                        self._reserve, key, interval_us, self._burst, STATE_TTL_MS
                    )
                    wait_us = int(slot_us) - int(now_us)
                    if await self._start_at(key, endpoint, int(slot_us), wait_us):
                        bucket.granted += 1
                        self._grants[endpoint].append(self._clock())
                        return
                    self._voided += 1
                    log.debug("pacer: %s slot void (woken late or cooled down); again", endpoint)
        finally:
            bucket.waiting -= 1

    async def _start_at(self, key: str, endpoint: str, slot_us: int, wait_us: int) -> bool:
        """Sleep to the slot, then confirm the start on the server; False when it is void."""
        gap_us = self._gaps_us[endpoint] if self._burst == 1 else 0
        while True:
            if wait_us > 0:
                await self._sleep(wait_us / US)
            more_us, now_us = await self._call(self._start, key, slot_us, gap_us, self._late_us)
            more_us = int(more_us)
            if more_us < 0:
                return False
            if more_us == 0:
                self.last_start_us = int(now_us)
                return True
            wait_us = more_us

    async def _wait_pause(self) -> None:
        while True:
            now = self._clock()
            self._expire_pause(now)
            if self._pause_reason is None:
                return
            await self._wait(None if self._pause_end is None else self._pause_end - now)

    def sent(self, endpoint: str) -> None:
        """Record that the request granted last went out now: the fleet's next start keeps its
        spacing from this send (on the server's clock)."""
        interval_us = int(self._bucket(endpoint).interval_s * US)
        self._report(self._sent, self._key(endpoint), interval_us)

    def throttled(self, endpoint: str) -> float:
        """Record a 400/429: extend the fleet's cool-down of ``endpoint`` for every host.

        Returns this host's estimate of the cool-down's length (the shared level doubled); the
        cool-down itself is decided by the script on Redis, which every grant respects.
        """
        bucket = self._bucket(endpoint)
        bucket.throttles += 1
        level_s = float(self._shared.get(endpoint, {}).get("level_s", 0.0))
        if level_s <= 0:
            level_s = self._cooldown_initial_s
        else:
            level_s = min(max(level_s * 2, self._cooldown_initial_s), self._cooldown_max_s)
        cut = self._jitter * self._rng.random()
        self._report(
            self._throttled,
            self._key(endpoint),
            int(self._cooldown_initial_s * US),
            int(self._cooldown_max_s * US),
            cut,
            STATE_TTL_MS,
        )
        length_s = level_s * (1.0 - cut)
        log.info("pacer: %s throttled, the fleet cools down (about %.1f s)", endpoint, length_s)
        return length_s

    def succeeded(self, endpoint: str) -> None:
        """Record an accepted request: the fleet's cool-down level of ``endpoint`` eases off."""
        self._report(self._succeeded, self._key(endpoint), int(self._ease_step_s * US))

    # ------------------------------------------------------------------ introspection

    def cooldown_remaining_s(self, endpoint: str) -> float:
        """Return the fleet's cool-down left on ``endpoint`` as last read (heartbeat)."""
        self._bucket(endpoint)
        shared = self._shared.get(endpoint, {})
        return max(0.0, shared.get("cooldown_remaining_s", 0.0) - (self._clock() - self._shared_at))

    def stats(self) -> dict[str, EndpointStats]:
        """Return this host's counters with the fleet's cool-down (as last read)."""
        out = {}
        for name, b in self._buckets.items():
            shared = self._shared.get(name, {})
            out[name] = EndpointStats(
                granted=b.granted,
                throttles=b.throttles,
                cooldown_remaining_s=self.cooldown_remaining_s(name),
                cooldown_level_s=shared.get("level_s", 0.0),
                waiting=b.waiting,
                interval_s=b.interval_s,
            )
        return out

    def grants_per_s(self) -> dict[str, float]:
        """Return this host's grants per second per endpoint over the last
        :data:`RATE_WINDOW_S`."""
        now = self._clock()
        out = {}
        for name, times in self._grants.items():
            while times and times[0] < now - RATE_WINDOW_S:
                times.popleft()
            out[name] = round(len(times) / RATE_WINDOW_S, 3)
        return out

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Return the fleet's cool-down as last read, in the local pacer's format (``syncd
        status`` reads it); the state itself lives on Redis."""
        wall_now = self._wall()
        out: dict[str, dict[str, float]] = {}
        for name in self._buckets:
            remaining = self.cooldown_remaining_s(name)
            out[name] = {
                "level_s": self._shared.get(name, {}).get("level_s", 0.0),
                "until_epoch_s": wall_now + remaining if remaining > 0 else 0.0,
            }
        return out

    def restore(self, snapshot: Mapping[str, Mapping[str, float]]) -> None:
        """Ignore a local snapshot: the fleet's cool-down is kept on Redis."""

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat(self) -> None:
        """Publish this host's heartbeat and read the fleet's view, every ``heartbeat_s``."""
        while not self._closing:
            try:
                await self._beat()
                _raise_if_cancelling()
            except UNREACHABLE as exc:
                _raise_if_cancelling(exc)
                self._mark_lost(exc)
            except RedisError as exc:  # a server-side error: worth a line, not a crash
                log.warning("pacer: fleet heartbeat failed: %s", exc)
            await asyncio.sleep(self._heartbeat_s)

    async def _beat(self) -> None:
        rates = self.grants_per_s()
        beat = {
            "host": self._host,
            "pid": os.getpid(),
            "updated_at": time.time(),
            "grants_per_s": rates,
            "granted": {name: b.granted for name, b in self._buckets.items()},
            "voided": self._voided,
        }
        await self._redis.set(self._host_key, json.dumps(beat), px=int(HEARTBEAT_TTL_S * 1000))
        view = await read_fleet_view(self._redis, self._account, tuple(self._buckets))
        self._mark_back()
        self._shared = {e["endpoint"]: e for e in view["endpoints"]}
        self._shared_at = self._clock()
        if self._metrics is not None:
            m = self._metrics
            m.set("syncd_fleet_redis_up", 1)
            m.set("syncd_fleet_hosts_alive", len(view["hosts"]))
            for host in view["hosts"]:
                for endpoint, rate in host["grants_per_s"].items():
                    m.set(
                        "syncd_fleet_grants_per_second", rate, host=host["host"], endpoint=endpoint
                    )


async def build_pacer(cfg: Config, api_key: str | None, metrics: Metrics | None = None) -> Pacer:
    """Return the pacer the config asks for: the local :class:`Pacer` when
    ``fleet.redis_url`` is unset (no Redis needed), else a started :class:`RedisPacer`.

    Raises ``ValueError`` when the fleet's account name cannot be told.
    """
    url = cfg.fleet.redis_url
    if url is None:
        return Pacer.from_config(cfg.rate_limits)
    rl = cfg.rate_limits
    pacer = RedisPacer(
        {
            "upload": rl.upload_per_s,
            "signed_url": rl.signed_url_per_s,
            "metadata": rl.metadata_per_s,
        },
        client=connect(url),
        account=account_name(cfg, api_key),
        host=cfg.fleet.host_name or socket.gethostname(),
        url=url,
        metrics=metrics,
        burst=rl.burst,
        cooldown_initial_s=rl.cooldown_initial_s,
        cooldown_max_s=rl.cooldown_max_s,
    )
    await pacer.start()
    log.info(
        "pacer: sharing the fleet's budget on Redis at %s (account %s, host %s)",
        safe_url(url),
        pacer.account,
        pacer.host,
    )
    return pacer
