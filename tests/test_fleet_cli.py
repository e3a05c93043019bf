"""The operator's commands on a fleet's shared ledger, from any host: ``ls`` names each path's
host, and ``--host NAME`` picks one host for ``ls``, ``show`` and ``status``; on a SQLite ledger
``--host`` is refused with one line."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from pipeline_support import config_data, syncd_cmd

from syncd.emulator import EmulatorServer
from syncd.errors import EXIT_FAILURE
from syncd.fingerprint import Fingerprint
from syncd.ledger.postgres import PostgresLedger
from syncd.metrics import Metrics
from syncd.ops.webapi import Health, bound_address, start_http, stop_http

SHARED = "ab" * 32
ONLY_B = "cd" * 32


def fp(ino: int) -> Fingerprint:
    return Fingerprint(1, ino, 10, 100, 100)


@pytest.fixture
async def fleet(pg_url: str) -> AsyncIterator[None]:
    """Host a holds /m/x.mp4; host b holds the same bytes at /m/x.mp4 and more at /m/y.mp4."""
    a = await PostgresLedger.open(pg_url, host="a", renew_every_s=3600)
    b = await PostgresLedger.open(pg_url, host="b", renew_every_s=3600)
    try:
        await a.record_content("/m/x.mp4", "/m", fp(1), SHARED, "mp4")
        await b.record_content("/m/x.mp4", "/m", fp(1), SHARED, "mp4")
        await b.record_content("/m/y.mp4", "/m", fp(2), ONLY_B, "mp4")
        yield
    finally:
        await a.close()
        await b.close()


def write_config(tmp_path: Path, emulator: EmulatorServer, **sections: Any) -> Path:
    cfg = tmp_path / "syncd.yaml"
    data = config_data(tmp_path, emulator, [tmp_path / "media"], **sections)
    cfg.write_text(yaml.safe_dump(data))
    return cfg


async def syncd(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, syncd_cmd(*args), capture_output=True, text=True, timeout=60, check=False
    )


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.usefixtures("fleet")
async def test_ls_names_each_paths_host_and_host_filters_one(
    tmp_path: Path, emulator: EmulatorServer, pg_url: str
) -> None:
    cfg = write_config(tmp_path, emulator, ledger={"url": pg_url}, fleet={"host_name": "a"})
    every = await syncd("ls", "-c", str(cfg), "--jsonl")
    assert every.returncode == 0, every.stderr
    assert sorted((r["host"], r["path"]) for r in jsonl(every.stdout)) == [
        ("a", "/m/x.mp4"),
        ("b", "/m/x.mp4"),
        ("b", "/m/y.mp4"),
    ]
    only_b = await syncd("ls", "-c", str(cfg), "--jsonl", "--host", "b")
    assert only_b.returncode == 0, only_b.stderr
    assert [(r["host"], r["path"], r["sha256"]) for r in jsonl(only_b.stdout)] == [
        ("b", "/m/x.mp4", SHARED),
        ("b", "/m/y.mp4", ONLY_B),
    ]
    table = await syncd("ls", "-c", str(cfg), "--host", "a")
    assert "a:/m/x.mp4" in table.stdout and "/m/y.mp4" not in table.stdout
    csv = await syncd("ls", "-c", str(cfg), "--csv")
    assert csv.stdout.splitlines()[0].endswith(",host")


@pytest.mark.usefixtures("fleet")
async def test_show_and_status_look_at_the_named_host(
    tmp_path: Path, emulator: EmulatorServer, pg_url: str
) -> None:
    cfg = write_config(tmp_path, emulator, ledger={"url": pg_url}, fleet={"host_name": "a"})
    # /m/y.mp4 is a path of host b only: this host (a) does not know it.
    mine = await syncd("show", "-c", str(cfg), "--json", "/m/y.mp4")
    assert mine.returncode == EXIT_FAILURE
    theirs = await syncd("show", "-c", str(cfg), "--json", "--host", "b", "/m/y.mp4")
    assert theirs.returncode == 0, theirs.stderr
    assert json.loads(theirs.stdout)["sha256"] == ONLY_B
    status = await syncd("status", "-c", str(cfg), "--json", "--host", "b")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["daemon"]["running"] is False  # no daemon of host b has beaten
    assert doc["files"]["pending"] == 2  # the content counts stay the fleet's


async def test_host_is_refused_on_a_sqlite_ledger_with_one_line(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    cfg = write_config(tmp_path, emulator)
    for command in (("ls",), ("status",), ("show", "/m/x.mp4")):
        res = await syncd(command[0], "-c", str(cfg), "--host", "b", *command[1:])
        assert res.returncode != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "--host b" in lines[0] and "SQLite" in lines[0], res.stderr
        assert "Traceback" not in res.stderr


@pytest.mark.usefixtures("fleet")
async def test_the_endpoint_answers_for_the_fleet_and_host_picks_a_hosts_path(pg_url: str) -> None:
    store = await PostgresLedger.open(pg_url, host="a", readonly=True)
    runner = await start_http(
        "127.0.0.1:0",
        ledger=store,
        metrics=Metrics(),
        health=lambda: Health(healthy=True, ready=True, reason=""),
    )
    base = f"http://{bound_address(runner)}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/assets/{ONLY_B}") as resp:  # any host's content
                assert resp.status == 200
                assert (await resp.json())["sha256"] == ONLY_B
            async with http.get(f"{base}/v1/assets", params={"path": "/m/y.mp4"}) as resp:
                assert resp.status == 404  # not a path of this host (a)
            query = {"path": "/m/y.mp4", "host": "b"}
            async with http.get(f"{base}/v1/assets", params=query) as resp:
                assert resp.status == 200
                assert (await resp.json())["sha256"] == ONLY_B
    finally:
        await stop_http(runner)
        await store.close()
