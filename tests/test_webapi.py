"""The local HTTP endpoint over real HTTP: TCP on port 0 and a Unix socket."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from test_metrics import parse

from syncd.errors import SyncdError
from syncd.events import EventHub
from syncd.fingerprint import Fingerprint
from syncd.ledger.sqlite import Ledger
from syncd.metrics import Metrics
from syncd.ops import report
from syncd.ops.dashboard import DaemonView
from syncd.ops.webapi import (
    SECURITY_HEADERS,
    Health,
    bound_address,
    parse_listen,
    start_http,
    stop_http,
)

SHA = "ab" * 32
ODD = os.fsdecode(b"/media/caf\xe9.mp4")


class Daemon:
    """The bits of a daemon the endpoint sees: a health that tests can flip."""

    def __init__(self) -> None:
        self.current = Health(healthy=True, ready=False, reason="")

    def health(self) -> Health:
        return self.current


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    led = await Ledger.open(str(tmp_path / "ledger.db"))
    await led.record_content("/media/a.mp4", "/media", Fingerprint(1, 1, 10, 1, 1), SHA, "mp4")
    att = await led.begin_attempt(SHA, "/media/a.mp4", "direct")
    await led.finish_upload(SHA, att, "re_42", bytes_sent=10, http_status=200, next_poll_at=1e12)
    await led.record_content(ODD, "/media", Fingerprint(1, 2, 20, 1, 1), "cd" * 32, "mp4")
    await led.record_path_state("/media/n.txt", "/media", "skipped", "not media")
    yield led
    await led.close()


@pytest.fixture
def daemon() -> Daemon:
    return Daemon()


@pytest.fixture
async def served(ledger: Ledger, daemon: Daemon) -> AsyncIterator[tuple[str, Metrics]]:
    metrics = Metrics()
    runner = await start_http(
        "127.0.0.1:0",
        ledger=ledger,
        metrics=metrics,
        health=daemon.health,
        ledger_gauges_max_age_s=0,
    )
    try:
        yield f"http://{bound_address(runner)}", metrics
    finally:
        await stop_http(runner)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_health_and_readiness(
    served: tuple[str, Metrics], daemon: Daemon, http_session: aiohttp.ClientSession
) -> None:
    base, _ = served
    assert (await get(http_session, f"{base}/healthz"))[0] == 200
    status, _, body = await get(http_session, f"{base}/readyz")
    assert status == 503 and body.startswith("not ready")
    daemon.current = Health(healthy=False, ready=True, reason="API key refused (401)")
    status, _, body = await get(http_session, f"{base}/healthz")
    assert (status, body) == (503, "unhealthy: API key refused (401)\n")
    assert (await get(http_session, f"{base}/readyz"))[0] == 200
    async with http_session.head(f"{base}/healthz") as resp:
        assert resp.status == 503


async def test_metrics_include_daemon_counts_and_ledger_gauges(
    served: tuple[str, Metrics], ledger: Ledger, http_session: aiohttp.ClientSession
) -> None:
    base, metrics = served
    metrics.inc("syncd_requests_total", endpoint="upload", status="200")
    metrics.observe("syncd_upload_duration_seconds", 1.5)
    status, ctype, body = await get(http_session, f"{base}/metrics")
    assert status == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    samples = parse(body)
    assert samples['syncd_requests_total{endpoint="upload",status="200"}'] == 1
    assert samples["syncd_upload_duration_seconds_count"] == 1
    assert samples['syncd_files{state="uploaded"}'] == 1
    assert samples['syncd_files{state="pending"}'] == 1
    assert samples['syncd_files{state="done"}'] == 0
    assert samples['syncd_paths{state="skipped"}'] == 1
    assert samples["syncd_backlog_bytes"] == 20
    assert samples["syncd_oldest_pending_age_seconds"] >= 0
    assert samples["syncd_healthy"] == 1 and samples["syncd_ready"] == 0
    # The gauges follow the ledger (max age 0 here; the daemon's default caches a few s).
    await ledger.record_status(SHA, "re_42", "SUCCESS", next_poll_at=None)
    samples = parse((await get(http_session, f"{base}/metrics"))[2])
    assert samples['syncd_files{state="done"}'] == 1


async def test_assets_answer_like_show_json(
    served: tuple[str, Metrics], ledger: Ledger, http_session: aiohttp.ClientSession
) -> None:
    base, _ = served
    expected = await report.show_data(ledger, await report.resolve(ledger, SHA, filesystem=False))
    for url in (
        f"{base}/v1/assets/{SHA}",
        f"{base}/v1/assets/{SHA[:8]}",
        f"{base}/v1/assets/re_42",
        f"{base}/v1/assets?path=/media/a.mp4",
    ):
        status, ctype, body = await get(http_session, url)
        assert status == 200 and ctype.startswith("application/json"), url
        assert json.loads(body) == expected
    doc = json.loads((await get(http_session, f"{base}/v1/assets?path=/media/n.txt"))[2])
    assert (doc["state"], doc["last_error"]) == ("skipped", "not media")
    hexed = os.fsencode(ODD).hex()
    doc = json.loads((await get(http_session, f"{base}/v1/assets?path_hex={hexed}"))[2])
    assert doc["sha256"] == "cd" * 32 and doc["paths"][0]["path_bytes_hex"] == hexed


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/assets/" + "ef" * 32, 404),
        ("/v1/assets/re_1", 404),
        ("/v1/assets/nothex", 404),
        ("/v1/assets?path=/media/none.mp4", 404),
        ("/v1/assets", 400),
        ("/v1/assets?path_hex=zz", 400),
        ("/v1/assets?path=/media/a.mp4&host=b", 400),  # a SQLite ledger holds one host's paths
        ("/nowhere", 404),
    ],
)
async def test_unknown_assets(
    served: tuple[str, Metrics], http_session: aiohttp.ClientSession, path: str, status: int
) -> None:
    base, _ = served
    got, _, body = await get(http_session, base + path)
    assert got == status
    if path.startswith("/v1"):
        assert "error" in json.loads(body)


async def test_ambiguous_prefix_is_409(
    served: tuple[str, Metrics], ledger: Ledger, http_session: aiohttp.ClientSession
) -> None:
    base, _ = served
    for tail in ("0", "1"):
        sha = "12345678" + tail * 56
        await ledger.record_content(f"/m/{tail}.mp4", "/m", Fingerprint(1, 9, 1, 1, 1), sha, "mp4")
    assert (await get(http_session, f"{base}/v1/assets/12345678"))[0] == 409


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_only_get_and_head(
    served: tuple[str, Metrics], http_session: aiohttp.ClientSession, method: str
) -> None:
    base, _ = served
    for path in ("/healthz", f"/v1/assets/{SHA}", "/nowhere"):
        async with http_session.request(method, base + path) as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET, HEAD"


async def test_unix_socket(tmp_path: Path, ledger: Ledger, daemon: Daemon) -> None:
    sock = tmp_path / "run" / "syncd.sock"
    sock.parent.mkdir()
    runner = await start_http(
        f"unix:{sock}", ledger=ledger, metrics=Metrics(), health=daemon.health
    )
    try:
        assert bound_address(runner) == f"unix:{sock}"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        connector = aiohttp.UnixConnector(path=str(sock))
        async with aiohttp.ClientSession(connector=connector) as session:
            status, _, body = await get(session, "http://syncd/healthz")
            assert (status, body) == (200, "ok\n")
            status, _, body = await get(session, f"http://syncd/v1/assets/{SHA}")
            assert status == 200 and json.loads(body)["asset_id"] == "re_42"
    finally:
        await stop_http(runner)
    assert not sock.exists()


async def test_unix_socket_left_by_a_dead_daemon_is_replaced(
    tmp_path: Path, ledger: Ledger, daemon: Daemon
) -> None:
    sock = tmp_path / "syncd.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens: what a killed daemon leaves behind
    runner = await start_http(
        f"unix:{sock}", ledger=ledger, metrics=Metrics(), health=daemon.health
    )
    try:
        # A second endpoint on the same live socket is refused, and the live one survives.
        with pytest.raises(OSError, match="another process listens"):
            await start_http(f"unix:{sock}", ledger=ledger, metrics=Metrics(), health=daemon.health)
        assert sock.exists()
    finally:
        await stop_http(runner)
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(OSError, match="not a socket"):
        await start_http(f"unix:{regular}", ledger=ledger, metrics=Metrics(), health=daemon.health)
    assert regular.read_text() == "keep me"


async def test_busy_tcp_port_is_an_oserror(ledger: Ledger, daemon: Daemon) -> None:
    runner = await start_http("127.0.0.1:0", ledger=ledger, metrics=Metrics(), health=daemon.health)
    try:
        with pytest.raises(OSError):
            await start_http(
                bound_address(runner), ledger=ledger, metrics=Metrics(), health=daemon.health
            )
    finally:
        await stop_http(runner)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:80", ("localhost", 80)),
        ("unix:/run/syncd/http.sock", "/run/syncd/http.sock"),
    ],
)
def test_parse_listen(listen: str, expected: object) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9477", "host:", ":80", "h:99999", "unix:rel.sock"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(SyncdError, match=r"http\.listen"):
        parse_listen(listen)


def test_app_routes_are_read_only() -> None:
    from syncd.ops.webapi import build_app

    app = build_app(ledger=None, metrics=Metrics(), health=Daemon().health)  # type: ignore[arg-type]
    methods = {route.method for route in app.router.routes()}
    assert methods <= {"GET", "HEAD"}
    assert isinstance(app, web.Application)


async def test_dns_rebinding_is_refused_by_the_host_check(
    served: tuple[str, Metrics], http_session: aiohttp.ClientSession
) -> None:
    """A page on attacker.example that re-pointed its name at 127.0.0.1 sends its own name."""
    base, _ = served
    port = base.rsplit(":", 1)[1]
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.evil.example", ""):
        async with http_session.get(f"{base}/v1/assets/{SHA}", headers={"Host": host}) as resp:
            body = await resp.text()
            assert resp.status == 421, host
            assert body.count("\n") == 1 and body.startswith("misdirected request")
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        async with http_session.get(f"{base}/healthz", headers={"Host": host}) as resp:
            assert resp.status == 200, host


async def test_allowed_hosts_are_answered_too(ledger: Ledger, daemon: Daemon) -> None:
    runner = await start_http(
        "127.0.0.1:0",
        ledger=ledger,
        metrics=Metrics(),
        health=daemon.health,
        extra_hosts=["NAS.local", "192.168.1.20"],
    )
    try:
        base = f"http://{bound_address(runner)}"
        async with aiohttp.ClientSession() as session:
            for host, status in (("nas.local:9477", 200), ("nas.local.", 200), ("nas", 421)):
                async with session.get(f"{base}/healthz", headers={"Host": host}) as resp:
                    assert resp.status == status, host
            async with session.get(f"{base}/healthz", headers={"Host": "192.168.1.20"}) as resp:
                assert resp.status == 200
    finally:
        await stop_http(runner)


async def test_a_unix_socket_needs_no_host_check(
    tmp_path: Path, ledger: Ledger, daemon: Daemon
) -> None:
    sock = tmp_path / "s.sock"
    runner = await start_http(
        f"unix:{sock}", ledger=ledger, metrics=Metrics(), health=daemon.health
    )
    try:
        connector = aiohttp.UnixConnector(path=str(sock))
        async with aiohttp.ClientSession(connector=connector) as session:
            headers = {"Host": "attacker.example"}
            async with session.get("http://syncd/healthz", headers=headers) as resp:
                assert resp.status == 200
    finally:
        await stop_http(runner)


@pytest.mark.parametrize("path", ["/healthz", "/metrics", f"/v1/assets/{SHA}", "/nowhere"])
async def test_every_answer_has_the_security_headers_and_no_cors(
    served: tuple[str, Metrics], http_session: aiohttp.ClientSession, path: str
) -> None:
    base, _ = served
    headers = {"Origin": "http://attacker.example"}
    for method in ("GET", "POST"):
        async with http_session.request(method, base + path, headers=headers) as resp:
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
            assert "unsafe-inline" not in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


def test_host_names_are_normalised() -> None:
    from syncd.ops.webapi import allowed_hosts, normalise_host

    assert normalise_host("LocalHost:9477") == "localhost"
    assert normalise_host("[::1]:9477") == "::1"
    assert normalise_host("[::1]") == "::1"
    assert normalise_host("nas.local.") == "nas.local"
    assert normalise_host("::1") == "::1"  # bare IPv6 (as configured): not a port
    assert allowed_hosts("nas.local", ["[fe80::1]"]) == {
        "localhost",
        "127.0.0.1",
        "::1",
        "nas.local",
        "fe80::1",
    }


async def test_the_page_the_dashboard_json_the_event_stream_and_every_error_carry_the_headers(
    ledger: Ledger, daemon: Daemon
) -> None:
    """Successes, 304, 400, 404, 405, 421 and the open SSE stream alike; a preflight from
    another origin gets no CORS header either."""
    runner = await start_http(
        "127.0.0.1:0",
        ledger=ledger,
        metrics=Metrics(),
        health=daemon.health,
        daemon=DaemonView(hub=EventHub()),
    )
    base = f"http://{bound_address(runner)}"
    origin = {"Origin": "http://attacker.example"}
    seen: dict[str, int] = {}

    def check(what: str, resp: aiohttp.ClientResponse) -> None:
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers.get(name) == value, (what, name)
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")], what
        seen[what] = resp.status

    try:
        async with aiohttp.ClientSession() as session:
            for path in (
                "/",
                "/static/app.js",
                "/v1/status",
                "/v1/activity?kind=finished",
                "/v1/search?q=re_42",
                "/v1/activity?kind=nothing",
                "/v1/search?q=",
                "/static/nothing.css",
            ):
                async with session.get(base + path, headers=origin) as resp:
                    check(path, resp)
            async with session.get(base + "/") as resp:
                etag = resp.headers["ETag"]
            async with session.get(base + "/", headers={"If-None-Match": etag}) as resp:
                check("304", resp)
            async with session.request(
                "OPTIONS",
                base + "/v1/status",
                headers={**origin, "Access-Control-Request-Method": "GET"},
            ) as resp:
                check("OPTIONS", resp)
            async with session.delete(base + "/v1/status", headers=origin) as resp:
                check("DELETE", resp)
            async with session.get(base + "/", headers={"Host": "attacker.example"}) as resp:
                check("421", resp)
            async with session.get(base + "/v1/events", headers=origin) as resp:
                check("/v1/events", resp)
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                assert (await resp.content.readuntil(b"\n\n")).startswith(b"retry:")
    finally:
        await stop_http(runner)
    assert seen == {
        "/": 200,
        "/static/app.js": 200,
        "/v1/status": 200,
        "/v1/activity?kind=finished": 200,
        "/v1/search?q=re_42": 200,
        "/v1/activity?kind=nothing": 400,
        "/v1/search?q=": 400,
        "/static/nothing.css": 404,
        "304": 304,
        "OPTIONS": 405,
        "DELETE": 405,
        "421": 421,
        "/v1/events": 200,
    }
