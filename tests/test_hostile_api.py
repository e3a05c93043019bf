"""Bad answers from the API, met by the whole daemon: each one a classified error and one line.

A hostile proxy stands between the running daemon and the real emulator, both over real HTTP on
loopback. It forwards what it is not told to spoil; for the first answers of one endpoint it
answers itself: malformed JSON, a proxy's HTML 502 page, HTTP 200 whose envelope says failure, a
success without an asset id or with one of the wrong form, 100 MB, one byte per second, a
redirect to another host. Where the real service could have received the bytes before the answer
went wrong, the proxy forwards the request first and spoils the real answer, so the emulator
holds an asset that syncd must not claim.

For each case the daemon must keep running, retry (or give up) as the client classified the
answer, never record an asset id that did not come from a good answer, and log one line for each
bad answer, without a traceback. The signed-URL storage host sits behind a second proxy on
another loopback address, so the tests see that the key never reaches it; the redirect target is
a third server, which must never see a request at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from daemon_process import query
from pipeline_support import make_config, received, running, state_of, wait_done, wait_for
from samples import write_media
from test_client import ScriptedServer

from syncd.emulator import EmulatorServer
from syncd.upload.client import ASSET_ID_RE, MAX_ANSWER_BYTES

BASE_PATH = "/serve/api/v2"
REDIRECT_QUERY = "sig=never-shown"


@dataclass(frozen=True)
class Upstream:
    """What the emulator answered to a forwarded request."""

    status: int
    body: bytes
    content_type: str


@dataclass
class Exchange:
    """One request the proxy spoils: the request and, if it was forwarded, the real answer."""

    request: web.Request
    upstream: Upstream | None


Spoiler = Callable[["HostileProxy", Exchange], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """Spoil the next ``count`` answers of ``endpoint`` (of one file's uploads, if named)."""

    endpoint: str
    spoil: Spoiler
    count: int = 2
    forward: bool = False  # send the request on first: the bytes land, the answer goes wrong
    filename: str | None = None
    served: int = 0


@dataclass(frozen=True)
class Seen:
    """One request as the proxy received it."""

    method: str
    endpoint: str
    authorization: str | None
    spoiled: bool


def endpoint_of(path: str) -> str:
    if path.startswith("/_storage/"):
        return "storage"
    tail = path.removeprefix(BASE_PATH)
    if tail == "/upload":
        return "upload"
    if tail == "/upload/signed-url":
        return "signed_url"
    if tail.endswith("/metadata"):
        return "metadata"
    return "other"


@dataclass
class HostileProxy:
    """An aiohttp server that forwards to ``target`` (``http://host:port``) unless a fault
    says otherwise."""

    host: str
    target: str
    elsewhere: str = ""  # where redirects point
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    spoiled_ids: list[Any] = field(default_factory=list)  # wrong ids handed to the daemon
    huge_bytes_sent: list[int] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + BASE_PATH

    async def start(self) -> HostileProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        endpoint = endpoint_of(request.path)
        fault = next(
            (
                f
                for f in self.faults
                if f.endpoint == endpoint
                and f.served < f.count
                and (f.filename is None or f'filename="{f.filename}"'.encode() in body[:2048])
            ),
            None,
        )
        self.seen.append(
            Seen(request.method, endpoint, request.headers.get("Authorization"), fault is not None)
        )
        upstream = None
        if fault is None or fault.forward:
            upstream = await self._forward(request, body)
        if fault is None:
            assert upstream is not None
            return web.Response(
                status=upstream.status,
                body=upstream.body,
                headers={"Content-Type": upstream.content_type},
            )
        fault.served += 1
        return await fault.spoil(self, Exchange(request, upstream))

    async def _forward(self, request: web.Request, body: bytes) -> Upstream:
        assert self._session is not None
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type", "accept")
        }
        async with self._session.request(
            request.method,
            self.target + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as resp:
            return Upstream(
                resp.status,
                await resp.read(),
                resp.headers.get("Content-Type", "application/octet-stream"),
            )

    def requests(self, endpoint: str | None = None) -> list[Seen]:
        return [s for s in self.seen if endpoint is None or s.endpoint == endpoint]


# ------------------------------------------------------------------------------------------
# Spoilers: what a broken network or service answers instead


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(doc).encode(), content_type="application/json"
    )


