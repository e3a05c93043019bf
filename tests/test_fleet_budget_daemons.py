"""Real ``syncd run`` daemons sharing one rate budget on Redis and one PostgreSQL ledger,
against one emulator that limits the whole account to 1 request per second per endpoint: the
fleet's upload requests stay 1 s apart, none is throttled, and nothing is uploaded twice; with
Redis stopped for 10 s no request starts, and none burst when it returns."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeEmulator
from daemon_process import DaemonProcess
from pipeline_support import config_data, received, subprocess_env, syncd_cmd, wait_for
from redis_support import RedisServer
from samples import write_media

from syncd.emulator import EmulatorServer, uniform_rates

pytestmark = pytest.mark.timeout(120)

HOSTS = 3
FILES_PER_HOST = 4


@pytest.fixture
async def limited_emulator(make_emulator: MakeEmulator) -> EmulatorServer:
    """An emulator with the service's limit: 1 request/s per endpoint for the whole account."""
    return await make_emulator(rates=uniform_rates(1.0))


MakeHost = Callable[..., DaemonProcess]


@pytest.fixture
async def make_host(
    tmp_path: Path, limited_emulator: EmulatorServer, pg_url: str, redis_url: str
) -> AsyncIterator[MakeHost]:
    """Factory: ``make_host(name, redis_url=None)`` returns a (not started) daemon of host
    ``name`` watching ``tmp_path/name/media``, on the shared ledger and the shared budget (the
    session's Redis unless ``redis_url`` names another), paced at the API's 1/s."""
    hosts: list[DaemonProcess] = []

    def make(name: str, redis: str | None = None) -> DaemonProcess:
        work = tmp_path / name
        media = work / "media"
        media.mkdir(parents=True, exist_ok=True)
        config = config_data(
            work,
            limited_emulator,
            [media],
            ledger={"url": pg_url, "lease_s": 30},
            fleet={"host_name": name, "redis_url": redis or redis_url},
            rate_limits={
                "upload_per_s": 1,
                "metadata_per_s": 1,
                "signed_url_per_s": 1,
                "cooldown_initial_s": 2,
                "cooldown_max_s": 10,
            },
        )
        host = DaemonProcess(config, work, limited_emulator.key)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        if host.alive:
            await host.kill()


