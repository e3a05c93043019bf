"""The emulator's HTTP application: the MAVI v2 asset endpoints, storage, inspection, control.

Every API request goes through the same gate when it arrives, before its body is read:
authentication (401), ``throttle_for_s`` windows and the rate limiter (400/429), then scripted
and random faults. Only then is the body read, streamed in chunks to the blob store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import urllib.parse
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, NoReturn

from aiohttp import BodyPartReader, MultipartReader, web

from syncd.emulator.clock import Clock
from syncd.emulator.faults import Fault, FaultSpecError
from syncd.emulator.settings import (
    API_BASE_PATH,
    RUNTIME_SETTINGS,
    THROTTLE_MSG,
    EmulatorSettings,
)
from syncd.emulator.state import EmulatorState, RequestLogEntry, key_fingerprint
from syncd.emulator.store import UPLOAD_STATUSES, AssetRecord
from syncd.errors import ConfigError
from syncd.formats import FORMATS, SUPPORTED_EXTENSIONS, MediaKind, extension_of

_request_log = logging.getLogger("syncd.emulator.requests")

STATE_KEY: web.AppKey[EmulatorState] = web.AppKey("syncd_emulator_state", EmulatorState)
_ENTRY: web.RequestKey[RequestLogEntry] = web.RequestKey("syncd_emulator_entry", RequestLogEntry)

CONTROL_PREFIX = "/_emulator"
STORAGE_PREFIX = "/_storage/upload"

# Bytes asked of the multipart reader per read; the blob writer gathers them into larger writes.
READ_CHUNK_BYTES = 256 * 1024

_MESSAGES = {
    400: THROTTLE_MSG,
    401: "Unauthorized",
    402: "Insufficient credits, please recharge",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "File too large",
    415: "Unsupported media type",
    429: THROTTLE_MSG,
}
_SERVER_ERROR_MSG = "The network is abnormal, please try again later"
NOT_FOUND_MSG = "Asset not found"
NOT_READY_MSG = "Asset is not ready"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Reply(Exception):
    """Answer the request with this response now (raised from deep inside a handler)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


class _Dropped(Exception):
    """The connection was closed without an answer (injected reset, hang, or client gone)."""


def envelope(code: int, msg: str, data: Any = None) -> dict[str, Any]:
    """Return the API's JSON envelope for this code, message and data."""
    ok = code == 200
    return {"code": code, "msg": msg, "data": data, "success": ok, "failed": not ok}


def api_answer(code: int, msg: str | None = None, data: Any = None) -> web.Response:
    """Return an envelope response whose HTTP status equals ``code``."""
    if msg is None:
        default = _SERVER_ERROR_MSG if code >= 500 else _MESSAGES.get(code)
        msg = default or HTTPStatus(code).phrase
    return web.json_response(envelope(code, msg, data), status=code)


def _ok(data: Any = None) -> web.Response:
    return api_answer(200, "success", data)


def _state(request: web.Request) -> EmulatorState:
    return request.app[STATE_KEY]


def _entry(request: web.Request) -> RequestLogEntry:
    return request[_ENTRY]


# -------------------------------------------------------------------------------------------
# Connection-level faults


