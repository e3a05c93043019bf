"""Real ``syncd run`` processes sharing one PostgreSQL ledger, against the emulator: content
two hosts hold is uploaded once, a killed host's claims are finished by another, and a
PostgreSQL restart mid-run loses nothing and uploads nothing twice."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_process import DaemonProcess
from pg_support import PgServer
from pipeline_support import config_data, received, syncd_cmd, wait_for
from samples import write_media

from syncd.emulator import EmulatorServer
from syncd.ledger.postgres import PostgresLedger
from syncd.ledger.sqlite import Content

pytestmark = pytest.mark.timeout(180)

MakeHost = Callable[..., DaemonProcess]


@pytest.fixture
async def make_host(
    tmp_path: Path, emulator: EmulatorServer, pg_url: str
) -> AsyncIterator[MakeHost]:
    """Factory: ``make_host(name, **sections)`` returns a (not started) daemon of host
    ``name`` watching its own folder ``tmp_path/name/media``, on the shared ledger."""
    hosts: list[DaemonProcess] = []

    def make(name: str, **sections: Any) -> DaemonProcess:
        work = tmp_path / name
        media = work / "media"
        media.mkdir(parents=True, exist_ok=True)
        sections.setdefault("ledger", {})
        sections["ledger"] = {"url": pg_url, "lease_s": 5, **sections["ledger"]}
        sections["fleet"] = {"host_name": name}
        config = config_data(work, emulator, [media], **sections)
        host = DaemonProcess(config, work, emulator.key)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        if host.alive:
            host.signal(signal.SIGCONT)
            await host.kill()


@pytest.fixture
async def fleet_view(pg_url: str) -> AsyncIterator[PostgresLedger]:
    """The shared ledger as the test sees it (read-only; it claims nothing)."""
    store = await PostgresLedger.open(pg_url, host="test", readonly=True)
    yield store
    await store.close()


async def all_done(store: PostgresLedger, paths: dict[str, list[Path]]) -> bool:
    """Whether every path of every host maps to a content that is done."""
    for host, files in paths.items():
        for path in files:
            content = await content_of(store, host, path)
            if content is None or content.state != "done":
                return False
    return True


async def content_of(store: PostgresLedger, host: str, path: Path) -> Content | None:
    rec = await store.get_path(str(path), host=host)
    if rec is None or rec.sha256 is None:
        return None
    return await store.get_content(rec.sha256)


def uploads(emulator: EmulatorServer) -> int:
    return sum(1 for r in emulator.requests() if r.endpoint == "upload" and r.status == 200)


async def test_content_on_two_hosts_is_uploaded_once(
    make_host: MakeHost, emulator: EmulatorServer, fleet_view: PostgresLedger
) -> None:
    a, b = make_host("a"), make_host("b")
    media_a, media_b = a.workdir / "media", b.workdir / "media"
    shas = {}
    for i in range(6):
        shas[f"only_a{i}"] = write_media(media_a / f"only_a{i}.mp4", seed=100 + i)
        shas[f"only_b{i}"] = write_media(media_b / f"only_b{i}.mp4", seed=200 + i)
        shas[f"both{i}"] = write_media(media_a / f"both{i}.mp4", seed=300 + i)
        write_media(media_b / f"copy_of_both{i}.mp4", seed=300 + i)
    await asyncio.gather(a.start(), b.start())
    (status,) = await syncd_json_lines("status", "-c", str(a.cfg_file), "--json")
    assert status["daemon"]["running"] is True and status["ledger"].startswith("postgresql://")
    paths = {
        "a": sorted(media_a.iterdir()),
        "b": sorted(media_b.iterdir()),
    }
    await wait_for(lambda: all_done(fleet_view, paths), 90, what="every file done")
    assert await a.stop() == 0 and await b.stop() == 0
    stored = received(emulator)
    # One asset per distinct content, holding exactly its bytes: nothing uploaded twice.
    assert sorted(stored.values()) == sorted(shas.values())
    assert uploads(emulator) == len(shas)
    for host, files in paths.items():
        for path in files:
            content = await content_of(fleet_view, host, path)
            assert content is not None
            assert stored[content.asset_id or ""] == content.sha256
    assert await fleet_view.possible_duplicates() == 0
    # The operator commands answer for the whole fleet from any host.
    listed = await syncd_json_lines("ls", "-c", str(b.cfg_file), "--jsonl")
    assert sorted(row["path"] for row in listed) == sorted(
        str(p) for files in paths.values() for p in files
    )
    assert all(row["state"] == "done" for row in listed)
    shown = await syncd_json_lines("show", "-c", str(a.cfg_file), "--json", str(paths["a"][0]))
    assert shown[0]["asset_id"] == (await content_of(fleet_view, "a", paths["a"][0])).asset_id  # type: ignore[union-attr]


async def syncd_json_lines(*args: str) -> list[dict[str, Any]]:
    """Run a ``syncd`` command; return its output's JSON lines (or one JSON document)."""
    proc = await asyncio.create_subprocess_exec(
        *syncd_cmd(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    try:
        doc = json.loads(text)
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return doc if isinstance(doc, list) else [doc]


async def test_a_killed_hosts_claims_are_finished_by_another(
    make_host: MakeHost, emulator: EmulatorServer, fleet_view: PostgresLedger
) -> None:
    # Host a claims a backlog it cannot send yet (its own pace is slow), then is killed -9;
    # host b holds the same files and finishes them once a's leases expire.
    slow = {"rate_limits": {"upload_per_s": 0.05, "burst": 1}}
    a = make_host("a", **slow)
    b = make_host("b")
    shas = [write_media(a.workdir / "media" / f"f{i}.mp4", seed=i) for i in range(5)]
    for i in range(5):
        write_media(b.workdir / "media" / f"f{i}.mp4", seed=i)
    await a.start()

    async def a_holds_claims() -> bool:
        held = [await fleet_view.claimed_by(s) for s in shas]
        return sum(1 for who, _ in held if who == "a") >= 2

    await wait_for(a_holds_claims, 30, what="host a holding claims")
    await a.kill()
    await b.start()
    paths = {"b": sorted((b.workdir / "media").iterdir())}
    await wait_for(lambda: all_done(fleet_view, paths), 90, what="b finished a's claims")
    assert await b.stop() == 0
    assert set(received(emulator).values()) == set(shas)
    # At most one remote duplicate for the one kill (the upload a may have had in flight,
    # whose answer died with it), and any is counted.
    duplicates = uploads(emulator) - len(shas)
    assert duplicates <= 1
    assert duplicates <= await fleet_view.possible_duplicates()


async def test_a_postgresql_restart_mid_run_loses_nothing(
    make_host: MakeHost,
    emulator: EmulatorServer,
    fleet_view: PostgresLedger,
    postgres: PgServer,
) -> None:
    a = make_host("a", rate_limits={"upload_per_s": 4})
    media = a.workdir / "media"
    shas = [write_media(media / f"before{i}.mp4", seed=i) for i in range(4)]
    await a.start()
    await wait_for(lambda: uploads(emulator) >= 1, 30, what="a first upload")
    await asyncio.to_thread(postgres.stop)
    try:
        # Files arriving while the ledger is down are settled and hashed, then wait.
        shas += [write_media(media / f"during{i}.mp4", seed=50 + i) for i in range(3)]
        await wait_for(
            lambda: any("unreachable" in m for m in a.messages()), 30, what="one clear line"
        )
        # Long enough for the new files to settle (quiet_s 0.3) and reach the hash stage's
        # ledger look-up while the server is still down: that look-up must wait, not end it.
        await asyncio.sleep(3)
        assert a.alive
    finally:
        await asyncio.to_thread(postgres.start)
    paths = {"a": sorted(media.iterdir())}
    await wait_for(lambda: all_done(fleet_view, paths), 90, what="every file done")
    assert await a.stop() == 0
    assert sorted(received(emulator).values()) == sorted(shas)
    assert uploads(emulator) == len(shas)
    assert any("reachable again" in m for m in a.messages())


async def test_a_frozen_host_does_not_send_what_it_lost(
    make_host: MakeHost, emulator: EmulatorServer, fleet_view: PostgresLedger
) -> None:
    # Host a holds claims when it is frozen (SIGSTOP) past its lease; b finishes the files;
    # a, thawed (SIGCONT), finds its claims gone and sends none of them.
    a = make_host("a", rate_limits={"upload_per_s": 0.2, "burst": 1})
    b = make_host("b")
    shas = [write_media(a.workdir / "media" / f"f{i}.mp4", seed=40 + i) for i in range(4)]
    for i in range(4):
        write_media(b.workdir / "media" / f"f{i}.mp4", seed=40 + i)
    await a.start()

    async def a_holds_claims() -> bool:
        held = [await fleet_view.claimed_by(s) for s in shas]
        return sum(1 for who, _ in held if who == "a") >= 2

    await wait_for(a_holds_claims, 30, what="host a holding claims")
    a.signal(signal.SIGSTOP)
    try:
        await b.start()
        paths = {"b": sorted((b.workdir / "media").iterdir())}
        await wait_for(lambda: all_done(fleet_view, paths), 90, what="b finished a's claims")
    finally:
        a.signal(signal.SIGCONT)
    await wait_for(
        lambda: any("lost its claim" in m for m in a.messages()), 30, what="a abandons a send"
    )
    assert await a.stop() == 0 and await b.stop() == 0
    stored = received(emulator)
    assert set(stored.values()) == set(shas)
    # Only an upload whose bytes had left before the freeze can be sent twice (one at most:
    # one finisher at a time), and it is counted, its asset id kept as superseded.
    duplicates = uploads(emulator) - len(shas)
    assert duplicates <= 1
    assert duplicates <= await fleet_view.possible_duplicates()
    kept = {c.asset_id for c in (await fleet_view.get_contents(shas)).values()}
    for sha in shas:
        kept |= {asset for asset, _, _ in await fleet_view.superseded_of(sha)}
    assert set(stored) <= kept  # no asset id the service holds is unknown to the ledger
