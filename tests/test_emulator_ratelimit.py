"""The emulator's rate limiter: per account, per endpoint, decided at arrival.

Against a fake clock (exact decisions) and over real time (invariants read from the log).
"""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import pytest
from conftest import MakeEmulator
from samples import media_bytes
from test_emulator_support import auth, call, check_envelope, metadata, upload

from syncd.emulator import THROTTLE_MSG, FakeClock, uniform_rates
from syncd.emulator.ratelimit import RateLimiter

# --------------------------------------------------------------------------------------------
# The limiter alone, on a fake clock


def test_gcra_allows_one_request_per_interval_and_rejections_cost_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.allow("acct", "upload", 1.0)
    assert not limiter.allow("acct", "upload", 1.0)
    clock.advance(0.999)
    assert not limiter.allow("acct", "upload", 1.0)
    assert limiter.retry_after_s("acct", "upload", 1.0) == pytest.approx(0.001, abs=1e-6)
    clock.advance(0.001)
    # The rejections above did not push the next allowed time back.
    assert limiter.allow("acct", "upload", 1.0)
    clock.advance(10.0)
    # Capacity 1: a long silence does not bank a burst.
    assert limiter.allow("acct", "upload", 1.0)
    assert not limiter.allow("acct", "upload", 1.0)


def test_buckets_are_per_account_and_endpoint() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.allow("a", "upload", 1.0)
    assert limiter.allow("a", "metadata", 1.0)
    assert limiter.allow("b", "upload", 1.0)
    assert not limiter.allow("a", "upload", 1.0)
    assert not limiter.allow("b", "upload", 1.0)
    assert not limiter.allow("a", "metadata", 1.0)


def test_rates_other_than_one_and_zero() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.allow("a", "upload", 4.0)
    clock.advance(0.2)
    assert not limiter.allow("a", "upload", 4.0)
    clock.advance(0.05)
    assert limiter.allow("a", "upload", 4.0)
    assert all(limiter.allow("a", "delete", 0.0) for _ in range(100))
    assert limiter.allow("a", "download", 0.5)
    clock.advance(1.5)
    assert not limiter.allow("a", "download", 0.5)
    clock.advance(0.5)
    assert limiter.allow("a", "download", 0.5)
    limiter.reset()
    assert limiter.allow("a", "download", 0.5)


def test_fixed_window_allows_one_per_aligned_second() -> None:
    clock = FakeClock(start_s=1000.9)
    limiter = RateLimiter(clock)
    assert limiter.allow("a", "upload", 1.0, "fixed_window")
    assert not limiter.allow("a", "upload", 1.0, "fixed_window")
    clock.advance(0.1)  # 1001.0: a new window, only 0.1 s after the last allowed request
    assert limiter.allow("a", "upload", 1.0, "fixed_window")
    clock.advance(0.95)
    assert not limiter.allow("a", "upload", 1.0, "fixed_window")
    clock.advance(0.05)
    assert limiter.allow("a", "upload", 1.0, "fixed_window")


# --------------------------------------------------------------------------------------------
# Over HTTP, on a fake clock