def _reset_connection(request: web.Request) -> NoReturn:
    """Drop the connection with a TCP reset, without answering; raises :class:`_Dropped`."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                # Linger 0: close() sends RST instead of FIN, like a crashing proxy would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()
    raise _Dropped("reset")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _hang(request: web.Request) -> NoReturn:
    """Never answer: wait until the client gives up or the emulator stops; raises _Dropped."""
    state = _state(request)
    while not state.shutting_down.is_set() and not _client_gone(request):
        # aiohttp does not cancel handlers when the client leaves: look at the socket often.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):
                await state.shutting_down.wait()
    if request.transport is not None:
        request.transport.abort()
    raise _Dropped("hang")


# -------------------------------------------------------------------------------------------
# The gate every API request passes at arrival


async def _gate(
    request: web.Request, endpoint: str, *, has_body: bool, auth: bool = True
) -> tuple[str, Fault | None]:
    """Admit one request; returns ``(account, fault left for the body reader)``.

    Raises :class:`_Reply` for 401, throttling and status faults, :class:`_Dropped` for resets
    and hangs of requests without a body. Resets and hangs of requests with a body are returned
    so that the handler applies them mid-body.
    """
    state = _state(request)
    entry = _entry(request)
    settings = state.settings
    account = ""
    if auth:
        if entry.account is None:
            raise _Reply(api_answer(401))
        account = entry.account
        if state.faults.throttled(endpoint, state.clock()):
            entry.fault = "scripted:throttle_for_s"
            entry.throttled = True
            raise _Reply(api_answer(settings.throttle_status, THROTTLE_MSG))
        rate_per_s = settings.rate_per_s(endpoint)
        if not state.limiter.allow(account, endpoint, rate_per_s, settings.rate_algorithm):
            entry.throttled = True
            raise _Reply(api_answer(settings.throttle_status, THROTTLE_MSG))
    scripted = state.faults.take(endpoint)
    drawn, latency_s = state.random_fault()
    fault = scripted or drawn
    if latency_s > 0:
        entry.fault = f"random:latency={latency_s:g}s"
        await asyncio.sleep(latency_s)
    if fault is None:
        return account, None
    entry.fault = fault.label()
    return account, await _apply_early_fault(request, fault, has_body=has_body)


async def _apply_early_fault(request: web.Request, fault: Fault, *, has_body: bool) -> Fault | None:
    """Apply what can be applied before the body is read; return what is left for later."""
    if fault.kind == "latency":
        await asyncio.sleep(fault.latency_s)
        return None
    if fault.kind == "status":
        raise _Reply(api_answer(fault.status or 500, fault.msg))
    if has_body:
        return fault
    if fault.kind == "reset":
        _reset_connection(request)
    await _hang(request)


# -------------------------------------------------------------------------------------------
# Multipart bodies


def _clean_filename(raw: str | None, *, percent_encoded: bool = True) -> str:
    """Given a file name, return it decoded and without any directory.

    RFC 7578 lets clients percent-encode a multipart part's file name (aiohttp does, browsers
    do for quotes); a JSON string (``original_filename``) is not encoded, so a ``%2F`` in it
    is part of the name (``percent_encoded=False``). Browsers on some systems send a whole path.
    """
    if not raw:
        return ""
    name = urllib.parse.unquote(raw, errors="replace") if percent_encoded else raw
    return name.replace("\\", "/").rsplit("/", 1)[-1].strip()


def _kind_of(extension: str) -> MediaKind | None:
    entry = FORMATS.get(extension)
    return entry[0] if entry else None


async def _file_part(
    request: web.Request, bad: Callable[[], web.Response]
) -> tuple[MultipartReader, BodyPartReader]:
    """Find the ``file`` part of a multipart body; other parts before it are skipped.

    Given the request and the answer for a bad body; raises ``_Reply(bad())`` when the body is
    not multipart or has no ``file`` part, :class:`_Dropped` when the client went away.
    """
    ctype = request.headers.get("Content-Type", "")
    if not ctype.lower().startswith("multipart/") or "boundary=" not in ctype:
        raise _Reply(bad())
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                raise _Reply(bad())
            if isinstance(part, BodyPartReader) and part.name == "file":
                return reader, part
            await part.release()
    except (_Reply, _Dropped):
        raise
    except Exception as exc:  # any failure to parse means the same: no usable file part
        if _client_gone(request):
            raise _Dropped("client went away") from exc
        raise _Reply(bad()) from exc


async def _receive(
    request: web.Request,
    reader: MultipartReader,
    part: BodyPartReader,
    *,
    max_bytes: int | None,
    too_large: Callable[[], web.Response],
    bad: Callable[[], web.Response],
    fault: Fault | None,
    keep: bool,
) -> tuple[str, int]:
    """Stream the ``file`` part to the blob store (``keep``) or discard it.

    Returns ``(sha256, size)`` once the whole multipart body arrived (sha256 is '' when not
    kept). Applies a pending reset/hang fault mid-body. Raises ``_Reply`` for a too large or
    malformed body and :class:`_Dropped` when the connection ends early: in every such case
    nothing is stored.
    """
    state = _state(request)
    entry = _entry(request)
    if state.blobs is None:
        raise RuntimeError("the emulator state is not started")
    writer = state.blobs.writer() if keep else None
    entry.body_complete = False
    entry.bytes_received = 0
    reset_at = max(1, (request.content_length or 0) // 2)
    committed = False
    try:
        if writer is not None:
            await writer.open()
        while True:
            try:
                chunk = await part.read_chunk(READ_CHUNK_BYTES)
            except Exception as exc:
                raise _read_failure(request, bad) from exc
            if not chunk:
                break
            entry.bytes_received += len(chunk)
            if fault is not None and fault.kind == "reset" and entry.bytes_received >= reset_at:
                _reset_connection(request)
            if max_bytes is not None and entry.bytes_received > max_bytes:
                raise _Reply(too_large())
            if writer is not None:
                await writer.write(chunk)
        try:
            # The body is complete only when the closing boundary arrived: read to the end.
            while (extra := await reader.next()) is not None:
                await extra.release()
        except Exception as exc:
            raise _read_failure(request, bad) from exc
        if fault is not None and fault.kind == "reset":
            _reset_connection(request)  # the body was shorter than the reset point
        entry.body_complete = True
        if entry.bytes_received == 0:
            raise _Reply(bad())  # an empty file is refused like a missing one
        if writer is None:
            return "", entry.bytes_received
        digest, size = await writer.commit()
        committed = True
        return digest, size
    finally:
        if writer is not None and not committed:
            await writer.abort()


def _read_failure(request: web.Request, bad: Callable[[], web.Response]) -> Exception:
    if _client_gone(request):
        return _Dropped("client went away mid-body")
    return _Reply(bad())


def _hangs_before_store(fault: Fault | None) -> bool:
    return fault is not None and fault.kind == "hang" and fault.hang_when == "before_store"


def _validation_400() -> web.Response:
    return api_answer(400, THROTTLE_MSG)


def _check_name(state: EmulatorState, filename: str) -> MediaKind | None:
    """Validate an upload's file name; returns its media kind; raises the validation 400."""
    extension = extension_of(filename)
    if state.settings.check_formats and extension not in SUPPORTED_EXTENSIONS:
        raise _Reply(_validation_400())
    if filename in state.faults.reject_filenames:
        raise _Reply(_validation_400())
    return _kind_of(extension)


