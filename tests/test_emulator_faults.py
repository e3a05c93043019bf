"""Fault injection: scripted through /_emulator/faults, probabilistic through settings."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from conftest import MakeEmulator
from samples import media_bytes
from test_emulator_support import (
    auth,
    call,
    check_envelope,
    file_form,
    metadata,
    upload,
    upload_ok,
    wait_status,
    wait_until,
)

from syncd.emulator import THROTTLE_MSG, EmulatorServer, FakeClock

TRANSPORT_ERRORS = (aiohttp.ClientError, ConnectionError)


def tmp_files(emu: EmulatorServer) -> list[str]:
    assert emu.state.data_dir is not None
    return [p.name for p in (emu.state.data_dir / "tmp").iterdir()]


async def post_faults(
    session: aiohttp.ClientSession, emu: EmulatorServer, spec: object
) -> tuple[int, dict[str, object]]:
    status, body = await call(session, "POST", f"{emu.control_url}/faults", json=spec)
    return status, body


# --------------------------------------------------------------------------------------------
# Scripted faults


async def test_next_n_uploads_answer_a_status(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    status, body = await post_faults(
        http_session, emulator, {"endpoint": "upload", "status": 500, "count": 3}
    )
    assert status == 200
    assert body["rules"] == [
        {
            "endpoint": "upload",
            "remaining": 3,
            "filename": None,
            "kind": "status",
            "status": 500,
            "msg": None,
            "hang": None,
            "latency_s": None,
        }
    ]
    data = media_bytes("mp4")
    for _ in range(3):
        status, body = await upload(http_session, emulator, data)
        assert status == 500
        check_envelope(body, 500, "The network is abnormal, please try again later")
    # Other endpoints were not affected, and the rule is used up.
    assert (await metadata(http_session, emulator, "re_000000000000000001"))[0] == 400
    await upload_ok(http_session, emulator, data)
    assert len(emulator.assets()) == 1
    faulted = [e for e in emulator.requests("upload") if e.fault]
    assert [e.fault for e in faulted] == ["scripted:status=500"] * 3
    assert all(e.body_complete is None for e in faulted)  # answered before the body was read


async def test_status_rules_match_endpoints_file_names_and_messages(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    emulator.add_faults(
        {"endpoint": "metadata", "status": 503, "msg": "maintenance", "count": None},
        {"endpoint": "upload", "filename": "cursed.mp4", "status": 415},
    )
    for _ in range(3):
        status, body = await metadata(http_session, emulator, "anything")
        check_envelope(body, 503, "maintenance")
    assert (await upload(http_session, emulator, media_bytes("mp4"), "fine.mp4"))[0] == 200
    status, body = await upload(http_session, emulator, media_bytes("mp4"), "cursed.mp4")
    check_envelope(body, 415, "Unsupported media type")
    assert (await upload(http_session, emulator, media_bytes("mp4"), "cursed.mp4"))[0] == 200
    # DELETE /_emulator/faults clears the rule that had no count.
    status, body = await call(http_session, "DELETE", f"{emulator.control_url}/faults")
    assert status == 200 and body["rules"] == []
    assert (await metadata(http_session, emulator, "anything"))[0] == 400


async def test_reset_mid_body_never_creates_an_asset(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    await post_faults(http_session, emulator, {"endpoint": "upload", "reset": True})
    with pytest.raises(TRANSPORT_ERRORS):
        await upload(http_session, emulator, media_bytes("mp4", 2_000_000))
    entry = emulator.requests("upload")[-1]
    await wait_until(lambda: entry.done, what="the reset request to finish")
    assert entry.status is None
    assert entry.body_complete is False
    assert entry.fault == "scripted:reset"
    assert 0 < (entry.bytes_received or 0) < 2_000_000
    assert emulator.assets() == []
    await wait_until(lambda: tmp_files(emulator) == [], what="the partial file to be removed")
    # The next upload goes through.
    await upload_ok(http_session, emulator, media_bytes("mp4", 2_000_000))


async def test_reset_on_an_endpoint_without_body(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    emulator.add_faults({"endpoint": "metadata", "reset": True, "count": None})
    # aiohttp retries an idempotent request once on a reset: both attempts are reset here.
    with pytest.raises(TRANSPORT_ERRORS):
        await metadata(http_session, emulator, "x")
    entries = emulator.requests("metadata")
    assert entries and all(e.status is None and e.fault == "scripted:reset" for e in entries)
    emulator.clear_faults()
    assert (await metadata(http_session, emulator, "x"))[0] == 400


async def test_a_client_dropping_mid_body_never_creates_an_asset(
    emulator: EmulatorServer,
) -> None:
    boundary = "b0undary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="cut.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    request = (
        "POST /serve/api/v2/upload HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{emulator.port}\r\n"
        f"Authorization: {emulator.key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Content-Length: 5000000\r\n\r\n"
    ).encode()
    writer.write(request + head + media_bytes("mp4", 1_500_000))
    await writer.drain()
    await wait_until(
        lambda: any((e.bytes_received or 0) > 0 for e in emulator.requests("upload")),
        what="the emulator to start receiving",
    )
    writer.close()
    await writer.wait_closed()
    entry = emulator.requests("upload")[-1]
    await wait_until(lambda: entry.done, what="the emulator to notice the drop")
    assert (entry.status, entry.body_complete) == (None, False)
    assert entry.filename == "cut.mp4"
    assert emulator.assets() == []
    await wait_until(lambda: tmp_files(emulator) == [], what="the partial file to be removed")
    del reader


async def test_a_body_without_its_closing_boundary_is_refused(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cut.mp4"\r\n\r\n'
    ).encode() + media_bytes("mp4", 10_000)
    headers = {
        **auth(emulator.key),
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    status, answer = await call(
        http_session, "POST", emulator.base_url + "/upload", data=body, headers=headers
    )
    assert status == 400
    check_envelope(answer, 400, THROTTLE_MSG)
    assert emulator.assets() == []
    assert emulator.requests("upload")[-1].body_complete is False


async def test_hang_before_store_times_the_client_out_without_an_asset(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    emulator.add_faults({"endpoint": "upload", "hang": True})
    with pytest.raises(asyncio.TimeoutError):
        await call(
            http_session,
            "POST",
            emulator.base_url + "/upload",
            data=_form(),
            headers=auth(emulator.key),
            timeout=aiohttp.ClientTimeout(total=0.5),
        )
    entry = emulator.requests("upload")[-1]
    await wait_until(lambda: entry.done, what="the hung request to notice the client left")
    assert entry.status is None and entry.body_complete is True
    assert entry.fault == "scripted:hang=before_store"
    assert emulator.assets() == []


def _form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", media_bytes("mp4", 50_000), filename="slow.mp4")
    return form


async def test_hang_after_store_creates_an_asset_the_client_never_hears_of(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    emulator.add_faults({"endpoint": "upload", "hang": "after_store"})
    with pytest.raises(asyncio.TimeoutError):
        await call(
            http_session,
            "POST",
            emulator.base_url + "/upload",
            data=_form(),
            headers=auth(emulator.key),
            timeout=aiohttp.ClientTimeout(total=0.5),
        )
    (asset,) = emulator.assets()
    assert asset.filename == "slow.mp4"
    entry = emulator.requests("upload")[-1]
    await wait_until(lambda: entry.done, what="the hung request to end")
    assert entry.asset_id == asset.asset_id and entry.status is None


async def test_a_hung_request_does_not_hold_up_shutdown(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    emu = await make_emulator()
    emu.add_faults({"endpoint": "metadata", "hang": True})
    pending = asyncio.create_task(metadata(http_session, emu, "x"))
    await wait_until(lambda: len(emu.requests("metadata")) == 1, what="the request to arrive")
    started = time.monotonic()
    await emu.close()
    with pytest.raises(TRANSPORT_ERRORS):
        await pending
    # Not a speed assertion: well under the 5 s shutdown timeout means the hang was woken.
    assert time.monotonic() - started < 4.0


async def test_latency_rule_delays_then_answers(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    emulator.add_faults({"endpoint": "metadata", "latency_s": 0.3})
    started = time.monotonic()
    _, body = await metadata(http_session, emulator, "x")
    assert time.monotonic() - started >= 0.3
    check_envelope(body, 400, "Asset not found")
    assert emulator.requests("metadata")[-1].fault == "scripted:latency=0.3s"


async def test_throttle_for_s_window(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    emu = await make_emulator(clock=clock)
    status, _ = await post_faults(http_session, emu, {"endpoint": "upload", "throttle_for_s": 10})
    assert status == 200
    data = media_bytes("mp4")
    for _ in range(3):
        status, body = await upload(http_session, emu, data)
        check_envelope(body, 400, THROTTLE_MSG)
    assert emu.requests("upload")[-1].throttled
    assert (await metadata(http_session, emu, "x"))[1]["msg"] == "Asset not found"
    clock.advance(10.0)
    await upload_ok(http_session, emu, data)
    # Without an endpoint the window covers every endpoint.
    emu.add_faults({"throttle_for_s": 5})
    assert (await metadata(http_session, emu, "x"))[1]["msg"] == THROTTLE_MSG


async def test_credits_run_out_and_recharge(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    status, body = await post_faults(http_session, emulator, {"credits_after": 2})
    assert body["credits_remaining"] == 2
    data = media_bytes("mp4")
    # A refused upload does not use a credit.
    assert (await upload(http_session, emulator, b"", "empty.mp4"))[0] == 400
    await upload_ok(http_session, emulator, data)
    await upload_ok(http_session, emulator, data)
    status, body = await upload(http_session, emulator, data)
    assert status == 402
    check_envelope(body, 402)
    status, body = await call(
        http_session,
        "POST",
        emulator.base_url + "/upload/signed-url",
        json={"original_filename": "a.mp4"},
        headers=auth(emulator.key),
    )
    assert status == 402
    await post_faults(http_session, emulator, {"credits_after": None})
    await upload_ok(http_session, emulator, data)
    assert len(emulator.assets()) == 3


async def test_reject_filenames_and_fail_processing(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    await post_faults(
        http_session, emulator, [{"reject_filenames": ["bad.mp4"]}, {"fail_processing": 1}]
    )
    for _ in range(2):
        status, body = await upload(http_session, emulator, media_bytes("mp4"), "bad.mp4")
        check_envelope(body, 400, THROTTLE_MSG)
    status, body = await call(
        http_session,
        "POST",
        emulator.base_url + "/upload/signed-url",
        json={"original_filename": "bad.mp4"},
        headers=auth(emulator.key),
    )
    assert status == 400
    failed = await upload_ok(http_session, emulator, media_bytes("mp4"), "good.mp4")
    succeeded = await upload_ok(http_session, emulator, media_bytes("mp4"), "good.mp4")
    await wait_status(http_session, emulator, failed, "FAILED")
    await wait_status(http_session, emulator, succeeded, "SUCCESS")


async def test_control_requests_are_validated_as_a_whole(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    bad_specs: list[object] = [
        {"endpoint": "upload", "status": 200},
        {"endpoint": "nowhere", "status": 500},
        {"endpoint": "upload", "status": 500, "reset": True},
        {"endpoint": "upload", "hang": "sometimes"},
        {"endpoint": "upload", "status": 500, "count": 0},
        {"endpoint": "upload", "count": 2},
        {"colour": "red"},
        {"credits_after": -1},
        {"reject_filenames": "bad.mp4"},
        {"throttle_for_s": "long"},
        [{"fail_processing": 1}, {"fail_processing": -1}],
        "not an object",
    ]
    for spec in bad_specs:
        status, body = await post_faults(http_session, emulator, spec)
        assert status == 400, spec
        assert "error" in body
    status, body = await call(http_session, "GET", f"{emulator.control_url}/faults")
    assert body == {
        "rules": [],
        "throttle_until_s": {},
        "credits_remaining": None,
        "reject_filenames": [],
        "fail_processing": 0,
    }
    status, _ = await call(http_session, "POST", f"{emulator.control_url}/faults", data=b"{nope")
    assert status == 400


# --------------------------------------------------------------------------------------------
# Probabilistic faults


async def _statuses(
    make_emulator: MakeEmulator, session: aiohttp.ClientSession, seed: int
) -> list[int]:
    emu = await make_emulator(seed=seed, error_rate=0.5, error_status=503)
    out = []
    for _ in range(30):
        status, _ = await metadata(session, emu, "x")
        out.append(status)
    await emu.close()
    return out


async def test_random_errors_replay_with_the_same_seed(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    first = await _statuses(make_emulator, http_session, seed=7)
    again = await _statuses(make_emulator, http_session, seed=7)
    other = await _statuses(make_emulator, http_session, seed=8)
    assert first == again
    assert set(first) == {400, 503}
    assert first != other


async def test_random_resets_and_hangs(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    emu = await make_emulator(reset_rate=1.0)
    with pytest.raises(TRANSPORT_ERRORS):
        await upload(http_session, emu, media_bytes("mp4", 500_000))
    assert emu.assets() == []
    assert emu.requests("upload")[-1].fault == "random:reset"
    emu.update_settings(reset_rate=0.0, hang_rate=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await call(
            http_session,
            "GET",
            f"{emu.base_url}/x/metadata",
            headers=auth(emu.key),
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    emu.update_settings(hang_rate=0.0, latency_rate=1.0, latency_s=0.2)
    started = time.monotonic()
    await upload_ok(http_session, emu, media_bytes("mp4"))
    assert time.monotonic() - started >= 0.2
    assert emu.requests("upload")[-1].fault == "random:latency=0.2s"


async def test_storage_faults_leave_the_signed_url_usable(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    emulator.update_settings(max_video_bytes=1_000_000)
    _, body = await call(
        http_session,
        "POST",
        emulator.base_url + "/upload/signed-url",
        json={"original_filename": "big.mp4"},
        headers=auth(emulator.key),
    )
    data = check_envelope(body, 200)
    url, asset_id = str(data["signed_url"]), str(data["asset_id"])
    emulator.add_faults({"endpoint": "storage", "reset": True})
    payload = media_bytes("mp4", 800_000)
    with pytest.raises(TRANSPORT_ERRORS):
        async with http_session.post(url, data=file_form(payload, "big.mp4")) as resp:
            await resp.read()
    assert emulator.requests("storage")[-1].body_complete is False
    async with http_session.post(url, data=file_form(media_bytes("mp4", 1_000_001), "b")) as resp:
        assert resp.status == 413
    assert emulator.state.assets[asset_id].sha256 is None
    await wait_until(lambda: tmp_files(emulator) == [], what="partial files to be removed")
    async with http_session.post(url, data=file_form(payload, "big.mp4")) as resp:
        assert resp.status == 204
    await wait_status(http_session, emulator, asset_id, "SUCCESS")
