"""The fleet's pacer on a private Redis: several pacers (in this process and in others) share
one budget on the server's clock, one host's throttle cools every host down, a slot woken late
is void, and while Redis is down no request starts and none burst when it returns."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis_support import RedisServer

from syncd.config import parse_config
from syncd.metrics import Metrics
from syncd.ops.fleet_status import fleet_budget, render_fleet_budget
from syncd.upload.fleet_pacer import RedisPacer, connect, read_fleet_view

pytestmark = pytest.mark.timeout(60)

RATE_PER_S = 5.0
GAP_US = int(1_000_000 / RATE_PER_S)
ENDPOINTS = ("upload", "signed_url", "metadata")

MakePacer = Callable[..., Awaitable[RedisPacer]]


@pytest.fixture
async def make_pacer() -> AsyncIterator[MakePacer]:
    """Factory: ``make_pacer(url, host, **kwargs)`` returns a started pacer, closed at the end."""
    pacers: list[RedisPacer] = []

    async def make(url: str, host: str, **kwargs: Any) -> RedisPacer:
        kwargs.setdefault("cooldown_initial_s", 1.0)
        pacer = RedisPacer(
            dict.fromkeys(ENDPOINTS, RATE_PER_S),
            client=connect(url),
            account="acct",
            host=host,
            url=url,
            heartbeat_s=0.5,
            **kwargs,
        )
        await pacer.start()
        pacers.append(pacer)
        return pacer

    yield make
    for pacer in pacers:
        await pacer.aclose()


async def grant_loop(pacer: RedisPacer, starts: list[int], until: float) -> None:
    """Acquire ``upload`` until ``until`` (monotonic), recording each start's server time."""
    while time.monotonic() < until:
        await pacer.acquire("upload")
        pacer.sent("upload")
        starts.append(pacer.last_start_us)


