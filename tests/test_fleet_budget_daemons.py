"""Real ``syncd run`` daemons sharing one rate budget on Redis and one PostgreSQL ledger,
against one emulator that limits the whole account to 1 request per second per endpoint: the
fleet's upload requests stay 1 s apart, none is throttled, and nothing is uploaded twice."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeEmulator
from daemon_process import DaemonProcess
from pipeline_support import config_data, received, subprocess_env, syncd_cmd, wait_for
from samples import write_media

from syncd.emulator import EmulatorServer, uniform_rates

pytestmark = pytest.mark.timeout(120)

HOSTS = 3
FILES_PER_HOST = 4


@pytest.fixture
async def limited_emulator(make_emulator: MakeEmulator) -> EmulatorServer:
    """An emulator with the service's limit: 1 request/s per endpoint for the whole account."""
    return await make_emulator(rates=uniform_rates(1.0))


@pytest.fixture
async def make_host(
    tmp_path: Path, limited_emulator: EmulatorServer, pg_url: str, redis_url: str
) -> AsyncIterator[Callable[[str], DaemonProcess]]:
    """Factory: ``make_host(name)`` returns a (not started) daemon of host ``name`` watching
    ``tmp_path/name/media``, on the shared ledger and the shared budget, paced at the API's 1/s."""
    hosts: list[DaemonProcess] = []

    def make(name: str) -> DaemonProcess:
        work = tmp_path / name
        media = work / "media"
        media.mkdir(parents=True, exist_ok=True)
        config = config_data(
            work,
            limited_emulator,
            [media],
            ledger={"url": pg_url, "lease_s": 30},
            fleet={"host_name": name, "redis_url": redis_url},
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
    make_host: Callable[[str], DaemonProcess], limited_emulator: EmulatorServer
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
