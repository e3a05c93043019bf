"""Contract tests: every MAVI v2 endpoint of the emulator and its error paths, over real HTTP."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
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
)

from syncd.emulator import (
    API_BASE_PATH,
    DEMO_KEY,
    STATE_KEY,
    THROTTLE_MSG,
    EmulatorServer,
    EmulatorSettings,
    FakeClock,
    create_app,
)

ASSET_ID = re.compile(r"^re_\d{18}$")
UNAUTHORIZED = {"code": 401, "msg": "Unauthorized", "data": None, "success": False, "failed": True}


# --------------------------------------------------------------------------------------------
# Authentication


async def test_every_endpoint_wants_the_raw_key(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    asset_id = await upload_ok(http_session, emulator, media_bytes("mp4"))
    base = emulator.base_url
    requests = [
        ("POST", f"{base}/upload", {"data": file_form(media_bytes("mp4"), "a.mp4")}),
        ("POST", f"{base}/upload/signed-url", {"json": {"original_filename": "a.mp4"}}),
        ("GET", f"{base}/{asset_id}/metadata", {}),
        ("GET", f"{base}/{asset_id}/download", {}),
        ("DELETE", f"{base}/{asset_id}", {}),
        ("DELETE", f"{base}/asset/{asset_id}", {}),
    ]
    for headers in ({}, {"Authorization": f"Bearer {DEMO_KEY}"}, {"Authorization": "sk-wrong"}):
        for method, url, kwargs in requests:
            if "data" in kwargs:
                kwargs = {"data": file_form(media_bytes("mp4"), "a.mp4")}
            status, body = await call(http_session, method, url, headers=headers, **kwargs)
            assert (status, body) == (401, UNAUTHORIZED), (method, url, headers)
    # Nothing was created or deleted by the refused requests.
    assert [a.asset_id for a in emulator.assets()] == [asset_id]
    logged = [e for e in emulator.requests() if e.status == 401]
    assert len(logged) == 18
    assert all(e.account is None for e in logged)


async def test_keys_of_one_account_see_its_assets_others_do_not(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    keys = {"sk-mavi-alice-one-000000": "alice", "sk-mavi-alice-two-000000": "alice"}
    keys["sk-mavi-bob-00000000000000"] = "bob"
    emu = await make_emulator(keys=keys)
    alice1, alice2, bob = list(keys)
    status, body = await upload(http_session, emu, media_bytes("mp4"), key=alice1)
    asset_id = check_envelope(body, 200)["asset_id"]
    assert (await metadata(http_session, emu, asset_id, key=alice2))[0] == 200
    status, body = await metadata(http_session, emu, asset_id, key=bob)
    assert status == 400
    check_envelope(body, 400, "Asset not found")
    status, body = await call(
        http_session, "DELETE", f"{emu.base_url}/{asset_id}", headers=auth(bob)
    )
    check_envelope(body, 400, "Asset not found")
    assert asset_id in emu.state.assets

    emu.update_settings(share_assets_across_accounts=True)
    assert (await metadata(http_session, emu, asset_id, key=bob))[0] == 200


# --------------------------------------------------------------------------------------------
# POST /upload


async def test_upload_returns_a_new_asset_id_and_stores_the_bytes(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    data = media_bytes("mp4", 100_000)
    status, body = await upload(http_session, emulator, data, "holiday clip.MP4")
    assert status == 200
    assert body["msg"] == "success"
    asset_id = check_envelope(body, 200)["asset_id"]
    assert ASSET_ID.match(asset_id), asset_id
    assert body["data"] == {"asset_id": asset_id}

    record = emulator.state.assets[asset_id]
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.size == len(data)
    assert (record.original_filename, record.extension) == ("holiday clip", "mp4")
    blob = emulator.state.blob_path(record)
    assert blob is not None
    assert blob.parent.name == record.sha256[:2] and blob.name == record.sha256
    assert blob.read_bytes() == data
    entry = emulator.requests("upload")[-1]
    assert (entry.status, entry.filename, entry.body_complete) == (200, "holiday clip.MP4", True)
    assert entry.asset_id == asset_id and entry.bytes_received == len(data)


async def test_same_bytes_twice_get_two_assets_and_one_blob(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    data = media_bytes("png", 5000)
    first = await upload_ok(http_session, emulator, data, "a.png")
    second = await upload_ok(http_session, emulator, data, "a.png")
    assert first != second
    assert first < second  # snowflake-like: later ids sort later
    assert emulator.state.data_dir is not None
    blobs = [p for p in (emulator.state.data_dir / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1


async def test_a_path_in_the_part_filename_is_dropped(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    asset_id = await upload_ok(http_session, emulator, media_bytes("jpg"), "C:\\pics\\cat.jpeg")
    record = emulator.state.assets[asset_id]
    assert (record.original_filename, record.extension) == ("cat", "jpeg")


async def test_upload_validation_failures_get_the_ambiguous_400(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    url = emulator.base_url + "/upload"
    headers = auth(emulator.key)
    other_field = file_form(media_bytes("mp4"), "clip.mp4", field="video")
    no_filename = file_form(media_bytes("mp4"), None)
    cases = {
        "no file part": {"data": other_field},
        "not multipart": {"json": {"file": "clip.mp4"}},
        "no body": {},
        "empty file": {"data": file_form(b"", "clip.mp4")},
        "unsupported format": {"data": file_form(b"hello", "notes.txt")},
        "no extension": {"data": file_form(media_bytes("mp4"), "clip")},
        "no filename": {"data": no_filename},
    }
    for name, kwargs in cases.items():
        status, body = await call(http_session, "POST", url, headers=headers, **kwargs)
        assert status == 400, name
        check_envelope(body, 400, THROTTLE_MSG)
    assert emulator.assets() == []
    assert emulator.state.data_dir is not None
    assert list((emulator.state.data_dir / "tmp").iterdir()) == []


async def test_any_format_lets_unlisted_extensions_through(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    emu = await make_emulator(check_formats=False)
    asset_id = await upload_ok(http_session, emu, b"just text", "notes.txt")
    resource = await wait_status(http_session, emu, asset_id, "SUCCESS")
    assert (resource["original_filename"], resource["extension"]) == ("notes", "txt")
    # An empty file is still refused: there is nothing to store.
    _, body = await upload(http_session, emu, b"", "empty.txt")
    check_envelope(body, 400, THROTTLE_MSG)


async def test_size_limits_per_media_kind(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    emu = await make_emulator(max_image_bytes=1000, max_video_bytes=600_000)
    assert (await upload(http_session, emu, media_bytes("png", 1000), "ok.png"))[0] == 200
    status, body = await upload(http_session, emu, media_bytes("png", 1001), "big.png")
    check_envelope(body, 400, THROTTLE_MSG)
    # Audio has no limit; video's is checked while streaming, past the first chunks.
    assert (await upload(http_session, emu, media_bytes("mp3", 700_000), "ok.mp3"))[0] == 200
    status, body = await upload(http_session, emu, media_bytes("mp4", 700_000), "big.mp4")
    check_envelope(body, 400, THROTTLE_MSG)
    emu.update_settings(too_large_status=413)
    status, body = await upload(http_session, emu, media_bytes("png", 5000), "big.png")
    assert status == 413
    check_envelope(body, 413, "File too large")
    assert sorted(a.filename for a in emu.assets()) == ["ok.mp3", "ok.png"]
    assert emu.state.data_dir is not None
    assert list((emu.state.data_dir / "tmp").iterdir()) == []


# --------------------------------------------------------------------------------------------
# GET /{asset_id}/metadata


async def test_metadata_walks_waiting_uploading_success_with_string_numbers(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    emu = await make_emulator(clock=clock, waiting_s=10.0, uploading_s=20.0)
    data = media_bytes("mov", 12345)
    asset_id = await upload_ok(http_session, emu, data, "clip.mov")
    created_ms = str(int(clock() * 1000))

    def expect(status: str, modified_ms: str) -> dict[str, object]:
        return {
            "extension": "mov",
            "asset_id": asset_id,
            "original_filename": "clip",
            "file_size": "12345",
            "upload_status": status,
            "create_time": created_ms,
            "modify_time": modified_ms,
        }

    status, body = await metadata(http_session, emu, asset_id)
    assert status == 200
    data_out = check_envelope(body, 200, "success")
    assert data_out == {"total": 1, "resource": [expect("WAITING", created_ms)]}
    clock.advance(9.999)
    assert (await metadata(http_session, emu, asset_id))[1]["data"]["resource"][0] == expect(
        "WAITING", created_ms
    )
    clock.advance(0.001)
    uploading_ms = str(int(created_ms) + 10_000)
    assert (await metadata(http_session, emu, asset_id))[1]["data"]["resource"][0] == expect(
        "UPLOADING", uploading_ms
    )
    clock.advance(20.0)
    done_ms = str(int(created_ms) + 30_000)
    assert (await metadata(http_session, emu, asset_id))[1]["data"]["resource"][0] == expect(
        "SUCCESS", done_ms
    )
    assert len(created_ms) == 13  # epoch milliseconds


async def test_fail_fraction_one_ends_every_asset_failed(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    emu = await make_emulator(fail_fraction=1.0)
    asset_id = await upload_ok(http_session, emu, media_bytes("mp4"))
    await wait_status(http_session, emu, asset_id, "FAILED")
    # Processing walks through the same states first.
    assert emu.state.assets[asset_id].status_at(emu.state.assets[asset_id].create_time_s)[0] == (
        "WAITING"
    )


async def test_metadata_of_unknown_ids_is_asset_not_found(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    for asset_id in ("re_000000000000000001", "nonsense", "upload"):
        status, body = await metadata(http_session, emulator, asset_id)
        assert status == 400
        check_envelope(body, 400, "Asset not found")


async def test_forced_status_through_the_control_endpoint(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    asset_id = await upload_ok(http_session, emulator, media_bytes("mp4"))
    url = f"{emulator.control_url}/assets/{asset_id}/status"
    status, body = await call(http_session, "POST", url, json={"upload_status": "FAILED"})
    assert status == 200 and body["upload_status"] == "FAILED"
    await wait_status(http_session, emulator, asset_id, "FAILED")
    status, body = await call(http_session, "POST", url, json={"upload_status": None})
    assert status == 200
    await wait_status(http_session, emulator, asset_id, "SUCCESS")
    status, body = await call(http_session, "POST", url, json={"upload_status": "DONE"})
    assert status == 400
    url = f"{emulator.control_url}/assets/re_000000000000000001/status"
    assert (await call(http_session, "POST", url, json={"upload_status": "FAILED"}))[0] == 404


# --------------------------------------------------------------------------------------------
# POST /upload/signed-url and the signed URL target


async def signed_url(
    session: aiohttp.ClientSession, emu: EmulatorServer, filename: str = "big.mp4"
) -> dict[str, object]:
    status, body = await call(
        session,
        "POST",
        emu.base_url + "/upload/signed-url",
        json={"original_filename": filename},
        headers=auth(emu.key),
    )
    assert status == 200, body
    data: dict[str, object] = check_envelope(body, 200, "success")
    return data


async def test_signed_url_flow_from_allocation_to_success(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    emu = await make_emulator(clock=clock, waiting_s=1.0, uploading_s=1.0)
    data = await signed_url(http_session, emu, "movie.mkv")
    assert set(data) == {"asset_id", "signed_url", "expires_in"}
    asset_id = str(data["asset_id"])
    assert ASSET_ID.match(asset_id)
    assert data["expires_in"] == 93600
    url = str(data["signed_url"])
    assert url.startswith(f"{emu.root_url}/_storage/upload/{asset_id}?")

    # Without its bytes the asset waits, however long it takes (short of the expiry).
    clock.advance(90_000)
    resource = (await metadata(http_session, emu, asset_id))[1]["data"]["resource"][0]
    assert resource["upload_status"] == "WAITING"
    assert resource["file_size"] == "0"

    payload = media_bytes("mkv", 300_000)
    async with http_session.post(url, data=file_form(payload, "whatever.bin")) as resp:
        assert 200 <= resp.status < 300
    record = emu.state.assets[asset_id]
    assert record.sha256 == hashlib.sha256(payload).hexdigest()
    assert record.size == len(payload)
    clock.advance(2.0)
    resource = (await metadata(http_session, emu, asset_id))[1]["data"]["resource"][0]
    assert resource["upload_status"] == "SUCCESS"
    assert (resource["original_filename"], resource["extension"]) == ("movie", "mkv")
    assert resource["file_size"] == str(len(payload))
    storage = emu.requests("storage")[-1]
    assert storage.body_complete is True and storage.key is None and storage.account is None


async def test_signed_url_name_is_taken_as_written_not_percent_decoded(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    # A JSON string is not percent-encoded (a multipart file name may be): "%2F" is part of
    # the name, not a folder separator that would cut it.
    data = await signed_url(http_session, emulator, "50%2F50 take%201.mp4")
    resource = (await metadata(http_session, emulator, str(data["asset_id"])))[1]["data"]
    assert resource["resource"][0]["original_filename"] == "50%2F50 take%201"


async def test_signed_url_can_be_reused_while_waiting_but_not_after(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    emu = await make_emulator(clock=clock, waiting_s=5.0, uploading_s=5.0)
    data = await signed_url(http_session, emu)
    url, asset_id = str(data["signed_url"]), str(data["asset_id"])
    first, second = media_bytes("mp4", 1000, seed=1), media_bytes("mp4", 1000, seed=2)
    async with http_session.post(url, data=file_form(first, "big.mp4")) as resp:
        assert resp.status == 204
    # Still WAITING: a retry after a lost answer replaces the bytes, no new asset.
    async with http_session.post(url, data=file_form(second, "big.mp4")) as resp:
        assert resp.status == 204
    assert emu.state.assets[asset_id].sha256 == hashlib.sha256(second).hexdigest()
    assert len(emu.assets()) == 1
    assert emu.state.data_dir is not None
    blobs = [p.name for p in (emu.state.data_dir / "blobs").rglob("*") if p.is_file()]
    assert blobs == [hashlib.sha256(second).hexdigest()]  # the replaced bytes are gone
    clock.advance(5.0)
    async with http_session.post(url, data=file_form(first, "big.mp4")) as resp:
        assert resp.status == 409


async def test_expired_signed_url_is_refused_and_its_asset_fails(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    emu = await make_emulator(clock=clock, signed_url_ttl_s=60.0)
    data = await signed_url(http_session, emu)
    assert data["expires_in"] == 60
    asset_id = str(data["asset_id"])
    clock.advance(60.0)
    async with http_session.post(
        str(data["signed_url"]), data=file_form(media_bytes("mp4"), "big.mp4")
    ) as resp:
        assert resp.status == 403
        assert "expired" in (await resp.text()).lower()
    resource = (await metadata(http_session, emu, asset_id))[1]["data"]["resource"][0]
    assert resource["upload_status"] == "FAILED"
    assert emu.state.assets[asset_id].sha256 is None


async def test_signed_url_target_refuses_bad_signatures_and_bodies(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    data = await signed_url(http_session, emulator)
    url = str(data["signed_url"])
    base, _, query = url.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    forged = [
        f"{base}?expires={int(params['expires']) + 1}&sig={params['sig']}",
        f"{base}?expires={params['expires']}&sig={'0' * 64}",
        f"{base}?expires=soon&sig={params['sig']}",
        base,
        url.replace(str(data["asset_id"]), "re_000000000000000001"),
    ]
    for bad in forged:
        async with http_session.post(bad, data=file_form(media_bytes("mp4"), "b.mp4")) as resp:
            assert resp.status == 403, bad
    async with http_session.post(url, data=file_form(b"", "b.mp4")) as resp:
        assert resp.status == 400
    async with http_session.post(url, data=file_form(b"x", "b.mp4", field="other")) as resp:
        assert resp.status == 400
    assert emulator.state.assets[str(data["asset_id"])].sha256 is None
    # A deleted asset's URL leads nowhere.
    await call(
        http_session,
        "DELETE",
        f"{emulator.base_url}/{data['asset_id']}",
        headers=auth(emulator.key),
    )
    async with http_session.post(url, data=file_form(media_bytes("mp4"), "b.mp4")) as resp:
        assert resp.status == 404


async def test_signed_url_request_validation(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    url = emulator.base_url + "/upload/signed-url"
    headers = auth(emulator.key)
    bodies: list[dict[str, object]] = [
        {"json": {}},
        {"json": {"original_filename": "noext"}},
        {"json": {"original_filename": "notes.txt"}},
        {"json": {"original_filename": 42}},
        {"json": ["big.mp4"]},
        {"data": b"not json"},
    ]
    for kwargs in bodies:
        status, body = await call(http_session, "POST", url, headers=headers, **kwargs)
        assert status == 400, kwargs
        check_envelope(body, 400, THROTTLE_MSG)
    assert emulator.assets() == []


async def test_public_url_setting_builds_signed_urls(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    emu = await make_emulator(public_url="https://storage.example.test:8443")
    data = await signed_url(http_session, emu)
    assert str(data["signed_url"]).startswith(
        f"https://storage.example.test:8443/_storage/upload/{data['asset_id']}?expires="
    )


# --------------------------------------------------------------------------------------------
# GET /{asset_id}/download


async def test_download_streams_the_bytes_with_headers(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    data = media_bytes("webm", 700_000)
    asset_id = await upload_ok(http_session, emulator, data, 'weird "name".webm')
    await wait_status(http_session, emulator, asset_id, "SUCCESS")
    async with http_session.get(
        f"{emulator.base_url}/{asset_id}/download", headers=auth(emulator.key)
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "video/webm"
        assert resp.headers["Content-Length"] == str(len(data))
        disposition = resp.headers["Content-Disposition"]
        assert disposition.startswith("attachment; filename=")
        assert "weird%20%22name%22.webm" in disposition
        received = b"".join([chunk async for chunk in resp.content.iter_chunked(65536)])
    assert received == data


async def test_download_before_success_or_of_unknown_ids_is_refused(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    emu = await make_emulator(clock=clock, waiting_s=5.0)
    asset_id = await upload_ok(http_session, emu, media_bytes("mp4"))
    url = f"{emu.base_url}/{asset_id}/download"
    _, body = await call(http_session, "GET", url, headers=auth(emu.key))
    check_envelope(body, 400, "Asset is not ready")
    _, body = await call(
        http_session,
        "GET",
        f"{emu.base_url}/re_000000000000000001/download",
        headers=auth(emu.key),
    )
    check_envelope(body, 400, "Asset not found")


# --------------------------------------------------------------------------------------------
# DELETE /{asset_id} and /asset/{asset_id}


async def test_delete_and_its_alias_remove_assets_and_unused_blobs(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    data = media_bytes("mp3", 2000)
    first = await upload_ok(http_session, emulator, data, "a.mp3")
    second = await upload_ok(http_session, emulator, data, "b.mp3")
    blob = emulator.state.blob_path(emulator.state.assets[first])
    assert blob is not None
    headers = auth(emulator.key)
    status, body = await call(
        http_session, "DELETE", f"{emulator.base_url}/{first}", headers=headers
    )
    assert status == 200
    assert check_envelope(body, 200, "success") is None
    assert blob.exists()  # still the bytes of the second asset
    status, body = await call(
        http_session, "DELETE", f"{emulator.base_url}/asset/{second}", headers=headers
    )
    assert status == 200
    assert not blob.exists()
    for asset_id in (first, second):
        status, body = await metadata(http_session, emulator, asset_id)
        check_envelope(body, 400, "Asset not found")
        status, body = await call(
            http_session, "DELETE", f"{emulator.base_url}/{asset_id}", headers=headers
        )
        assert status == 400
        check_envelope(body, 400, "Asset not found")


# --------------------------------------------------------------------------------------------
# Unknown routes, inspection


async def test_unknown_routes_and_methods_get_envelopes(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    headers = auth(emulator.key)
    status, body = await call(http_session, "GET", f"{emulator.base_url}/a/b/c", headers=headers)
    assert status == 404
    check_envelope(body, 404)
    status, body = await call(http_session, "GET", f"{emulator.base_url}/upload", headers=headers)
    assert status == 405
    check_envelope(body, 405)
    assert [e.endpoint for e in emulator.requests()] == ["unknown", "unknown"]


async def test_inspection_lists_assets_and_requests_without_keys(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    data = media_bytes("gif", 3000)
    asset_id = await upload_ok(http_session, emulator, data, "anim.gif")
    await metadata(http_session, emulator, asset_id)
    status, body = await call(http_session, "GET", f"{emulator.control_url}/assets")
    assert status == 200
    (asset,) = body["assets"]
    assert asset["asset_id"] == asset_id
    assert asset["sha256"] == hashlib.sha256(data).hexdigest()
    assert asset["size"] == len(data)
    assert (asset["original_filename"], asset["extension"]) == ("anim", "gif")
    assert asset["upload_status"] in {"WAITING", "UPLOADING", "SUCCESS"}
    assert isinstance(asset["create_time_s"], float)
    status, one = await call(http_session, "GET", f"{emulator.control_url}/assets/{asset_id}")
    assert one == asset or one["upload_status"] != asset["upload_status"]

    status, text = await call(http_session, "GET", f"{emulator.control_url}/requests")
    assert emulator.key not in str(text)
    rows = text["requests"]
    assert [r["endpoint"] for r in rows[:3]] == ["upload", "metadata", "control"]
    first = rows[0]
    assert first["method"] == "POST" and first["status"] == 200
    assert first["key"] == "..." + emulator.key[-4:]
    assert first["filename"] == "anim.gif" and first["body_complete"] is True
    assert isinstance(first["time_s"], float)
    assert all(a["time_s"] <= b["time_s"] for a, b in itertools.pairwise(rows))
    status, only = await call(
        http_session, "GET", f"{emulator.control_url}/requests?endpoint=metadata&since=1"
    )
    assert [r["seq"] for r in only["requests"]] == [2]
    assert (await call(http_session, "DELETE", f"{emulator.control_url}/requests"))[0] == 200
    assert len(emulator.requests()) == 0


async def test_runtime_settings_endpoint(
    emulator: EmulatorServer, http_session: aiohttp.ClientSession
) -> None:
    url = f"{emulator.control_url}/settings"
    status, body = await call(http_session, "POST", url, json={"rates": {"upload": 5}})
    assert status == 200
    assert body["rates"]["upload"] == 5 and body["rates"]["metadata"] == 0
    assert emulator.key not in str(body)
    for bad in ({"keys": {}}, {"fail_fraction": 2}, {"rates": {"nope": 1}}, {"rates": 3}):
        status, body = await call(http_session, "POST", url, json=bad)
        assert status == 400, bad
        assert "error" in body
    assert emulator.settings.rates["upload"] == 5


async def test_data_dir_holds_blobs_and_database(
    make_emulator: MakeEmulator, http_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    emu = await make_emulator(data_dir=str(tmp_path))
    data = media_bytes("flac", 4000)
    await upload_ok(http_session, emu, data, "song.flac")
    digest = hashlib.sha256(data).hexdigest()
    assert (tmp_path / "blobs" / digest[:2] / digest).read_bytes() == data
    assert (tmp_path / "emulator.db").is_file()
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_create_app_runs_under_aiohttp_test_server(
    http_session: aiohttp.ClientSession,
) -> None:
    settings = EmulatorSettings(keys={"sk-mavi-factory-test-0001": "factory"})
    app = create_app(settings, clock=FakeClock())
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        url = str(server.make_url(API_BASE_PATH + "/upload"))
        _, body = await call(
            http_session,
            "POST",
            url,
            data=file_form(media_bytes("mp4"), "f.mp4"),
            headers=auth("sk-mavi-factory-test-0001"),
        )
        asset_id = check_envelope(body, 200)["asset_id"]
        assert list(app[STATE_KEY].assets) == [asset_id]
        # Default rate limit: 1/s per endpoint, and the fake clock does not move.
        _, body = await call(
            http_session,
            "POST",
            url,
            data=file_form(media_bytes("mp4"), "f.mp4"),
            headers=auth("sk-mavi-factory-test-0001"),
        )
        check_envelope(body, 400, THROTTLE_MSG)