def _real(ex: Exchange) -> dict[str, Any]:
    assert ex.upstream is not None and ex.upstream.status == 200, ex.upstream
    doc = json.loads(ex.upstream.body)
    assert isinstance(doc, dict)
    return doc


async def malformed_json(proxy: HostileProxy, ex: Exchange) -> web.StreamResponse:
    assert ex.upstream is not None
    return web.Response(status=200, body=ex.upstream.body[:-9], content_type="application/json")


PROXY_PAGE = (
    "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n"
    "<center><h1>502 Bad Gateway</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>\n"
)


async def html_502(proxy: HostileProxy, ex: Exchange) -> web.StreamResponse:
    return web.Response(status=502, text=PROXY_PAGE, content_type="text/html")


async def failure_envelope(proxy: HostileProxy, ex: Exchange) -> web.StreamResponse:
    doc = _real(ex)
    doc.update(code=500, msg="system busy", success=False, failed=True)
    return _json(doc)


async def no_asset_id(proxy: HostileProxy, ex: Exchange) -> web.StreamResponse:
    doc = _real(ex)
    del doc["data"]["asset_id"]
    return _json(doc)


def wrong_asset_id(make: Callable[[str], Any]) -> Spoiler:
    async def spoil(proxy: HostileProxy, ex: Exchange) -> web.StreamResponse:
        doc = _real(ex)
        doc["data"]["asset_id"] = bad = make(doc["data"]["asset_id"])
        proxy.spoiled_ids.append(bad)
        return _json(doc)

    return spoil


async def other_asset(proxy: HostileProxy, ex: Exchange) -> web.StreamResponse:
    doc = _real(ex)
    doc["data"]["resource"][0]["asset_id"] = "re_1"
    return _json(doc)


async def huge_answer(proxy: HostileProxy, ex: Exchange) -> web.StreamResponse:
    """100 MB of JSON-looking bytes, without a Content-Length, until the client hangs up."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await resp.prepare(ex.request)
    sent = 0
    try:
        await resp.write(b'{"code":200,"msg":"success","data":{"asset_id":"re_1"},"pad":"')
        block = b"x" * (1 << 20)
        while sent < 100 << 20:
            await resp.write(block)
            sent += len(block)
    except (ConnectionError, RuntimeError):
        pass  # the client hung up, as it should
    proxy.huge_bytes_sent.append(sent)
    return resp


async def trickle(proxy: HostileProxy, ex: Exchange) -> web.StreamResponse:
    """The real answer (or a plausible one), one byte per second."""
    body = ex.upstream.body if ex.upstream is not None else b""
    body = body or b'{"code":200,"msg":"success","data":null}'
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(ex.request)
    try:
        for i in range(len(body)):
            transport = ex.request.transport
            if transport is None or transport.is_closing():
                break
            await resp.write(body[i : i + 1])
            await asyncio.sleep(1.0)
    except (ConnectionError, RuntimeError):
        pass
    return resp


async def redirect(proxy: HostileProxy, ex: Exchange) -> web.StreamResponse:
    target = f"{proxy.elsewhere}{ex.request.path}?{REDIRECT_QUERY}"
    return web.Response(status=307, headers={"Location": target})


# ------------------------------------------------------------------------------------------
# Fixtures


@dataclass
class World:
    """The emulator, the API proxy, the storage proxy and the redirect target."""

    emulator: EmulatorServer
    api: HostileProxy
    storage: HostileProxy
    elsewhere: ScriptedServer


@pytest.fixture
async def world(emulator: EmulatorServer) -> AsyncIterator[World]:
    elsewhere = await ScriptedServer(host="127.0.0.3").start()
    api = HostileProxy("127.0.0.1", emulator.root_url, elsewhere.origin)
    storage = HostileProxy("127.0.0.2", emulator.root_url, elsewhere.origin)
    await api.start()
    await storage.start()
    # Signed URLs point at the storage proxy, a host other than the API's.
    emulator.update_settings(public_url=storage.origin)
    try:
        yield World(emulator, api, storage, elsewhere)
    finally:
        await api.stop()
        await storage.stop()
        await elsewhere.stop()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="syncd")
    return caplog


def ledger_asset_ids(ledger: Path) -> list[str]:
    """Every asset id the ledger holds anywhere: contents, attempts, superseded assets."""
    ids: list[str] = []
    for table in ("contents", "attempts", "superseded_assets"):
        ids += [row[0] for row in query(ledger, f"SELECT asset_id FROM {table}")]  # noqa: S608
    return [i for i in ids if i is not None]


def assert_clean_log(caplog: pytest.LogCaptureFixture, key: str) -> None:
    """No traceback, no multi-line message, no key anywhere in the daemon's log."""
    for record in caplog.records:
        if not record.name.startswith("syncd"):
            continue
        text = record.getMessage()
        assert record.exc_info is None, f"traceback logged: {text}"
        assert "\n" not in text, f"multi-line log message: {text!r}"
        assert key not in text
        assert REDIRECT_QUERY not in text
        assert "internal error" not in text