# A host in another process: acquires for the given seconds, prints each start's server time.
CHILD = """
import asyncio, sys, time
from syncd.metrics import Metrics
from syncd.upload.fleet_pacer import RedisPacer, connect

async def main(url, seconds):
    pacer = RedisPacer(dict.fromkeys(("upload", "signed_url", "metadata"), {rate}),
                       client=connect(url), account="acct", host=sys.argv[3], url=url)
    await pacer.start()
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        await pacer.acquire("upload")
        pacer.sent("upload")
        print(pacer.last_start_us, flush=True)
    await pacer.aclose()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def assert_spaced(starts: list[int]) -> None:
    ordered = sorted(starts)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    assert gaps, "no grants"
    assert min(gaps) >= GAP_US, f"two starts {min(gaps)} us apart, less than {GAP_US}"


async def test_pacers_in_several_processes_sharing_one_redis_never_start_closer_than_the_rate(
    redis_url: str, make_pacer: MakePacer
) -> None:
    seconds = 4.0
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD.format(rate=RATE_PER_S), redis_url, str(seconds), f"p{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    pacers = [await make_pacer(redis_url, f"local{i}") for i in range(2)]
    starts: list[int] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(grant_loop(p, starts, until) for p in pacers))
    outs = [await asyncio.to_thread(c.communicate, timeout=30) for c in children]
    assert all(c.returncode == 0 for c in children)
    child_starts = [int(line) for out, _ in outs for line in out.split()]
    assert child_starts and starts, "every host got grants"
    everything = starts + child_starts
    assert_spaced(everything)
    # The budget is used, not just respected: most of the slots of the window went out.
    span_s = (max(everything) - min(everything)) / 1e6
    assert len(everything) >= 0.7 * span_s * RATE_PER_S


async def test_one_hosts_throttle_cools_every_host_down(
    redis_url: str, make_pacer: MakePacer
) -> None:
    a = await make_pacer(redis_url, "a", jitter=0.0)
    b = await make_pacer(redis_url, "b", jitter=0.0)
    await b.acquire("upload")
    a.throttled("upload")
    client = connect(redis_url)
    try:
        for _ in range(100):
            view = await read_fleet_view(client, "acct", ENDPOINTS)
            if view["endpoints"][0]["throttles"]:
                break
            await asyncio.sleep(0.01)
        upload = view["endpoints"][0]
        assert upload["throttles"] == 1
        assert 0.8 < upload["cooldown_remaining_s"] <= 1.0
        cooled_from_us = int((await client.time())[0]) * 1_000_000
    finally:
        await client.aclose()
    await b.acquire("upload")
    # b, which saw no throttle itself, waited out the cool-down a reported.
    assert b.last_start_us - cooled_from_us >= 0.8 * 1_000_000


async def test_a_slot_woken_late_is_void_and_reserved_again(
    redis_url: str, make_pacer: MakePacer
) -> None:
    oversleep = [0.5]

    async def late_sleep(delay_s: float) -> None:
        # The first sleep overshoots like a loaded box or a SIGSTOP would.
        await asyncio.sleep(delay_s + (oversleep.pop() if oversleep else 0.0))

    first = await make_pacer(redis_url, "first")
    late = await make_pacer(redis_url, "late", sleep=late_sleep)
    other = await make_pacer(redis_url, "other")
    await first.acquire("upload")  # the next slot is now in the future
    late_task = asyncio.create_task(late.acquire("upload"))
    await asyncio.sleep(0.05)
    starts = [first.last_start_us]
    # While the late host oversleeps, another host takes the slots after it.
    await other.acquire("upload")
    starts.append(other.last_start_us)
    await late_task
    starts.append(late.last_start_us)
    assert late.voided == 1
    assert_spaced(starts)


async def test_no_request_starts_while_redis_is_down_and_none_burst_when_it_returns(
    own_redis: RedisServer, make_pacer: MakePacer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncd.upload.fleet_pacer")
    pacers = [await make_pacer(own_redis.url, f"h{i}") for i in range(3)]
    granted_at: list[float] = []  # local wall clock, comparable with the outage's times
    starts: list[int] = []

    async def loop(pacer: RedisPacer) -> None:
        while True:
            await pacer.acquire("upload")
            granted_at.append(time.time())
            starts.append(pacer.last_start_us)

    tasks = [asyncio.create_task(loop(p)) for p in pacers]
    try:
        await asyncio.sleep(1.0)
        before = len(starts)
        down_at = time.time()
        await asyncio.to_thread(own_redis.stop)
        await asyncio.sleep(3.0)
        up_at = time.time()
        await asyncio.to_thread(own_redis.start)
        await asyncio.sleep(2.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert before > 0
    # A grant may have been on its way back when the server stopped; none later.
    assert not [t for t in granted_at if down_at + 0.1 < t < up_at]
    after = [s for t, s in zip(granted_at, starts, strict=True) if t >= up_at]
    assert len(after) >= 3, "pacing resumed"
    assert_spaced(after)
    lost = [r for r in caplog.records if "unreachable" in r.getMessage()]
    back = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert 1 <= len(lost) <= len(pacers) and len(back) == len(lost)
    assert all(p.connected for p in pacers)


async def test_the_fleet_view_lists_live_hosts_with_their_grant_rates(
    redis_url: str, make_pacer: MakePacer
) -> None:
    metrics = Metrics()
    a = await make_pacer(redis_url, "a", metrics=metrics)
    await make_pacer(redis_url, "b")
    for _ in range(3):
        await a.acquire("upload")
    await asyncio.sleep(0.7)  # one heartbeat
    assert metrics.value("syncd_fleet_redis_up") == 1
    assert metrics.value("syncd_fleet_hosts_alive") == 2
    assert metrics.value("syncd_fleet_grants_per_second", host="a", endpoint="upload") > 0
    client = connect(redis_url)
    try:
        view = await read_fleet_view(client, "acct", ENDPOINTS)
    finally:
        await client.aclose()
    assert [h["host"] for h in view["hosts"]] == ["a", "b"]
    assert view["hosts"][0]["grants_per_s"]["upload"] > 0
    assert view["endpoints"][0]["granted"] == 3


async def test_status_reports_an_unreachable_redis_instead_of_failing(
    own_redis: RedisServer,
) -> None:
    cfg = parse_config(
        {"fleet": {"redis_url": f"redis://:hunter2@127.0.0.1:{own_redis.port}/0", "account": "a"}},
        "t.yaml",
    )
    await asyncio.to_thread(own_redis.stop)
    doc = await fleet_budget(cfg)
    assert doc is not None
    assert doc["reachable"] is False and doc["error"]
    assert "hunter2" not in doc["redis"]
    out = io.StringIO()
    render_fleet_budget(doc, out)
    assert "NOT reachable" in out.getvalue() and "hunter2" not in out.getvalue()
    assert await fleet_budget(parse_config({}, "t.yaml")) is None


async def test_closing_pacers_mid_heartbeat_returns_promptly(redis_url: str) -> None:
    # The client can swallow a cancel that lands inside a command; the pacer must still stop.
    for i in range(10):
        pacers = [
            RedisPacer(
                dict.fromkeys(ENDPOINTS, RATE_PER_S),
                client=connect(redis_url),
                account=f"close{i}",
                host=host,
                heartbeat_s=0.001,
            )
            for host in ("a", "b")
        ]
        for pacer in pacers:
            await pacer.start()
        await pacers[0].acquire("upload")
        await asyncio.sleep(0.01)
        for pacer in pacers:
            await asyncio.wait_for(pacer.aclose(), 1.0)
            assert pacer._heartbeat_task is not None and pacer._heartbeat_task.done()
