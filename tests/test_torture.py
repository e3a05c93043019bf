"""The kill -9 torture test: a real daemon killed at random moments and at every crash window.

A writer drops ~300 files (quick, slow, renamed from a temp name, duplicated) while the daemon is
killed with SIGKILL at least 10 times (at random moments, during hashing, during an upload body,
between the API's answer and the ledger commit), then restarted. The emulator injects 5xx,
connection resets and throttling throughout. At the end every file must be SUCCESS under an asset
whose bytes are exactly the file's, no partial file may ever have been received, and remote
duplicates are bounded by the number of kills (direct mode) or zero (signed-URL mode).

Seeded: ``SYNCD_TORTURE_SEED=N`` replays a run; the seed is in every failure message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MakeEmulator
from daemon_process import DaemonProcess, query
from pipeline_support import config_data, wait_for
from samples import media_bytes

from syncd.emulator import EmulatorServer, uniform_rates

SEED = int(os.environ.get("SYNCD_TORTURE_SEED", "20261124"))
FILES = 300
KILLS = 12


def writer(root: Path, rng: random.Random, expected: dict[str, str], stop: threading.Event) -> None:
    """Drop FILES files of four kinds into ``root``; record each final path's sha256."""
    written: list[tuple[bytes, str]] = []
    slow: list[threading.Thread] = []
    for i in range(FILES):
        if stop.is_set():
            break
        kind = rng.choices(["quick", "slow", "renamed", "dup"], [60, 10, 15, 15])[0]
        if kind == "dup" and written:
            data, ext = rng.choice(written)  # the same bytes at a new path
        else:
            ext = rng.choice(["mp4", "jpg", "mp3", "png", "mkv"])
            data = media_bytes(ext, rng.randint(2_000, 150_000), seed=rng.randrange(1 << 30))
            written.append((data, ext))
        path = root / f"sub{i % 7}" / f"file{i:03d}.{ext}"
        path.parent.mkdir(exist_ok=True)
        if kind == "slow":

            def slow_write(p: Path = path, d: bytes = data) -> None:
                with open(p, "wb") as f:
                    for j in range(0, len(d), len(d) // 4 + 1):
                        f.write(d[j : j + len(d) // 4 + 1])
                        f.flush()
                        time.sleep(0.15)  # shorter than quiet_s: the file is never quiet

            t = threading.Thread(target=slow_write)
            t.start()
            slow.append(t)
        elif kind == "renamed":
            temp = path.parent / f".{path.name}.{rng.randrange(1 << 20):05x}"
            temp.write_bytes(data)
            os.rename(temp, path)
        else:
            path.write_bytes(data)
        expected[str(path)] = hashlib.sha256(data).hexdigest()
        time.sleep(rng.uniform(0.02, 0.12))
    for t in slow:
        t.join()


@dataclass
class Torture:
    """A faulty emulator, a daemon configured for it (not started) and the writer running."""

    emulator: EmulatorServer
    daemon: DaemonProcess
    ledger: Path
    expected: dict[str, str]  # final path -> sha256, filled in by the writer as it goes
    writing: asyncio.Task[None]


@contextlib.asynccontextmanager
async def torture(
    tmp_path: Path, make_emulator: MakeEmulator, *, grace_s: float, **api: object
) -> AsyncIterator[Torture]:
    """Set up a torture run: an emulator answering 4 % of requests with 5xx and resetting 3 %
    of connections, a watched folder, a daemon config (``api`` keys added) and the writer in a
    thread. On exit the writer is told to stop and awaited."""
    emulator = await make_emulator(
        rates=uniform_rates(0),
        error_rate=0.04,
        reset_rate=0.03,
        seed=SEED,
        waiting_s=0.1,
        uploading_s=0.1,
    )
    root = tmp_path / "media"
    root.mkdir()
    data = config_data(
        tmp_path,
        emulator,
        [root],
        api=api,
        settle={"quiet_s": 0.4},
        upload={"workers": 4, "max_attempts": 100, "backoff_initial_s": 0.1},
        rate_limits={"cooldown_initial_s": 0.1, "cooldown_max_s": 0.5},
        shutdown={"grace_s": grace_s},
    )
    expected: dict[str, str] = {}
    stop_writing = threading.Event()
    writing = asyncio.create_task(
        asyncio.to_thread(writer, root, random.Random(f"{SEED}:writer"), expected, stop_writing)
    )
    try:
        yield Torture(
            emulator,
            DaemonProcess(data, tmp_path, emulator.key),
            Path(data["ledger"]["path"]),
            expected,
            writing,
        )
    finally:
        stop_writing.set()
        await writing


def done_paths(ledger: Path) -> dict[str, tuple[str, str]]:
    rows = query(
        ledger,
        "SELECT p.path, p.sha256, c.state FROM paths p JOIN contents c ON c.sha256 = p.sha256 "
        "WHERE p.state = 'present'",
    )
    return {os.fsdecode(bytes(path)): (sha, state) for path, sha, state in rows}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["direct", "signed_url"])
async def test_kill_9_torture(tmp_path: Path, make_emulator: MakeEmulator, mode: str) -> None:
    rng = random.Random(f"{SEED}:{mode}")
    where = f"(seed {SEED}, mode {mode})"
    body_endpoint = "upload" if mode == "direct" else "storage"
    async with torture(tmp_path, make_emulator, grace_s=5, upload_mode=mode) as t:
        emulator, daemon, ledger, expected = t.emulator, t.daemon, t.ledger, t.expected
        kills = windows_hit = 0
        crash_point = "answered" if mode == "direct" else "stored"
        for k in range(KILLS):
            how = k % 4
            if how == 0:  # a random moment
                await daemon.start(may_die=True)
                await asyncio.sleep(rng.uniform(0.3, 2.0))
            elif how in (1, 2):  # a crash window a random kill rarely hits
                point = crash_point if how == 1 else "hashed"
                await daemon.start(may_die=True, SYNCD_FAILPOINTS=f"{point}:{rng.randint(1, 3)}")
                with_deadline = asyncio.get_running_loop().time() + 8
                while daemon.alive and asyncio.get_running_loop().time() < with_deadline:
                    await asyncio.sleep(0.05)
                windows_hit += not daemon.alive
            else:  # mid-body: the emulator holds the body open while we kill
                emulator.add_faults({"endpoint": body_endpoint, "latency_s": 3.0, "count": 1})
                await daemon.start(may_die=True)
                try:
                    await wait_for(
                        lambda: any(not r.done for r in emulator.requests(body_endpoint)),
                        8,
                        what="an upload body in flight",
                    )
                except AssertionError:
                    pass  # nothing due right now: the kill lands elsewhere
            # Throttling bursts too, between runs.
            if k % 3 == 2:
                emulator.add_faults({"endpoint": "*", "throttle_for_s": 1.0})
            if daemon.alive:
                await daemon.kill()
            kills += daemon.proc is not None and daemon.proc.returncode == -signal.SIGKILL
        await t.writing  # every file is written, some while the daemon is down
    assert kills >= 10, f"only {kills} kills landed {where}"
    assert windows_hit >= 3, f"only {windows_hit} crash points fired {where}"
    assert len(expected) == FILES

    duplicates, counted = await converge_and_check(daemon, emulator, ledger, expected, where)
    print(f"torture {where}: {kills} kills ({windows_hit} at crash points), {duplicates} dups")
    if mode == "direct":
        # One finisher at a time: a crash leaves at most one complete body without its answer,
        # and the ledger counts every such upload (it may count one that never landed).
        assert duplicates <= kills, f"{duplicates} duplicates after {kills} kills {where}"
        assert duplicates <= counted <= kills, f"{duplicates} dups, {counted} counted {where}"
    else:
        assert duplicates == 0, f"{duplicates} duplicates in signed-URL mode {where}"


async def converge_and_check(
    daemon: DaemonProcess,
    emulator: EmulatorServer,
    ledger: Path,
    expected: dict[str, str],
    where: str,
) -> tuple[int, int]:
    """Run the daemon once more without faults until every file is done, stop it, check.

    Returns (remote duplicates, possible duplicates the ledger counted).
    """
    # The last run: no more faults; everything must converge.
    emulator.clear_faults()
    emulator.update_settings(error_rate=0.0, reset_rate=0.0)
    await daemon.start()

    def converged() -> bool:
        have = done_paths(ledger)
        return all(have.get(p) == (sha, "done") for p, sha in expected.items())

    try:
        await wait_for(converged, 120, interval_s=0.5, what=f"every file SUCCESS {where}")
    except AssertionError:
        have = done_paths(ledger)
        missing = {p: have.get(p) for p, sha in expected.items() if have.get(p) != (sha, "done")}
        raise AssertionError(
            f"{len(missing)} files not done {where}: {list(missing.items())[:5]}\n{daemon.tail()}"
        ) from None
    assert await daemon.stop() == 0, daemon.tail()

    # Every file's asset holds exactly its bytes.
    assets = {a.asset_id: a for a in emulator.assets()}
    rows = query(ledger, "SELECT sha256, asset_id, remote_status FROM contents")
    by_sha = {sha: (asset, status) for sha, asset, status in rows}
    for path, sha in expected.items():
        asset, status = by_sha[sha]
        assert status == "SUCCESS", f"{path} {where}"
        assert asset in assets and assets[asset].sha256 == sha, f"{path} {where}"
    # No partially written file was ever received: every stored body is a complete file.
    complete = set(expected.values())
    partial = [
        a.asset_id for a in assets.values() if a.sha256 is not None and a.sha256 not in complete
    ]
    assert partial == [], f"partial files received {where}"
    # Remote duplicates: the honest bound.
    copies = collections.Counter(a.sha256 for a in assets.values() if a.sha256 is not None)
    duplicates = sum(n - 1 for n in copies.values())
    counted = query(ledger, "SELECT COALESCE(SUM(possible_duplicates), 0) FROM contents")[0][0]
    assert query(ledger, "PRAGMA integrity_check") == [("ok",)]
    return duplicates, counted


@pytest.mark.timeout(240)
async def test_sigterm_torture_has_no_duplicates_and_clean_summaries(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    rng = random.Random(f"{SEED}:sigterm")
    where = f"(seed {SEED}, SIGTERM)"
    async with torture(tmp_path, make_emulator, grace_s=10) as t:
        emulator, daemon, ledger, expected = t.emulator, t.daemon, t.ledger, t.expected
        stops = 0
        for k in range(10):
            if k % 3 == 1:  # some stops land while bodies are held open at the API
                emulator.add_faults({"endpoint": "upload", "latency_s": 1.0, "count": 2})
            await daemon.start()
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            before = len(daemon.messages())
            assert await daemon.stop() == 0, daemon.tail()
            stops += 1
            summaries = [m for m in daemon.messages()[before:] if m.startswith("syncd stopped")]
            assert len(summaries) == 1 and "(SIGTERM)" in summaries[0], where
            assert "cancelled_in_flight=0" in summaries[0], f"{summaries[0]} {where}"
        await t.writing
    duplicates, counted = await converge_and_check(daemon, emulator, ledger, expected, where)
    print(f"torture {where}: {stops} graceful stops, {duplicates} dups")
    assert duplicates == 0 and counted == 0, f"{duplicates} duplicates {where}"