def _too_large(state: EmulatorState) -> Callable[[], web.Response]:
    status = state.settings.too_large_status
    return lambda: api_answer(status)


# -------------------------------------------------------------------------------------------
# API endpoints


async def handle_upload(request: web.Request) -> web.StreamResponse:
    """``POST /upload``: a multipart body with a ``file`` part becomes a new asset."""
    state = _state(request)
    entry = _entry(request)
    account, fault = await _gate(request, "upload", has_body=True)
    if not state.faults.reserve_credit():
        raise _Reply(api_answer(402))
    created = False
    try:
        reader, part = await _file_part(request, _validation_400)
        filename = _clean_filename(part.filename)
        entry.filename = filename
        kind = _check_name(state, filename)
        named = state.faults.take("upload", filename)
        if named is not None:
            entry.fault = named.label()
            fault = await _apply_early_fault(request, named, has_body=True)
        hang_before = _hangs_before_store(fault)
        digest, size = await _receive(
            request,
            reader,
            part,
            max_bytes=state.settings.max_bytes(kind),
            too_large=_too_large(state),
            bad=_validation_400,
            fault=fault,
            keep=not hang_before,
        )
        if hang_before:
            await _hang(request)
        record = await state.create_direct_asset(account, filename, digest, size)
        created = True
        entry.asset_id = record.asset_id
        if fault is not None and fault.kind == "hang":
            await _hang(request)
        return _ok({"asset_id": record.asset_id})
    finally:
        if not created:
            state.faults.refund_credit()


