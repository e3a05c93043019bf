"""Upload end to end against the emulator over real HTTP: pacing, backoff, faults, signed URLs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from conftest import MakeEmulator
from pipeline_support import (
    config_data,
    make_config,
    received,
    run_measured,
    running,
    sha256_of,
    state_of,
    subprocess_env,
    syncd_cmd,
    wait_done,
    wait_for,
)
from samples import HEADERS, write_media

from syncd.daemon import Daemon
from syncd.emulator import EmulatorServer, uniform_rates
from syncd.fingerprint import Fingerprint
from syncd.ledger.sqlite import Ledger
from syncd.metrics import Metrics
from syncd.upload.client import MaviClient, UploadResult
from syncd.upload.dispatcher import UploaderState
from syncd.upload.outcomes import Outcomes
from syncd.upload.pacer import Pacer
from syncd.upload.poller import Poller


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path


def drop(root: Path, n: int, *, size: int = 4096, prefix: str = "f", seed: int = 0) -> list[Path]:
    paths = []
    for i in range(n):
        p = root / f"{prefix}{i:03d}.mp4"
        write_media(p, size=size, seed=seed * 10_000 + i)
        paths.append(p)
    return paths


async def all_done(daemon: Daemon, n: int) -> bool:
    return (await daemon.ledger.counts())["contents"]["done"] == n


def max_starts_in_window(times: list[float], window_s: float = 1.0) -> int:
    """The most request starts any window of ``window_s`` (half-open) contains."""
    times = sorted(times)
    best = j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.timeout(240)
async def test_fifty_files_through_four_workers_under_the_real_rate_limit(
    tmp_path: Path, root: Path, make_emulator: MakeEmulator
) -> None:
    emulator = await make_emulator(rates=uniform_rates(1.0))
    cfg = make_config(
        tmp_path,
        emulator,
        [root],
        upload={"workers": 4},
        rate_limits={"upload_per_s": 1, "metadata_per_s": 1, "signed_url_per_s": 1},
        poll={"initial_s": 2, "max_s": 8},
    )
    paths = drop(root, 50, size=20_000)
    async with running(cfg, emulator.key) as d:
        await wait_for(lambda: all_done(d, 50), 200, interval_s=0.5, what="50 done")
        got = received(emulator)
        for p in paths:
            content_state, asset, _ = await state_of(d, p)
            assert content_state == "done" and asset is not None
            assert got[asset] == sha256_of(p)  # byte-identical, under the right asset id
    uploads = emulator.requests("upload")
    assert len({a.sha256 for a in emulator.assets()}) == 50
    # The pacer spaces request starts 1.04 s apart; the emulator stamps arrivals, which
    # scheduling jitter on a loaded 2-core machine can shift by tens of milliseconds. So: no
    # two starts within 0.9 s, and the emulator's own limiter refused at most a few.
    starts = [r.time_s for r in uploads]
    assert max_starts_in_window(starts, 0.9) <= 1
    assert max_starts_in_window([r.time_s for r in emulator.requests("metadata")], 0.9) <= 1
    throttled = [r for r in emulator.requests() if r.status in (400, 429)]
    assert len(throttled) <= 3


async def test_a_400_storm_slows_everyone_and_recovers(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(
        tmp_path,
        emulator,
        [root],
        rate_limits={"cooldown_initial_s": 0.5, "cooldown_max_s": 4},
        upload={"backoff_initial_s": 0.5, "backoff_max_s": 4},
    )
    emulator.add_faults({"endpoint": "upload", "throttle_for_s": 5})
    paths = drop(root, 10)
    started = time.monotonic()
    async with running(cfg, emulator.key) as d:
        await wait_for(lambda: all_done(d, 10), 60, what="all done after the storm")
        assert time.monotonic() - started >= 4.5  # nothing got through during the storm
        assert d.uploader.stats.throttled >= 1 and d.uploader.stats.rejected == 0
    storm = [r for r in emulator.requests("upload") if r.status == 400]
    # The shared cool-down (0.5 s doubling to 4 s) leaves at most four rounds in a 5 s storm,
    # each of at most one request per worker (rates are off in this test; at the real 1/s the
    # pacer spaces them too): a handful, not 10 files retrying on their own clocks.
    workers = cfg.upload.workers
    assert 1 <= len(storm) <= 4 * workers
    assert {a.sha256 for a in emulator.assets()} == {sha256_of(p) for p in paths}


async def test_scripted_500s_and_resets_mid_body_are_retried_to_success(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    emulator.add_faults(
        {"endpoint": "upload", "status": 500, "count": 3},
        {"endpoint": "upload", "status": 503, "count": 1, "msg": "The network is abnormal"},
        {"endpoint": "upload", "reset": True, "count": 2},
        {"endpoint": "metadata", "status": 502, "count": 2},
    )
    cfg = make_config(tmp_path, emulator, [root])
    paths = drop(root, 4, size=300_000)
    async with running(cfg, emulator.key) as d:
        await wait_for(lambda: all_done(d, 4), 60, what="all done")
        outcomes = []
        for p in paths:
            outcomes += [a.outcome for a in await d.ledger.attempts_of(sha256_of(p))]
    assert outcomes.count("retryable") == 6 and outcomes.count("ok") == 4
    # A body cut mid-way never became an asset; each content exactly one asset.
    assert len(emulator.assets()) == 4
    assert {a.sha256 for a in emulator.assets()} == {sha256_of(p) for p in paths}


async def test_a_file_always_rejected_ends_rejected_without_stalling_others(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    emulator.add_faults({"reject_filenames": ["bad.mp4"]})
    cfg = make_config(
        tmp_path, emulator, [root], upload={"reject_after": 3, "backoff_initial_s": 0.2}
    )
    async with running(cfg, emulator.key) as d:
        write_media(root / "bad.mp4", size=5000, seed=99)
        # Other files keep arriving and succeeding meanwhile: that is what tells a rejection
        # from an account-wide throttle.
        good: list[Path] = []
        for i in range(40):
            good += drop(root, 1, prefix=f"good{i}-", seed=i)
            state = (await state_of(d, root / "bad.mp4"))[0]
            if state == "rejected":
                break
            await asyncio.sleep(0.3)
        await wait_for(lambda: all_done(d, len(good)), 30, what="good files done")
        bad = await d.ledger.get_content(sha256_of(root / "bad.mp4"))
        assert bad is not None and bad.state == "rejected"
        assert bad.last_error is not None and "400" in bad.last_error
        tries = len([r for r in emulator.requests("upload") if r.filename == "bad.mp4"])
        await asyncio.sleep(1.0)
    bad_requests = [r for r in emulator.requests("upload") if r.filename == "bad.mp4"]
    # reject_after counted 400s; a 400 with no success since the previous try is not counted.
    assert 3 <= len(bad_requests) <= 6
    assert len(bad_requests) == tries  # never retried once rejected


async def test_401_stops_all_uploads_and_marks_the_daemon_unhealthy(
    tmp_path: Path, root: Path, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(tmp_path, emulator, [root], upload={"pause_initial_s": 30})
    drop(root, 6)
    async with running(cfg, "sk-mavi-wrong-key") as d:
        await wait_for(lambda: d.uploader.state.pause is not None, 20, what="paused")
        await asyncio.sleep(1.5)
        health = d.health()
        assert not health.healthy and "refused the key" in health.reason
        # Only the requests already in flight when the first 401 came back were sent.
        assert len(emulator.requests("upload")) <= cfg.upload.workers
        assert (await d.ledger.counts())["contents"]["pending"] == 6

        async def beat_unhealthy() -> bool:
            beat = await d.ledger.get_kv("daemon")
            return beat is not None and beat["healthy"] is False

        await wait_for(beat_unhealthy, 15, what="heartbeat says unhealthy")
    # One clear line, not one per worker that met the 401.
    assert len([r for r in caplog.records if "uploads paused" in r.getMessage()]) == 1


async def test_402_pauses_then_resumes_by_itself_when_credits_return(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    emulator.add_faults({"credits_after": 2})
    cfg = make_config(tmp_path, emulator, [root], upload={"pause_initial_s": 1, "pause_max_s": 1})
    drop(root, 6)
    async with running(cfg, emulator.key) as d:
        await wait_for(lambda: d.uploader.state.pause is not None, 20, what="paused on 402")
        assert d.health().healthy  # out of credits is not a broken daemon
        # Uploads that were already on the wire when the first 402 came back answer 402 too;
        # count from when at most the probe is left in flight.
        await wait_for(lambda: len(d.uploader.state.in_flight) <= 1, 20, what="in-flight ended")
        n402 = len([r for r in emulator.requests("upload") if r.status == 402])
        await asyncio.sleep(2.5)
        # Paused: one probe per pause, not a storm.
        later = len([r for r in emulator.requests("upload") if r.status == 402])
        assert later - n402 <= 4
        emulator.add_faults({"credits_after": None})
        await wait_for(lambda: all_done(d, 6), 30, what="resumed after recharge")
        assert d.uploader.state.pause is None


async def test_failed_processing_is_uploaded_again(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    emulator.add_faults({"fail_processing": 1})
    cfg = make_config(tmp_path, emulator, [root])
    async with running(cfg, emulator.key) as d:
        write_media(root / "x.mp4", size=8000)
        asset = await wait_done(d, root / "x.mp4")
        content = await d.ledger.get_content(sha256_of(root / "x.mp4"))
        assert content is not None and content.remote_failures == 1
    assets = emulator.assets()
    assert len(assets) == 2
    first = next(a for a in assets if a.asset_id != asset)
    assert first.outcome == "FAILED"
    # The failed asset id is not lost: it is kept as superseded.
    led = await Ledger.open(cfg.ledger.path, readonly=True)
    try:
        assert [c.sha256 for c in await led.find_contents(first.asset_id)] == [content.sha256]
    finally:
        await led.close()


async def test_file_modified_during_upload_is_not_recorded_as_that_contents_asset(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    # The emulator waits before reading the body, so the upload is still streaming when the
    # file changes under it.
    emulator.add_faults({"endpoint": "upload", "latency_s": 1.5, "count": 1})
    cfg = make_config(tmp_path, emulator, [root], settle={"quiet_s": 0.3})
    path = root / "growing.mp4"
    old_sha = write_media(path, size=6_000_000, seed=1)
    async with running(cfg, emulator.key) as d:
        await wait_for(lambda: len(emulator.requests("upload")) == 1, 20, what="upload started")
        with open(path, "r+b") as f:
            f.seek(3_000_000)
            f.write(b"\0" * 4096)  # same size, different bytes, new mtime
        new_sha = sha256_of(path)
        asset = await wait_done(d, path, 40)
        old = await d.ledger.get_content(old_sha)
        assert old is not None and old.asset_id is None and old.state != "done"
    assert received(emulator)[asset] == new_sha
    # Whatever the first request delivered, its asset is not the new content's and is kept.
    first = emulator.requests("upload")[0]
    if first.asset_id is not None:
        led = await Ledger.open(cfg.ledger.path, readonly=True)
        try:
            found = await led.find_contents(first.asset_id)
            assert [c.sha256 for c in found] == [old_sha]
        finally:
            await led.close()


async def test_signed_url_mode_end_to_end(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root], api={"upload_mode": "signed_url"})
    paths = drop(root, 3, size=50_000)
    async with running(cfg, emulator.key) as d:
        await wait_for(lambda: all_done(d, 3), 30, what="signed-url uploads done")
        for p in paths:
            content = await d.ledger.get_content(sha256_of(p))
            assert content is not None and content.upload_mode == "signed_url"
    assert len(emulator.requests("upload")) == 0
    assert len(emulator.requests("signed_url")) == 3 and len(emulator.requests("storage")) == 3
    assert sorted(received(emulator).values()) == sorted(sha256_of(p) for p in paths)
    for r in emulator.requests("storage"):
        assert r.key is None  # the Authorization header never goes to the storage host


async def test_signed_url_allocation_is_resumed_after_a_restart_and_expiry_reallocates(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(tmp_path, emulator, [root], api={"upload_mode": "signed_url"})
    fresh, stale = root / "fresh.mp4", root / "stale.mp4"
    write_media(fresh, size=9000, seed=1)
    write_media(stale, size=9000, seed=2)
    # A previous run allocated both and died before sending any byte; one URL has expired.
    led = await Ledger.open(cfg.ledger.path)
    async with MaviClient(emulator.base_url, emulator.key) as client:
        for path, ttl in ((fresh, 3600), (stale, -1)):
            fp = Fingerprint.stat(str(path))
            sha = sha256_of(path)
            await led.record_content(str(path), str(root), fp, sha, "mp4")
            attempt = await led.begin_attempt(sha, str(path), "signed_url")
            signed = await client.allocate_signed_url(path.name)
            await led.allocate(sha, signed.asset_id, signed.url, time.time() + ttl, attempt)
    await led.close()
    allocated = {a.asset_id for a in emulator.assets()}
    async with running(cfg, emulator.key) as d:
        await wait_for(lambda: all_done(d, 2), 30, what="both done")
        fresh_asset = (await state_of(d, fresh))[1]
        stale_asset = (await state_of(d, stale))[1]
    assert fresh_asset in allocated  # the unexpired allocation was reused: no new asset
    assert stale_asset not in allocated  # the expired one was replaced
    assert len(emulator.requests("signed_url")) == 3
    assert received(emulator)[fresh_asset] == sha256_of(fresh)


@pytest.mark.timeout(180)
async def test_a_1_gib_sparse_file_uploads_with_flat_client_memory(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    big = root / "huge.mp4"
    with open(big, "wb") as f:
        f.write(HEADERS["mp4"])
        f.truncate(1 << 30)  # sparse: 1 GiB of zeros after the header, no disk used
    data = config_data(
        tmp_path, emulator, [root], api={"upload_mode": "direct", "read_timeout_s": 120}
    )
    data["log"] = {"level": "info", "format": "json"}
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    code, peak_kib = await asyncio.to_thread(
        run_measured,
        syncd_cmd("sync", "--once", "-c", str(cfg_file)),
        subprocess_env(MAVI_API_KEY=emulator.key),
        tmp_path / "stderr.log",
        170,
    )
    assert code == 0, (tmp_path / "stderr.log").read_text()[-2000:]
    # The interpreter plus libraries is ~60 MiB; a buffered 1 GiB would be > 1 GiB. 150 MiB
    # leaves room for noise, not for holding the file.
    print(f"1 GiB upload: daemon peak RSS {peak_kib} KiB")
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB"
    (asset,) = emulator.assets()
    assert asset.size == 1 << 30 and asset.sha256 == sha256_of(big)
    # Not on a terminal, `sync --once` prints plain progress lines (every 10 s, first at once).
    progress = [
        line
        for line in (tmp_path / "stderr.log").read_text().splitlines()
        if line.startswith("uploaded ")
    ]
    assert progress and " left, ETA " in progress[0]
    assert os.path.getsize(big) == 1 << 30


async def test_a_cool_down_survives_a_restart(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    cfg = make_config(
        tmp_path, emulator, [root], rate_limits={"cooldown_initial_s": 5, "cooldown_max_s": 20}
    )
    emulator.add_faults({"endpoint": "upload", "throttle_for_s": 60})
    drop(root, 2)
    async with running(cfg, emulator.key) as d:
        await wait_for(lambda: d.pacer.cooldown_remaining_s("upload") > 0, 20, what="cool-down")
    # A restart during the storm does not hammer the API: the cool-down is still in force.
    async with running(cfg, emulator.key) as d:
        assert d.pacer.cooldown_remaining_s("upload") > 1.0


class _NoResettle:
    settle_delay_s = 0.0

    async def resettle(self, path: str) -> None:
        self.path = path


@pytest.mark.parametrize("same_bytes", [True, False])
async def test_the_finish_window_ends_when_the_outcome_is_committed_before_the_log_line(
    tmp_path: Path,
    root: Path,
    emulator: EmulatorServer,
    caplog: pytest.LogCaptureFixture,
    same_bytes: bool,
) -> None:
    # The uploader's one-finisher window must last until the answer is committed, and no
    # longer: ``recorded`` (where the uploader ends it) runs once the ledger holds the
    # outcome, before the log line and the metrics that follow.
    path = root / "a.mp4"
    sha = write_media(path, size=5000)
    fp = Fingerprint.stat(str(path))
    db = tmp_path / "ledger.db"
    ledger = await Ledger.open(str(db))
    try:
        await ledger.record_content(str(path), str(root), fp, sha, "mp4")
        content = await ledger.get_content(sha)
        assert content is not None
        attempt = await ledger.begin_attempt(sha, str(path), "direct")
        await ledger.mark_finishing(attempt)
        seen: list[tuple[str, int]] = []

        def recorded() -> None:
            with contextlib.closing(sqlite3.connect(db)) as other:
                (state,) = other.execute(
                    "SELECT state FROM contents WHERE sha256 = ?", (sha,)
                ).fetchone()
            logged = [r for r in caplog.records if r.getMessage().startswith("uploaded")]
            seen.append((state, len(logged)))

        outcomes = Outcomes(
            make_config(tmp_path, emulator, [root]),
            ledger,
            Pacer({"upload": 100.0}),
            Metrics(),
            UploaderState(),
            resettle=_NoResettle(),
            on_uploaded=lambda: None,
            rng=random.Random(0),
            clock=time.time,
        )
        sent = sha if same_bytes else "0" * 64
        with caplog.at_level(logging.INFO):
            await outcomes.uploaded(
                content,
                attempt,
                str(path),
                fp,
                UploadResult("re_1", sent, 5000, 200),
                0.01,
                "upload",
                recorded=recorded,
            )
        assert seen == [("uploaded" if same_bytes else "pending", 0)]
        if same_bytes:
            assert any(r.getMessage().startswith("uploaded") for r in caplog.records)
    finally:
        await ledger.close()


async def test_a_batch_of_status_polls_records_every_answer_and_requeues_the_unknown(
    tmp_path: Path, root: Path, emulator: EmulatorServer
) -> None:
    # The poller commits a batch's answers together: each still lands on its own content,
    # and an asset the API does not know sends its content back to the upload queue.
    cfg = make_config(tmp_path, emulator, [root])
    ledger = await Ledger.open(str(tmp_path / "ledger.db"))
    requeued: list[int] = []
    try:
        async with MaviClient(emulator.base_url, emulator.key) as client:
            shas = []
            for i, path in enumerate(drop(root, 4, size=3000)):
                sha = sha256_of(path)
                shas.append(sha)
                await ledger.record_content(
                    str(path), str(root), Fingerprint.stat(str(path)), sha, "mp4"
                )
                attempt = await ledger.begin_attempt(sha, str(path), "direct")
                if i < 3:
                    result = await client.upload(str(path), filename=path.name)
                    assert result.asset_id is not None
                    asset_id = result.asset_id
                else:
                    asset_id = "re_123456789012345678"  # never allocated by this emulator
                await ledger.finish_upload(
                    sha, attempt, asset_id, bytes_sent=3000, http_status=200, next_poll_at=0.0
                )
            poller = Poller(
                cfg,
                ledger,
                client,
                Pacer({"metadata": 100.0}),
                Metrics(),
                on_requeued=lambda: requeued.append(1),
            )
            due = await ledger.due_polls(16)
            assert len(due) == 4
            await poller.poll_batch(due)
        after = [await ledger.get_content(sha) for sha in shas]
        for content in after[:3]:
            assert content is not None
            assert content.state in ("uploaded", "done") and content.remote_status is not None
            assert content.polls == 1 and content.next_poll_at != 0.0
        assert after[3] is not None and after[3].state == "pending"
        assert requeued == [1] and poller.remote_failed == 1
    finally:
        await ledger.close()