async def test_throttled_requests_get_400_with_the_documented_text(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    emu = await make_emulator(clock=clock, rates=uniform_rates(1.0))
    data = media_bytes("mp4")
    status, body = await upload(http_session, emu, data)
    assert status == 200
    asset_id = check_envelope(body, 200)["asset_id"]
    status, body = await upload(http_session, emu, data)
    assert status == 400
    check_envelope(body, 400, THROTTLE_MSG)
    clock.advance(0.5)
    assert (await upload(http_session, emu, data))[0] == 400
    clock.advance(0.5)
    assert (await upload(http_session, emu, data))[0] == 200
    # Other endpoints have their own buckets.
    assert (await metadata(http_session, emu, asset_id))[0] == 200
    assert (await metadata(http_session, emu, asset_id))[0] == 400
    sign_url = emu.base_url + "/upload/signed-url"
    for expected in (200, 400):
        status, _ = await call(
            http_session,
            "POST",
            sign_url,
            json={"original_filename": "a.mp4"},
            headers=auth(emu.key),
        )
        assert status == expected
    for endpoint_url, method in ((f"{emu.base_url}/{asset_id}/download", "GET"),):
        clock.advance(1.0)  # let the asset finish processing too
        assert (await call(http_session, method, endpoint_url, headers=auth(emu.key)))[0] == 200
        assert (await call(http_session, method, endpoint_url, headers=auth(emu.key)))[0] == 400
    delete_url = f"{emu.base_url}/{asset_id}"
    assert (await call(http_session, "DELETE", delete_url, headers=auth(emu.key)))[0] == 200
    assert (await call(http_session, "DELETE", delete_url, headers=auth(emu.key)))[0] == 400
    # The throttled uploads were decided before their bodies were read: none left an asset.
    uploads = emu.requests("upload")
    assert [e.status for e in uploads] == [200, 400, 400, 200]
    assert [e.body_complete for e in uploads] == [True, None, None, True]
    assert len([a for a in emu.assets() if a.mode == "direct"]) == 1


async def test_all_keys_of_an_account_share_its_quota(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    keys = {
        "sk-mavi-team-a-key-00001": "team",
        "sk-mavi-team-b-key-00002": "team",
        "sk-mavi-solo-key-0000003": "solo",
    }
    emu = await make_emulator(clock=FakeClock(), keys=keys, rates={"upload": 1.0})
    first, second, solo = keys
    data = media_bytes("mp4")
    assert (await upload(http_session, emu, data, key=first))[0] == 200
    assert (await upload(http_session, emu, data, key=second))[0] == 400
    assert (await upload(http_session, emu, data, key=solo))[0] == 200
    # Endpoints at rate 0 are not limited at all.
    for _ in range(5):
        assert (await metadata(http_session, emu, "re_000000000000000001", key=first))[0] == 400
    assert all(e.status == 400 for e in emu.requests("metadata"))  # "Asset not found"


async def test_throttle_status_429_and_rate_changes_at_run_time(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    emu = await make_emulator(clock=clock, rates=uniform_rates(1.0), throttle_status=429)
    data = media_bytes("mp4")
    assert (await upload(http_session, emu, data))[0] == 200
    status, body = await upload(http_session, emu, data)
    assert status == 429
    check_envelope(body, 429, THROTTLE_MSG)
    status, _ = await call(
        http_session, "POST", f"{emu.control_url}/settings", json={"rates": {"upload": 0}}
    )
    assert status == 200
    assert (await upload(http_session, emu, data))[0] == 200
    emu.update_settings(rates={"upload": 0.1})
    clock.advance(9.0)
    assert (await upload(http_session, emu, data))[0] == 429
    clock.advance(1.0)
    assert (await upload(http_session, emu, data))[0] == 200


async def test_fixed_window_algorithm_over_http(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(start_s=1_766_989_317.75)
    emu = await make_emulator(clock=clock, rates={"metadata": 1.0}, rate_algorithm="fixed_window")
    assert (await metadata(http_session, emu, "x"))[1]["msg"] == "Asset not found"
    assert (await metadata(http_session, emu, "x"))[1]["msg"] == THROTTLE_MSG
    clock.advance(0.25)  # next calendar second
    assert (await metadata(http_session, emu, "x"))[1]["msg"] == "Asset not found"


# --------------------------------------------------------------------------------------------
# Over real time


async def test_real_time_allowed_requests_are_spaced_by_the_interval(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    emu = await make_emulator(rates={"metadata": 4.0})
    interval_s = 0.25
    _, body = await upload(http_session, emu, media_bytes("mp4"))
    asset_id = check_envelope(body, 200)["asset_id"]
    end = time.monotonic() + 1.6

    async def hammer() -> None:
        while time.monotonic() < end:
            await metadata(http_session, emu, asset_id)
            await asyncio.sleep(0.01)

    await asyncio.gather(hammer(), hammer(), hammer())
    entries = emu.requests("metadata")
    assert {e.status for e in entries} == {200, 400}
    assert all(e.throttled == (e.status == 400) for e in entries)
    admitted = [e.time_s for e in entries if e.status == 200]
    assert len(admitted) >= 3, "requests kept coming for more than 3 intervals"
    gaps = [b - a for a, b in itertools.pairwise(admitted)]
    # Log times are read just before the limiter's clock: a little slack for that.
    assert min(gaps) >= interval_s - 0.05, gaps
    # Liveness: after a full interval of silence the next request is admitted.
    await asyncio.sleep(interval_s + 0.05)
    assert (await metadata(http_session, emu, asset_id))[0] == 200