async def handle_signed_url(request: web.Request) -> web.StreamResponse:
    """``POST /upload/signed-url``: allocate an asset and a storage URL for its bytes."""
    state = _state(request)
    entry = _entry(request)
    account, _ = await _gate(request, "signed_url", has_body=False)
    if not state.faults.reserve_credit():
        raise _Reply(api_answer(402))
    created = False
    try:
        try:
            payload = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Reply(_validation_400()) from exc
        raw = payload.get("original_filename") if isinstance(payload, dict) else None
        filename = _clean_filename(raw, percent_encoded=False) if isinstance(raw, str) else ""
        entry.filename = filename or None
        if not extension_of(filename):
            raise _Reply(_validation_400())
        _check_name(state, filename)
        record = await state.allocate_signed(account, filename)
        created = True
        entry.asset_id = record.asset_id
        expires_s = int(record.expires_at_s or 0)
        base = state.settings.public_url or f"{request.scheme}://{request.host}"
        query = urllib.parse.urlencode(
            {"expires": expires_s, "sig": state.sign(record.asset_id, expires_s)}
        )
        url = f"{base.rstrip('/')}{STORAGE_PREFIX}/{record.asset_id}?{query}"
        return _ok(
            {
                "asset_id": record.asset_id,
                "signed_url": url,
                "expires_in": int(state.settings.signed_url_ttl_s),
            }
        )
    finally:
        if not created:
            state.faults.refund_credit()


def _visible(request: web.Request, account: str) -> AssetRecord:
    record = _state(request).visible_asset(request.match_info["asset_id"], account)
    if record is None:
        raise _Reply(api_answer(400, NOT_FOUND_MSG))
    _entry(request).asset_id = record.asset_id
    return record


async def handle_metadata(request: web.Request) -> web.StreamResponse:
    """``GET /{asset_id}/metadata``: the asset's status and facts, numbers as strings."""
    account, _ = await _gate(request, "metadata", has_body=False)
    record = _visible(request, account)
    return _ok({"total": 1, "resource": [_state(request).metadata_json(record)]})


def _content_disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "'") or "file"
    quoted = urllib.parse.quote(filename, safe="")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"


async def handle_download(request: web.Request) -> web.StreamResponse:
    """``GET /{asset_id}/download``: the asset's bytes, streamed from disk."""
    state = _state(request)
    account, _ = await _gate(request, "download", has_body=False)
    record = _visible(request, account)
    status, _ = record.status_at(state.clock())
    path = state.blob_path(record)
    if status != "SUCCESS" or path is None:
        raise _Reply(api_answer(400, NOT_READY_MSG))
    mime = FORMATS.get(record.extension, ("", "application/octet-stream"))[1]
    return web.FileResponse(
        path,
        chunk_size=READ_CHUNK_BYTES,
        headers={
            "Content-Type": mime,
            "Content-Disposition": _content_disposition(record.filename),
        },
    )


async def handle_delete(request: web.Request) -> web.StreamResponse:
    """``DELETE /{asset_id}`` (and ``/asset/{asset_id}``): remove the asset for good."""
    account, _ = await _gate(request, "delete", has_body=False)
    record = _visible(request, account)
    await _state(request).delete_asset(record)
    return _ok(None)


# -------------------------------------------------------------------------------------------
# The signed URL target (plays the storage service: no auth, no envelope)


def _storage_error(status: int, code: str) -> web.Response:
    return web.Response(status=status, text=code + "\n", content_type="text/plain")