async def status_json(cfg_file: Path, key: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *syncd_cmd("status", "-c", str(cfg_file), "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(MAVI_API_KEY=key),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode in (0, 1), err.decode()
    doc: dict[str, Any] = json.loads(out)
    return doc


async def test_daemons_sharing_one_budget_keep_the_account_under_its_limit(
    make_host: MakeHost, limited_emulator: EmulatorServer
) -> None:
    hosts = [make_host(f"h{i}") for i in range(HOSTS)]
    # The backlog appears once every daemon is up: three interpreters starting at once on a
    # small machine can hold a granted request back longer than the pacer's margin, and the
    # API counts arrivals (docs/fleet.md, what the fleet cannot promise).
    await asyncio.gather(*(h.start() for h in hosts))
    shas = set()
    for i, host in enumerate(hosts):
        for j in range(FILES_PER_HOST):
            shas.add(write_media(host.workdir / "media" / f"f{j}.mp4", seed=1000 * i + j))
        # One content every host holds: uploaded once for the fleet.
        shas.add(write_media(host.workdir / "media" / "shared.mp4", seed=7))

    def uploaded() -> int:
        return sum(
            1 for r in limited_emulator.requests() if r.endpoint == "upload" and r.status == 200
        )

    await wait_for(lambda: uploaded() >= 3, 30, what="the first uploads")
    doc = await status_json(hosts[0].cfg_file, limited_emulator.key)
    budget = doc["fleet_budget"]
    assert budget["reachable"] is True
    assert sorted(h["host"] for h in budget["hosts"]) == [
        h.config["fleet"]["host_name"] for h in hosts
    ]
    await wait_for(lambda: uploaded() >= len(shas), 60, what="every content uploaded")
    await asyncio.sleep(1.0)  # a second upload of anything would show now
    for host in hosts:
        host.signal(signal.SIGTERM)
    assert [await h.wait(40) for h in hosts] == [0] * HOSTS
    requests = limited_emulator.requests()
    throttled = [r for r in requests if r.throttled or r.status in (400, 429)]
    assert not throttled, f"{len(throttled)} request(s) answered 400/429"
    starts = sorted(r.time_s for r in requests if r.endpoint == "upload")
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # At most one upload request of the whole fleet in any 1 s window.
    assert min(gaps) >= 1.0, f"two upload requests {min(gaps):.3f} s apart"
    stored = received(limited_emulator)
    assert sorted(v for v in stored.values() if v) == sorted(shas)
    assert uploaded() == len(shas)


def pacer_lines(host: DaemonProcess) -> dict[str, list[float]]:
    """The wall-clock times (s) of the host's "Redis unreachable" and "reachable again" lines."""
    found: dict[str, list[float]] = {"lost": [], "back": []}
    for line in host.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        msg = str(record.get("msg", ""))
        if not msg.startswith("pacer: Redis at"):
            continue
        at_s = dt.datetime.fromisoformat(record["ts"]).timestamp()
        found["lost" if "unreachable" in msg else "back"].append(at_s)
    return found


async def test_daemons_start_no_request_while_redis_is_down_and_none_burst_when_it_returns(
    make_host: MakeHost, limited_emulator: EmulatorServer, own_redis: RedisServer
) -> None:
    hosts = [make_host(f"h{i}", redis=own_redis.url) for i in range(2)]
    await asyncio.gather(*(h.start() for h in hosts))
    shas = set()
    for i, host in enumerate(hosts):
        # More backlog than the run can send: uploads are due before, during and after.
        for j in range(12):
            shas.add(write_media(host.workdir / "media" / f"f{j}.mp4", seed=5000 + 100 * i + j))
        shas.add(write_media(host.workdir / "media" / "shared.mp4", seed=9))

    def uploads() -> list[float]:
        return [r.time_s for r in limited_emulator.requests() if r.endpoint == "upload"]

    await wait_for(lambda: len(uploads()) >= 2, 30, what="the first uploads")
    # The emulator's request times and the daemons' log times are both this machine's wall
    # clock, so the outage can be placed on either.
    down_at = time.time()
    await asyncio.to_thread(own_redis.stop)
    try:
        await asyncio.sleep(10.0)
    finally:
        up_at = time.time()
        await asyncio.to_thread(own_redis.start)
    await wait_for(
        lambda: len([t for t in uploads() if t > up_at]) >= 3, 30, what="uploads resumed"
    )
    for host in hosts:
        host.signal(signal.SIGTERM)
    assert [await h.wait(40) for h in hosts] == [0] * len(hosts)

    requests = limited_emulator.requests()
    paced = [r for r in requests if r.endpoint in ("upload", "metadata")]
    # A request whose start Redis confirmed just before the stop may still be arriving; none
    # starts later (each start is confirmed on Redis at the moment it leaves).
    during = [r.time_s - down_at for r in paced if down_at <= r.time_s < up_at]
    assert all(t <= 0.5 for t in during), f"requests {during} s after Redis stopped"
    assert len(during) <= 2 * len(hosts)
    for host in hosts:
        lines = pacer_lines(host)
        assert len(lines["lost"]) == 1 and len(lines["back"]) == 1, host.tail()
        (lost_s,) = lines["lost"]
        (back_s,) = lines["back"]
        assert down_at <= lost_s < up_at <= back_s
    throttled = [r for r in requests if r.throttled or r.status in (400, 429)]
    assert not throttled, f"{len(throttled)} request(s) answered 400/429"
    starts = sorted(uploads())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # No burst when Redis returns (its budget starts empty): still one upload per second.
    assert min(gaps) >= 1.0, f"two upload requests {min(gaps):.3f} s apart"
    stored = [v for v in received(limited_emulator).values() if v]
    assert len(stored) == len(set(stored)), "a content uploaded twice"
    assert set(stored) <= shas