def lines_with(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("syncd") and r.levelno >= logging.INFO and needle in r.getMessage()
    ]


# ------------------------------------------------------------------------------------------
# The matrix: each bad answer twice, then good ones


@dataclass(frozen=True)
class Case:
    id: str
    mode: str  # upload_mode
    endpoint: str
    spoil: Spoiler
    logged: str  # what the daemon's line for each bad answer says (a regex)
    forward: bool = False
    served: int = 2  # bad answers the daemon meets before a good one


D, S = "direct", "signed_url"  # upload modes
UNREAD = rf"answer larger than {MAX_ANSWER_BYTES} bytes, not read"
ELSEWHERE = r"redirect to http://127\.0\.0\.3:\d+/"

# fmt: off
CASES = [
    # Direct uploads
    Case("upload-malformed-json", D, "upload", malformed_json,
         r"upload: HTTP 200: not an API answer \(non-JSON answer", forward=True),
    Case("upload-html-502", D, "upload", html_502,
         r"upload: HTTP 502: non-JSON answer \(text/html\)$"),
    Case("upload-failure-envelope", D, "upload", failure_envelope,
         r"upload: HTTP 200: answer says failure \(code 500: system busy\)$", forward=True),
    Case("upload-no-asset-id", D, "upload", no_asset_id,
         r"upload: HTTP 200: answer has no valid asset_id \(none\)$", forward=True),
    Case("upload-id-with-suffix", D, "upload", wrong_asset_id(lambda i: i + "x"),
         r"upload: HTTP 200: answer has no valid asset_id \(re_\d+x\)$", forward=True),
    Case("upload-id-as-number", D, "upload", wrong_asset_id(lambda i: int(i[3:])),
         r"upload: HTTP 200: answer has no valid asset_id \(\d+\)$", forward=True),
    Case("upload-id-as-path", D, "upload", wrong_asset_id(lambda i: i + "/../re_1"),
         r"upload: HTTP 200: answer has no valid asset_id \(re_\d+/\.\./re_1\)$", forward=True),
    Case("upload-100-mb", D, "upload", huge_answer,
         rf"upload: HTTP 200: {UNREAD}$", forward=True),
    Case("upload-trickle", D, "upload", trickle,
         r"upload: no answer: no complete answer after \d", forward=True),
    Case("upload-redirect", D, "upload", redirect,
         rf"upload: HTTP 307: {ELSEWHERE}serve/api/v2/upload\?\.\.\. not followed"),
    # Status polls
    Case("metadata-malformed-json", D, "metadata", malformed_json,
         r"metadata: HTTP 200: not an API answer \(non-JSON answer", forward=True),
    Case("metadata-html-502", D, "metadata", html_502,
         r"metadata: HTTP 502: non-JSON answer \(text/html\)\)"),
    Case("metadata-failure-envelope", D, "metadata", failure_envelope,
         r"metadata: HTTP 200: answer says failure \(code 500: system busy\)", forward=True),
    Case("metadata-other-asset", D, "metadata", other_asset,
         r"metadata: HTTP 200: answer does not describe re_\d+", forward=True),
    Case("metadata-100-mb", D, "metadata", huge_answer,
         rf"metadata: HTTP 200: {UNREAD}", forward=True),
    Case("metadata-trickle", D, "metadata", trickle,
         r"metadata: no answer: no complete answer after \d", forward=True),
    Case("metadata-redirect", D, "metadata", redirect,
         rf"metadata: HTTP 307: {ELSEWHERE}serve/api/v2/re_\d+/metadata\?\.\.\. not followed"),
    # Signed-URL allocations and the storage host
    Case("signed-url-no-asset-id", S, "signed_url", no_asset_id,
         r"signed_url: HTTP 200: answer has no valid asset_id \(none\)$", forward=True),
    Case("signed-url-wrong-id", S, "signed_url", wrong_asset_id(lambda i: "RE_" + i[3:]),
         r"signed_url: HTTP 200: answer has no valid asset_id \(RE_\d+\)$", forward=True),
    Case("signed-url-html-502", S, "signed_url", html_502,
         r"signed_url: HTTP 502: non-JSON answer \(text/html\)$"),
    Case("signed-url-redirect", S, "signed_url", redirect,
         rf"signed_url: HTTP 307: {ELSEWHERE}serve/api/v2/upload/signed-url\?\.\.\. not"),
    Case("storage-html-502", S, "storage", html_502,
         r"storage: HTTP 502: non-JSON answer \(text/html\)$"),
    Case("storage-trickle", S, "storage", trickle,
         r"storage: no answer: no complete answer after \d"),
    # The bytes reached storage and only the answer was lost: before sending again, the daemon
    # asks the API, learns that the asset has its bytes, and sends nothing more.
    Case("storage-trickle-after-storing", S, "storage", trickle,
         r"storage: no answer: no complete answer after \d", forward=True, served=1),
    Case("storage-redirect", S, "storage", redirect,
         rf"storage: HTTP 307: {ELSEWHERE}_storage/upload/re_\d+\?\.\.\. not followed"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_bad_answer_is_retried_and_never_becomes_an_asset_id(
    tmp_path: Path, root: Path, world: World, logs: pytest.LogCaptureFixture, case: Case
) -> None:
    emulator, api, storage = world.emulator, world.api, world.storage
    fault = Fault(case.endpoint, case.spoil, count=2, forward=case.forward)
    (storage if case.endpoint == "storage" else api).faults.append(fault)
    cfg = make_config(
        tmp_path,
        emulator,
        [root],
        api={"base_url": api.base_url, "upload_mode": case.mode, "read_timeout_s": 2},
    )
    path = root / "clip.mp4"
    sha = write_media(path, size=50_000)
    async with running(cfg, emulator.key) as d:
        asset = await wait_done(d, path, 60)
        assert fault.served == case.served
        assert d.ready  # still running, not stopping
        content = await d.ledger.get_content(sha)
        assert content is not None and content.attempts <= fault.count + 1
        # A direct upload answered 2xx without a usable asset id may have left an asset
        # behind at the service: each one is counted as a possible duplicate.
        maybe_stored = case.mode == "direct" and case.endpoint == "upload" and case.forward
        answered_2xx = maybe_stored and case.spoil is not trickle
        assert content.possible_duplicates == (case.served if answered_2xx else 0)
    # The asset id recorded came from a good answer and names exactly this file's bytes.
    assert ASSET_ID_RE.fullmatch(asset)
    assert received(emulator)[asset] == sha
    ids = ledger_asset_ids(Path(cfg.ledger.path))
    stored = {a.asset_id for a in emulator.assets()}
    assert set(ids) <= stored, "the ledger names an asset the service never created"
    assert not set(map(str, api.spoiled_ids)) & set(ids)
    # One clear line for each bad answer, no traceback, never the key.
    assert_clean_log(logs, emulator.key)
    pattern = re.compile(case.logged)
    lines = [
        r.getMessage()
        for r in logs.records
        if r.name.startswith("syncd")
        and r.levelno >= logging.INFO
        and pattern.search(r.getMessage())
    ]
    assert len(lines) == case.served, "\n".join(r.getMessage() for r in logs.records)
    # The key went to the API host only: never to the storage host, never after a redirect.
    assert all(s.authorization == emulator.key for s in api.seen)
    assert all(s.authorization is None for s in storage.seen)
    assert world.elsewhere.seen == []
    if case.spoil is huge_answer:
        assert all(n < 50 << 20 for n in api.huge_bytes_sent)  # the daemon hung up early


async def test_a_file_whose_answers_stay_bad_is_given_up_while_others_go_through(
    tmp_path: Path, root: Path, world: World, logs: pytest.LogCaptureFixture
) -> None:
    emulator, api = world.emulator, world.api
    spoil = wrong_asset_id(lambda i: i + "x")
    api.faults.append(Fault("upload", spoil, count=1000, forward=True, filename="bad.mp4"))
    cfg = make_config(
        tmp_path, emulator, [root], api={"base_url": api.base_url}, upload={"max_attempts": 3}
    )
    bad_sha = write_media(root / "bad.mp4", size=30_000, seed=1)
    async with running(cfg, emulator.key) as d:
        write_media(root / "good.mp4", size=30_000, seed=2)

        async def bad_failed() -> bool:
            return (await state_of(d, root / "bad.mp4"))[0] == "failed"

        await wait_for(bad_failed, 60, what="bad.mp4 failed")
        await wait_done(d, root / "good.mp4", 60)
        bad = await d.ledger.get_content(bad_sha)
        assert bad is not None and bad.asset_id is None and bad.attempts == 3
        assert bad.last_error is not None and "no valid asset_id" in bad.last_error
        # The daemon carries on: a file dropped after the give-up is uploaded.
        write_media(root / "later.mp4", size=30_000, seed=3)
        await wait_done(d, root / "later.mp4", 60)
    assert len(api.requests("upload")) >= 3
    assert len([s for s in api.requests("upload") if s.spoiled]) == 3  # no retry after give-up
    # The service did create three assets for bad.mp4 (the answers were spoiled on the way
    # back); none of them, and none of the wrong ids, is in the ledger.
    ids = set(ledger_asset_ids(Path(cfg.ledger.path)))
    orphans = {a.asset_id for a in emulator.assets() if a.sha256 == bad_sha}
    assert len(orphans) == 3 and not orphans & ids
    # Each attempt answered 2xx after the body went out: a possible duplicate. (The ledger's
    # give_up cannot count one yet, so the attempt that gave up is not among them.)
    sql = "SELECT possible_duplicates FROM contents WHERE sha256 = ?"
    [(counted,)] = await asyncio.to_thread(query, Path(cfg.ledger.path), sql, (bad_sha,))
    assert 2 <= counted <= 3
    assert not set(api.spoiled_ids) & ids
    assert_clean_log(logs, emulator.key)
    gave_up = lines_with(logs, "gave up on")
    assert len(gave_up) == 1 and "3 attempts failed" in gave_up[0]