async def handle_storage_upload(request: web.Request) -> web.StreamResponse:
    """``POST /_storage/upload/{asset_id}?expires=..&sig=..``: the bytes of a signed-URL asset.

    Answers 204 on success; 403 for a bad or expired signature, 404 for an unknown asset, 409
    when the asset is past WAITING, 400 for a body without a non-empty ``file`` part.
    """
    state = _state(request)
    entry = _entry(request)
    _, fault = await _gate(request, "storage", has_body=True, auth=False)
    asset_id = request.match_info["asset_id"]
    entry.asset_id = asset_id
    try:
        expires_s = int(request.query.get("expires", ""))
    except ValueError:
        raise _Reply(_storage_error(403, "SignatureDoesNotMatch")) from None
    if not state.signature_ok(asset_id, expires_s, request.query.get("sig", "")):
        raise _Reply(_storage_error(403, "SignatureDoesNotMatch"))
    if state.clock() >= expires_s:
        raise _Reply(_storage_error(403, "ExpiredToken: the signed URL has expired"))
    record = state.assets.get(asset_id)
    if record is None:
        raise _Reply(_storage_error(404, "NoSuchKey"))
    entry.filename = record.filename
    if record.status_at(state.clock())[0] != "WAITING":
        raise _Reply(_storage_error(409, "Conflict: the asset is no longer waiting for bytes"))

    def bad() -> web.Response:
        return _storage_error(400, "InvalidArgument: a non-empty 'file' part is required")

    reader, part = await _file_part(request, bad)
    hang_before = _hangs_before_store(fault)
    digest, size = await _receive(
        request,
        reader,
        part,
        max_bytes=state.settings.max_bytes(_kind_of(record.extension)),
        too_large=lambda: _storage_error(413, "EntityTooLarge"),
        bad=bad,
        fault=fault,
        keep=not hang_before,
    )
    if hang_before:
        await _hang(request)
    if state.assets.get(asset_id) is not record:
        # Deleted while its bytes were arriving: keep nothing.
        raise _Reply(_storage_error(404, "NoSuchKey"))
    await state.receive_signed(record, digest, size)
    if fault is not None and fault.kind == "hang":
        await _hang(request)
    return web.Response(status=204)


# -------------------------------------------------------------------------------------------
# Inspection and control (outside the API base path; no auth: bind to loopback)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise _Reply(_json({"error": "the body must be JSON"}, 400)) from None


async def handle_list_assets(request: web.Request) -> web.StreamResponse:
    """``GET /_emulator/assets``: every live asset, oldest first."""
    state = _state(request)
    return _json({"assets": [state.asset_json(a) for a in state.assets.values()]})


async def handle_get_asset(request: web.Request) -> web.StreamResponse:
    """``GET /_emulator/assets/{asset_id}``: one asset, any account; 404 when unknown."""
    state = _state(request)
    record = state.assets.get(request.match_info["asset_id"])
    if record is None:
        return _json({"error": "no such asset"}, 404)
    return _json(state.asset_json(record))


async def handle_force_status(request: web.Request) -> web.StreamResponse:
    """``POST /_emulator/assets/{asset_id}/status`` with ``{"upload_status": S or null}``."""
    state = _state(request)
    record = state.assets.get(request.match_info["asset_id"])
    if record is None:
        return _json({"error": "no such asset"}, 404)
    body = await _json_body(request)
    status = body.get("upload_status") if isinstance(body, dict) else "?"
    if status is not None and status not in UPLOAD_STATUSES:
        return _json({"error": f"upload_status must be one of {UPLOAD_STATUSES} or null"}, 400)
    await state.force_status(record, status)
    return _json(state.asset_json(record))


async def handle_requests(request: web.Request) -> web.StreamResponse:
    """``GET /_emulator/requests[?since=SEQ][&endpoint=NAME...]``: the request log."""
    state = _state(request)
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return _json({"error": "since must be an integer"}, 400)
    wanted = set(request.query.getall("endpoint", []))
    rows = [
        e.to_json()
        for e in state.requests
        if e.seq > since and (not wanted or e.endpoint in wanted)
    ]
    return _json({"requests": rows})


