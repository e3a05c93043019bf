"""The shared pacer, on a fake clock (and once in real time with concurrent tasks)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from syncd.config import RateLimitsConfig
from syncd.emulator import EmulatorServer, uniform_rates
from syncd.errors import ApiNotFound, ApiThrottled
from syncd.upload.client import MaviClient
from syncd.upload.pacer import Pacer

START = 1000.0
WALL_OFFSET = 1_700_000_000.0


class FakeTime:
    """A monotonic clock, a wall clock and a sleep that only move when the test says so."""

    def __init__(self, start: float = START, wall_offset: float = WALL_OFFSET) -> None:
        self.now = start
        self.wall_offset = wall_offset
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    async def sleep(self, delay_s: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.now + max(0.0, delay_s), self._seq, fut))
        await fut

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def advance(self, delta_s: float) -> None:
        """Move time forward, waking each sleeper at its exact due time, in order."""
        target = self.now + delta_s
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, fut = heapq.heappop(self._sleepers)
            self.now = max(self.now, due)
            if not fut.done():
                fut.set_result(None)
            await self.settle()
        self.now = target
        await self.settle()


def make(ft: FakeTime, rates: dict[str, float] | None = None, **kwargs: Any) -> Pacer:
    kwargs.setdefault("rng", random.Random(7))
    return Pacer(
        rates or {"upload": 1.0, "signed_url": 1.0, "metadata": 1.0},
        clock=ft.clock,
        wall=ft.wall,
        sleep=ft.sleep,
        **kwargs,
    )


class Recorder:
    """Starts acquirers as tasks and records (name, fake time) at each grant."""

    def __init__(self, ft: FakeTime, pacer: Pacer) -> None:
        self.ft = ft
        self.pacer = pacer
        self.grants: list[tuple[str, float]] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, endpoint: str = "upload") -> asyncio.Task[None]:
        async def run() -> None:
            await self.pacer.acquire(endpoint)
            self.grants.append((name, self.ft.now))

        task = asyncio.create_task(run())
        self.tasks[name] = task
        return task

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.grants]

    @property
    def times(self) -> list[float]:
        return [t - START for _, t in self.grants]

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


async def test_starts_are_spaced_by_the_interval_plus_margin(ft: FakeTime) -> None:
    pacer = make(ft)
    rec = Recorder(ft, pacer)
    for i in range(5):
        rec.start(f"w{i}")
    await ft.settle()
    assert rec.names == ["w0"]  # the first start is immediate
    await ft.advance(1.03)
    assert rec.names == ["w0"]  # 1/r is not enough: the margin holds the next one back
    await ft.advance(0.02)
    assert rec.names == ["w0", "w1"]
    await ft.advance(10)
    assert rec.names == ["w0", "w1", "w2", "w3", "w4"]
    assert rec.times == pytest.approx([0.0, 1.04, 2.08, 3.12, 4.16])
    assert pacer.interval_s("upload") == pytest.approx(1.04)
    await rec.close()


async def test_a_late_send_pushes_the_next_start_one_interval_after_it(ft: FakeTime) -> None:
    pacer = make(ft)
    rec = Recorder(ft, pacer)
    rec.start("w0")
    rec.start("w1")
    await ft.advance(0.3)  # w0's request leaves 0.3 s after its grant (a slow commit, say)
    pacer.sent("upload")
    await ft.advance(1.03)
    assert rec.names == ["w0"]  # 1.04 s after the grant is not enough: it arrived later
    await ft.advance(0.02)
    assert rec.names == ["w0", "w1"]
    assert rec.times == pytest.approx([0.0, 1.34])
    # w1 went out 0.01 s after its grant (now): w2 follows one interval after that.
    rec.start("w2")
    pacer.sent("upload")
    await ft.advance(1.03)
    assert rec.times == pytest.approx([0.0, 1.34])
    await ft.advance(0.01)
    assert rec.times == pytest.approx([0.0, 1.34, 2.39])
    await rec.close()


async def test_an_idle_bucket_grants_at_once_and_buckets_are_independent(ft: FakeTime) -> None:
    pacer = make(ft, {"upload": 2.0, "metadata": 0.5}, margin=0.0)
    rec = Recorder(ft, pacer)
    rec.start("u1", "upload")
    rec.start("m1", "metadata")
    rec.start("u2", "upload")
    rec.start("m2", "metadata")
    await ft.advance(0.5)
    assert sorted(rec.names) == ["m1", "u1", "u2"]
    await ft.advance(1.5)
    assert rec.names[-1] == "m2"
    assert dict(rec.grants)["m2"] - START == pytest.approx(2.0)
    # After a long idle spell a single caller does not wait, but there is no saved-up burst.
    await ft.advance(100)
    rec.start("u3", "upload")
    rec.start("u4", "upload")
    await ft.settle()
    assert rec.names[-1] == "u3"
    await ft.advance(0.5)
    assert rec.names[-1] == "u4"
    await rec.close()


async def test_burst_allows_that_many_at_once_then_spaces(ft: FakeTime) -> None:
    pacer = make(ft, {"upload": 1.0}, burst=3, margin=0.0)
    rec = Recorder(ft, pacer)
    for i in range(5):
        rec.start(f"w{i}")
    await ft.advance(5)
    assert rec.times == pytest.approx([0.0, 0.0, 0.0, 1.0, 2.0])
    await rec.close()


async def test_waiters_are_served_first_come_first_served(ft: FakeTime) -> None:
    pacer = make(ft, margin=0.0)
    rec = Recorder(ft, pacer)
    for name in ("a", "b", "c"):
        rec.start(name)
        await ft.settle()
    await ft.advance(0.5)
    # Latecomers queue behind those already waiting, even if they arrive as a token frees up.
    rec.start("d")
    await ft.advance(0.5)
    rec.start("e")
    await ft.advance(10)
    assert rec.names == ["a", "b", "c", "d", "e"]
    assert rec.times == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    await rec.close()


async def test_a_cancelled_waiter_takes_no_token(ft: FakeTime) -> None:
    pacer = make(ft, margin=0.0)
    rec = Recorder(ft, pacer)
    for name in ("a", "b", "c", "d"):
        rec.start(name)
        await ft.settle()
    assert rec.names == ["a"]
    assert pacer.stats()["upload"].waiting == 3
    # b is the head waiter (sleeping for its slot), c waits behind it in the queue.
    rec.tasks["b"].cancel()
    rec.tasks["c"].cancel()
    await ft.advance(0.5)
    assert pacer.stats()["upload"].waiting == 1
    await ft.advance(0.5)
    assert rec.names == ["a", "d"]
    assert rec.times == pytest.approx([0.0, 1.0])  # d got b's slot, not the one after it
    stats = pacer.stats()["upload"]
    assert (stats.granted, stats.waiting) == (2, 0)
    await rec.close()


async def test_throttle_makes_every_caller_wait_out_the_cooldown(ft: FakeTime) -> None:
    pacer = make(ft)
    cool_s = pacer.throttled("upload")
    assert 2.0 * 0.8 <= cool_s <= 2.0
    assert pacer.cooldown_remaining_s("upload") == pytest.approx(cool_s)
    rec = Recorder(ft, pacer)
    rec.start("a")
    rec.start("b")
    rec.start("m", "metadata")  # other endpoints are not affected
    await ft.advance(cool_s - 0.001)
    assert rec.names == ["m"]
    await ft.advance(0.002)
    assert rec.names == ["m", "a"]
    await ft.advance(1.04)
    assert rec.names == ["m", "a", "b"]
    assert pacer.cooldown_remaining_s("upload") == 0.0
    await rec.close()


async def test_throttle_while_waiting_extends_the_wait(ft: FakeTime) -> None:
    pacer = make(ft, jitter=0.0)
    rec = Recorder(ft, pacer)
    rec.start("a")
    rec.start("b")
    await ft.advance(0.5)
    assert pacer.throttled("upload") == pytest.approx(2.0)
    await ft.advance(1.0)  # b's own slot (1.04) passes, but the cool-down runs until 2.5
    assert rec.names == ["a"]
    await ft.advance(1.0)
    assert rec.names == ["a", "b"]
    assert rec.times[-1] == pytest.approx(2.5)
    await rec.close()


async def test_cooldown_doubles_per_consecutive_throttle_up_to_the_cap(ft: FakeTime) -> None:
    pacer = make(ft, jitter=0.0, cooldown_initial_s=2.0, cooldown_max_s=100.0)
    lengths = []
    for _ in range(8):
        lengths.append(pacer.throttled("upload"))
        await ft.advance(lengths[-1] + 0.01)
    assert lengths == pytest.approx([2, 4, 8, 16, 32, 64, 100, 100])
    assert pacer.stats()["upload"].throttles == 8


async def test_throttles_inside_a_running_cooldown_do_not_escalate(ft: FakeTime) -> None:
    pacer = make(ft, jitter=0.0)
    assert pacer.throttled("upload") == pytest.approx(2.0)
    await ft.advance(0.5)
    # Three more answers from requests that were in flight when the first 400 came.
    for _ in range(3):
        assert pacer.throttled("upload") == pytest.approx(1.5)
    stats = pacer.stats()["upload"]
    assert stats.cooldown_level_s == pytest.approx(2.0)
    assert stats.throttles == 4
    await ft.advance(2.0)
    assert pacer.throttled("upload") == pytest.approx(4.0)


async def test_jitter_stays_within_its_bounds_and_spreads(ft: FakeTime) -> None:
    lengths = []
    for seed in range(200):
        pacer = make(ft, rng=random.Random(seed), jitter=0.5, cooldown_initial_s=2.0)
        lengths.append(pacer.throttled("upload"))
    assert all(1.0 <= n <= 2.0 for n in lengths)
    assert max(lengths) - min(lengths) > 0.5  # it is not a constant
    # At the cap, jitter only ever shortens: never longer than cooldown_max_s.
    pacer = make(ft, jitter=0.5, cooldown_initial_s=50.0, cooldown_max_s=60.0)
    for _ in range(20):
        cool_s = pacer.throttled("upload")
        assert cool_s <= 60.0
        await ft.advance(cool_s + 0.01)
    assert pacer.stats()["upload"].cooldown_level_s == 60.0


async def test_successes_ease_the_level_off_additively(ft: FakeTime) -> None:
    pacer = make(ft, jitter=0.0, cooldown_initial_s=2.0)
    for _ in range(4):
        await ft.advance(pacer.throttled("upload") + 0.01)
    assert pacer.stats()["upload"].cooldown_level_s == pytest.approx(16.0)
    for _ in range(3):
        pacer.succeeded("upload")
    assert pacer.stats()["upload"].cooldown_level_s == pytest.approx(10.0)
    # The next throttle grows from the eased level, not from scratch: no oscillation.
    assert pacer.throttled("upload") == pytest.approx(20.0)
    await ft.advance(20.01)
    for _ in range(100):
        pacer.succeeded("upload")
    assert pacer.stats()["upload"].cooldown_level_s == 0.0
    assert pacer.throttled("upload") == pytest.approx(2.0)


async def test_a_success_does_not_cut_a_running_cooldown_short(ft: FakeTime) -> None:
    pacer = make(ft, jitter=0.0)
    pacer.throttled("upload")
    pacer.succeeded("upload")
    assert pacer.cooldown_remaining_s("upload") == pytest.approx(2.0)


async def test_snapshot_and_restore_carry_the_cooldown_across_a_restart(ft: FakeTime) -> None:
    pacer = make(ft, jitter=0.0)
    idle = pacer.snapshot()
    assert idle["upload"] == {"level_s": 0.0, "until_epoch_s": 0.0}
    await ft.advance(pacer.throttled("metadata") + 0.01)
    assert pacer.throttled("metadata") == pytest.approx(4.0)
    await ft.advance(1.0)
    snap = pacer.snapshot()
    assert snap["metadata"]["level_s"] == pytest.approx(4.0)
    assert snap["metadata"]["until_epoch_s"] == pytest.approx(ft.wall() + 3.0)

    # A new process: its monotonic clock starts elsewhere; wall time moved on by 0.5 s.
    ft2 = FakeTime(start=5.0, wall_offset=ft.wall() + 0.5 - 5.0)
    restored = make(ft2, jitter=0.0)
    restored.restore(snap)
    assert restored.cooldown_remaining_s("metadata") == pytest.approx(2.5)
    assert restored.cooldown_remaining_s("upload") == 0.0
    rec = Recorder(ft2, restored)
    rec.start("m", "metadata")
    await ft2.advance(2.49)
    assert rec.grants == []
    await ft2.advance(0.02)
    assert rec.names == ["m"]
    # The level survived too: the next throttle doubles it.
    assert restored.throttled("metadata") == pytest.approx(8.0)
    await rec.close()


async def test_restore_skips_garbage_and_clamps_clock_jumps(ft: FakeTime) -> None:
    pacer = make(ft, cooldown_max_s=300.0)
    snapshot: dict[str, Any] = {
        "unknown": {"level_s": 4.0, "until_epoch_s": ft.wall() + 10},
        "upload": {"level_s": "lots", "until_epoch_s": ft.wall() + 10},
        "signed_url": {"level_s": float("nan"), "until_epoch_s": 0.0},
        "metadata": {"level_s": 1e12, "until_epoch_s": ft.wall() + 1e9},
    }
    pacer.restore(snapshot)
    assert pacer.cooldown_remaining_s("upload") == 0.0
    assert pacer.cooldown_remaining_s("signed_url") == 0.0
    assert pacer.cooldown_remaining_s("metadata") == pytest.approx(300.0)
    assert pacer.stats()["metadata"].cooldown_level_s == 300.0
    # An end in the past restores nothing but the level.
    pacer.restore({"upload": {"level_s": 8.0, "until_epoch_s": ft.wall() - 5}})
    assert pacer.cooldown_remaining_s("upload") == 0.0
    assert pacer.stats()["upload"].cooldown_level_s == 8.0


async def test_pause_until_resume_blocks_every_endpoint(ft: FakeTime) -> None:
    pacer = make(ft)
    pacer.pause("out of credits")
    assert pacer.paused == "out of credits"
    assert pacer.pause_remaining_s() is None
    rec = Recorder(ft, pacer)
    rec.start("u", "upload")
    rec.start("m", "metadata")
    await ft.advance(3600)
    assert rec.grants == []
    pacer.resume()
    await ft.settle()
    assert sorted(rec.names) == ["m", "u"]
    assert rec.times == [3600.0, 3600.0]
    assert pacer.paused is None
    await rec.close()


async def test_timed_pause_ends_by_itself_or_early_on_resume(ft: FakeTime) -> None:
    pacer = make(ft)
    pacer.pause("auth probe", for_s=5.0)
    pacer.pause("shorter one does not shorten it", for_s=1.0)
    assert pacer.pause_remaining_s() == pytest.approx(5.0)
    rec = Recorder(ft, pacer)
    rec.start("a")
    await ft.advance(4.9)
    assert rec.grants == []
    await ft.advance(0.2)
    assert rec.times == pytest.approx([5.0])
    assert pacer.paused is None

    pacer.pause("long", for_s=1000.0)
    rec.start("b")
    await ft.advance(3.0)
    assert rec.names == ["a"]
    pacer.resume()
    await ft.settle()
    assert rec.names == ["a", "b"]
    assert rec.times[-1] == pytest.approx(8.1)
    await rec.close()


async def test_stats_count_grants_throttles_and_waiters(ft: FakeTime) -> None:
    pacer = make(ft, jitter=0.0)
    rec = Recorder(ft, pacer)
    for i in range(3):
        rec.start(f"w{i}")
    await ft.settle()
    pacer.throttled("upload")
    stats = pacer.stats()
    assert stats["upload"].granted == 1
    assert stats["upload"].waiting == 2
    assert stats["upload"].throttles == 1
    assert stats["upload"].cooldown_remaining_s == pytest.approx(2.0)
    assert stats["upload"].cooldown_level_s == pytest.approx(2.0)
    assert stats["metadata"].granted == 0
    await ft.advance(10)
    assert pacer.stats()["upload"].granted == 3
    await rec.close()


async def test_bad_arguments_are_refused(ft: FakeTime) -> None:
    pacer = make(ft)
    with pytest.raises(ValueError, match="unknown endpoint"):
        await pacer.acquire("download")
    with pytest.raises(ValueError, match="unknown endpoint"):
        pacer.throttled("storage")
    with pytest.raises(ValueError):
        Pacer({"upload": 0.0})
    with pytest.raises(ValueError):
        Pacer({})
    with pytest.raises(ValueError):
        Pacer({"upload": 1.0}, burst=0)
    with pytest.raises(ValueError):
        Pacer({"upload": 1.0}, cooldown_initial_s=10.0, cooldown_max_s=5.0)
    with pytest.raises(ValueError):
        pacer.pause("x", for_s=-1.0)


def test_from_config_uses_the_rate_limit_settings() -> None:
    cfg = RateLimitsConfig(upload_per_s=2.0, metadata_per_s=0.5, signed_url_per_s=1.0, burst=2)
    pacer = Pacer.from_config(cfg, margin=0.0)
    assert set(pacer.endpoints) == {"upload", "signed_url", "metadata"}
    assert pacer.interval_s("upload") == pytest.approx(0.5)
    assert pacer.interval_s("metadata") == pytest.approx(2.0)


async def test_real_time_concurrent_tasks_never_start_closer_than_the_interval() -> None:
    rate_per_s = 40.0
    pacer = Pacer({"upload": rate_per_s, "metadata": rate_per_s})
    interval_s = pacer.interval_s("upload")
    starts: list[float] = []

    async def worker() -> None:
        for _ in range(5):
            await pacer.acquire("upload")
            # No await between the grant and this read: it is the grant's own loop step.
            starts.append(time.monotonic())
            await asyncio.sleep(0.001)

    await asyncio.gather(*(worker() for _ in range(4)))
    assert len(starts) == 20
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= interval_s - 0.001
    assert pacer.stats()["upload"].granted == 20


async def test_workers_sharing_the_pacer_stay_under_the_emulators_limit(
    make_emulator: Callable[..., Awaitable[EmulatorServer]],
) -> None:
    rate_per_s = 20.0
    emulator = await make_emulator(rates={**uniform_rates(0), "metadata": rate_per_s})
    # A wide margin: this test is about sharing one bucket, not about loopback jitter.
    pacer = Pacer({"metadata": rate_per_s}, margin=0.5)
    outcomes: list[str] = []

    async def worker(c: MaviClient, paced: bool) -> None:
        for _ in range(4):
            if paced:
                await pacer.acquire("metadata")
            try:
                await c.metadata("re_1")
            except ApiThrottled:
                outcomes.append("throttled")
                if paced:
                    pacer.throttled("metadata")
            except ApiNotFound:
                outcomes.append("answered")

    async with MaviClient(emulator.base_url, emulator.key) as c:
        await asyncio.gather(*(worker(c, paced=True) for _ in range(4)))
        assert outcomes == ["answered"] * 16
        # The control: the same workers unpaced are throttled, so the check above can fail.
        outcomes.clear()
        await asyncio.gather(*(worker(c, paced=False) for _ in range(4)))
        assert "throttled" in outcomes