async def handle_clear_requests(request: web.Request) -> web.StreamResponse:
    """``DELETE /_emulator/requests``: forget the request log (sequence numbers go on)."""
    _state(request).requests.clear()
    return _json({"requests": []})


async def handle_get_faults(request: web.Request) -> web.StreamResponse:
    """``GET /_emulator/faults``: the scripted faults in force."""
    return _json(_state(request).faults.to_json())


async def handle_add_faults(request: web.Request) -> web.StreamResponse:
    """``POST /_emulator/faults`` with one control object or a list of them."""
    state = _state(request)
    body = await _json_body(request)
    specs = body if isinstance(body, list) else [body]
    if not all(isinstance(s, dict) for s in specs):
        return _json({"error": "expected a JSON object or a list of objects"}, 400)
    # Validate everything on a scratch copy first, so that a bad list changes nothing.
    try:
        for spec in specs:
            state.faults.copy().apply(spec, state.clock())
    except FaultSpecError as exc:
        return _json({"error": str(exc)}, 400)
    for spec in specs:
        state.faults.apply(spec, state.clock())
    return _json(state.faults.to_json())


async def handle_clear_faults(request: web.Request) -> web.StreamResponse:
    """``DELETE /_emulator/faults``: remove every scripted fault (and any credits limit)."""
    state = _state(request)
    state.faults.clear()
    return _json(state.faults.to_json())


def settings_json(settings: EmulatorSettings) -> dict[str, Any]:
    """Return the settings as plain data, with keys reduced to their fingerprints."""
    return {
        "accounts": sorted({key_fingerprint(k) or "": a for k, a in settings.keys.items()}.items()),
        "rates": dict(settings.rates),
        **{name: getattr(settings, name) for name in sorted(RUNTIME_SETTINGS - {"rates"})},
        "seed": settings.seed,
        "data_dir": settings.data_dir,
    }


async def handle_get_settings(request: web.Request) -> web.StreamResponse:
    """``GET /_emulator/settings``: the settings in force (no keys)."""
    return _json(settings_json(_state(request).settings))


async def handle_set_settings(request: web.Request) -> web.StreamResponse:
    """``POST /_emulator/settings`` with ``{name: value}`` for settings changeable at run time."""
    state = _state(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        return _json({"error": "expected a JSON object"}, 400)
    unknown = sorted(set(body) - RUNTIME_SETTINGS)
    if unknown:
        return _json(
            {
                "error": f"not changeable at run time: {', '.join(unknown)}; "
                f"changeable: {', '.join(sorted(RUNTIME_SETTINGS))}"
            },
            400,
        )
    if "rates" in body and not isinstance(body["rates"], dict):
        return _json({"error": "rates must be an object {endpoint: per_s}"}, 400)
    try:
        state.update_settings(**body)
    except (ConfigError, TypeError) as exc:
        return _json({"error": str(exc).replace("\n", " ")}, 400)
    return _json(settings_json(state.settings))


# -------------------------------------------------------------------------------------------
# Request log middleware and the app factory

_ENDPOINT_OF: dict[Handler, str] = {
    handle_upload: "upload",
    handle_signed_url: "signed_url",
    handle_metadata: "metadata",
    handle_download: "download",
    handle_delete: "delete",
    handle_storage_upload: "storage",
}


def _endpoint_name(request: web.Request) -> str:
    match = request.match_info
    if match.http_exception is not None:
        return "unknown"
    return _ENDPOINT_OF.get(match.handler, "control")


@web.middleware
async def _log_and_answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log the request at arrival, turn _Reply/_Dropped into answers, record the status."""
    state = _state(request)
    entry = state.log_request(
        request.method, request.path, _endpoint_name(request), request.headers.get("Authorization")
    )
    request[_ENTRY] = entry
    try:
        try:
            response = await handler(request)
        except _Reply as reply:
            response = reply.response
        except web.HTTPException as exc:
            if not (request.path.startswith(API_BASE_PATH + "/") and exc.status in (404, 405)):
                entry.status = exc.status
                raise
            response = api_answer(exc.status)
        entry.status = response.status
        return response
    except _Dropped:
        if request.transport is not None:
            request.transport.abort()
        # Nobody will read this: aiohttp's write to the closed transport fails quietly.
        return web.Response(status=500)
    finally:
        entry.done = True
        if entry.endpoint != "control":
            _request_log.info("%s", _describe(entry))


def _describe(entry: RequestLogEntry) -> str:
    """One line per answered request, for people watching a demo or a rehearsal."""
    parts = [
        entry.method,
        entry.endpoint,
        str(entry.status) if entry.status is not None else "(no answer)",
        entry.account or "-",
    ]
    if entry.filename:
        parts.append(repr(entry.filename))
    if entry.asset_id:
        parts.append(entry.asset_id)
    if entry.body_complete is False:
        parts.append(f"body incomplete after {entry.bytes_received or 0} bytes")
    if entry.throttled:
        parts.append("throttled")
    if entry.fault:
        parts.append(f"fault {entry.fault}")
    return " ".join(parts)


async def _on_shutdown(app: web.Application) -> None:
    # Wakes hung requests so that shutdown does not wait for their clients to give up.
    app[STATE_KEY].shutting_down.set()


def create_app(
    settings: EmulatorSettings | None = None, *, clock: Clock | None = None
) -> web.Application:
    """Build the emulator's aiohttp application.

    Given the settings (defaults: one demo key, 1 request/s per endpoint) and a clock (epoch
    seconds; default: the wall clock advanced monotonically); returns the application, whose
    state is ``app[STATE_KEY]``. The data directory is opened when the app starts and closed
    at cleanup; start it with ``web.AppRunner`` (see :mod:`syncd.emulator.server`).
    """
    state = EmulatorState(settings if settings is not None else EmulatorSettings(), clock)
    app = web.Application(middlewares=[_log_and_answer], client_max_size=1024 * 1024)
    app[STATE_KEY] = state

    async def lifecycle(app: web.Application) -> Any:
        await state.start()
        yield
        await state.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(_on_shutdown)
    base = API_BASE_PATH
    app.router.add_post(f"{base}/upload", handle_upload)
    app.router.add_post(f"{base}/upload/signed-url", handle_signed_url)
    app.router.add_get(f"{base}/{{asset_id}}/metadata", handle_metadata, allow_head=False)
    app.router.add_get(f"{base}/{{asset_id}}/download", handle_download, allow_head=False)
    app.router.add_delete(f"{base}/{{asset_id}}", handle_delete)
    app.router.add_delete(f"{base}/asset/{{asset_id}}", handle_delete)
    app.router.add_post(f"{STORAGE_PREFIX}/{{asset_id}}", handle_storage_upload)
    c = CONTROL_PREFIX
    app.router.add_get(f"{c}/assets", handle_list_assets, allow_head=False)
    app.router.add_get(f"{c}/assets/{{asset_id}}", handle_get_asset, allow_head=False)
    app.router.add_post(f"{c}/assets/{{asset_id}}/status", handle_force_status)
    app.router.add_get(f"{c}/requests", handle_requests, allow_head=False)
    app.router.add_delete(f"{c}/requests", handle_clear_requests)
    app.router.add_get(f"{c}/faults", handle_get_faults, allow_head=False)
    app.router.add_post(f"{c}/faults", handle_add_faults)
    app.router.add_delete(f"{c}/faults", handle_clear_faults)
    app.router.add_get(f"{c}/settings", handle_get_settings, allow_head=False)
    app.router.add_post(f"{c}/settings", handle_set_settings)
    return app
