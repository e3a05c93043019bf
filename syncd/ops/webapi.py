"""The running daemon's local, read-only HTTP endpoint (``http.listen``).

Routes (GET and HEAD only; any other method is answered 405):

- ``/healthz``: 200 ``ok`` when the daemon is healthy, else 503 with the reason.
- ``/readyz``: 200 once the daemon is ready (ledger open, watches set), else 503.
- ``/metrics``: every metric of :mod:`syncd.metrics` in Prometheus text format 0.0.4, with the
  ledger-derived gauges (files and paths by state, backlog bytes, oldest pending age) computed
  at scrape time (at most every few seconds, so frequent scrapes cannot load the ledger).
- ``/v1/assets?path=PATH`` (or ``?path_hex=HEX`` for a name that is not UTF-8; ``&host=NAME``
  for another fleet host's path) and
  ``/v1/assets/{sha256, prefix or asset id}``: the same JSON as ``syncd show --json``;
  404 when unknown, 409 for an ambiguous prefix.
- ``/v1/events``: the daemon's state changes as Server-Sent Events (:mod:`syncd.ops.eventstream`).
- ``/`` (and ``/static/NAME``), ``/v1/status``, ``/v1/activity``, ``/v1/search``: the
  dashboard's page and JSON (:mod:`syncd.ops.dashboard`).

Every answer carries :data:`SECURITY_HEADERS`; on TCP, a request whose ``Host`` is not a name
of this endpoint is answered 421 (DNS rebinding). It listens on ``HOST:PORT`` (default
``127.0.0.1:9477``; loopback unless configured otherwise) or on a Unix socket ``unix:/path``
created with mode 0600. The endpoint never sees the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from syncd.errors import LedgerError
from syncd.ledger.records import CONTENT_STATES, PATH_STATES
from syncd.ledger.store import OperatorLedger
from syncd.metrics import Metrics
from syncd.ops import dashboard, eventstream
from syncd.ops.dashboard import DaemonView, StaticFile, load_static
from syncd.ops.eventstream import HEARTBEAT_S
from syncd.ops.health import Health as Health
from syncd.ops.health import is_loopback as is_loopback
from syncd.ops.health import parse_listen as parse_listen
from syncd.ops.report import NotFound, Resolved, resolve, show_data

log = logging.getLogger(__name__)

# Ledger-derived gauges are recomputed at most this often: a GROUP BY over a million rows is
# cheap once per scrape interval, not on every request of an over-eager scraper.
LEDGER_GAUGES_MAX_AGE_S = 5.0

_METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_ALLOWED = ("GET", "HEAD")


class _State:
    """What the handlers share: the ledger, the metrics, the health callable, and when the
    ledger gauges were last computed."""

    def __init__(
        self,
        ledger: OperatorLedger,
        metrics: Metrics,
        health: Callable[[], Health],
        ledger_gauges_max_age_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.health = health
        self.max_age_s = ledger_gauges_max_age_s
        self.clock = clock
        self.gauges_at: float | None = None
        self.gauges_lock = asyncio.Lock()


_STATE = web.AppKey("syncd_state", _State)


# Every answer carries these. The dashboard loads its script and styles from files of its own
# origin (no inline script, so the CSP needs no 'unsafe-inline'); nothing may frame it, and no
# other origin may embed the JSON (Cross-Origin-Resource-Policy). No CORS headers are ever set:
# other origins cannot read any answer.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Host names every TCP listener answers to, besides its own listen host and http.allowed_hosts.
LOCAL_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


def normalise_host(host: str) -> str:
    """Given a host as configured or as a Host header carries it (maybe with a port, an IPv6
    address maybe in brackets), return it lower-case, without brackets, port or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end > 0 else host[1:]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def allowed_hosts(listen_host: str | None, extra: Sequence[str] = ()) -> frozenset[str]:
    """The Host names a TCP listener on ``listen_host`` answers: that host, ``localhost``,
    ``127.0.0.1``, ``::1`` and ``extra`` (``http.allowed_hosts``), normalised."""
    names = [*LOCAL_HOSTS, *extra, *([listen_host] if listen_host else [])]
    return frozenset(normalise_host(n) for n in names)


def _host_check(allowed: frozenset[str]) -> Middleware:
    """A middleware that answers 421 unless the Host header names this endpoint.

    A web page the operator visits can point a name it controls at 127.0.0.1 (DNS rebinding);
    the browser then sends that name in the Host header, and only that gives it away. Any
    name not in ``allowed`` is refused before a handler runs.
    """

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        raw = request.headers.get("Host", "")
        if normalise_host(raw) not in allowed:
            shown = raw.encode("ascii", "backslashreplace").decode()[:100] or "(none)"
            return web.Response(
                status=421,
                text=f"misdirected request: Host {shown} is not a name of this endpoint "
                "(see http.allowed_hosts)\n",
            )
        return await handler(request)

    return check


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def _read_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.method not in _ALLOWED:
        return web.json_response(
            {"error": f"method {request.method} not allowed; this endpoint is read-only"},
            status=405,
            headers={"Allow": ", ".join(_ALLOWED)},
        )
    try:
        return await handler(request)
    except LedgerError as exc:
        log.warning("HTTP %s: %s", request.path, exc)
        return web.json_response({"error": str(exc)}, status=500)


async def _healthz(request: web.Request) -> web.Response:
    h = request.app[_STATE].health()
    if h.healthy:
        return web.Response(text=f"ok{': ' + h.reason if h.reason else ''}\n")
    return web.Response(status=503, text=f"unhealthy: {h.reason or 'unknown reason'}\n")


async def _readyz(request: web.Request) -> web.Response:
    h = request.app[_STATE].health()
    if h.ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text=f"not ready{': ' + h.reason if h.reason else ''}\n")


async def _update_ledger_gauges(state: _State) -> None:
    """Recompute the ledger-derived gauges unless they are fresh enough."""
    async with state.gauges_lock:
        now = state.clock()
        if state.gauges_at is not None and now - state.gauges_at < state.max_age_s:
            return
        counts = await state.ledger.counts()
        oldest = await state.ledger.oldest_waiting_content()
        m = state.metrics
        for content_state in CONTENT_STATES:
            m.set("syncd_files", counts["contents"].get(content_state, 0), state=content_state)
        for path_state in PATH_STATES:
            m.set("syncd_paths", counts["paths"].get(path_state, 0), state=path_state)
        m.set("syncd_backlog_bytes", counts["backlog"]["bytes"])
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest[0].created_at)
        m.set("syncd_oldest_pending_age_seconds", age)
        state.gauges_at = now


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    await _update_ledger_gauges(state)
    h = state.health()
    state.metrics.set("syncd_healthy", 1.0 if h.healthy else 0.0)
    state.metrics.set("syncd_ready", 1.0 if h.ready else 0.0)
    body = state.metrics.render().encode("utf-8")
    return web.Response(body=body, headers={"Content-Type": _METRICS_CONTENT_TYPE})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=2) + "\n", status=status, content_type="application/json"
    )


async def _show(state: _State, found: Resolved) -> web.Response:
    try:
        return _json(await show_data(state.ledger, found))
    except NotFound as exc:
        return _json({"error": str(exc)}, status=404)


async def _asset_by_path(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    query = request.rel_url.query
    if "path_hex" in query:
        try:
            path = os.fsdecode(bytes.fromhex(query["path_hex"]))
        except ValueError:
            return _json({"error": "path_hex: not hexadecimal"}, status=400)
    elif "path" in query:
        path = query["path"]
    else:
        return _json({"error": "give ?path=PATH or ?path_hex=HEX"}, status=400)
    try:
        # On a fleet's shared ledger, ?host=NAME looks among that host's paths.
        rec = await state.ledger.get_path(path, host=query.get("host"))
    except ValueError as exc:
        return _json({"error": str(exc)}, status=400)
    if rec is None:
        return _json({"error": "the ledger does not know this path"}, status=404)
    return await _show(state, Resolved(rec.sha256, rec, "path"))


async def _asset_by_key(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    key = request.match_info["key"]
    try:
        found = await resolve(state.ledger, key, filesystem=False)
    except NotFound as exc:
        status = 409 if "ambiguous" in str(exc) else 404
        return _json({"error": str(exc)}, status=status)
    if found.matched_by == "path":  # only keys, never paths, on this route
        return _json({"error": "unknown sha256 or asset id"}, status=404)
    return await _show(state, found)


def build_app(
    *,
    ledger: OperatorLedger,
    metrics: Metrics,
    health: Callable[[], Health],
    ledger_gauges_max_age_s: float = LEDGER_GAUGES_MAX_AGE_S,
    clock: Callable[[], float] = time.monotonic,
    hosts: frozenset[str] | None = frozenset(LOCAL_HOSTS),
    daemon: DaemonView | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    static: Mapping[str, StaticFile] | None = None,
) -> web.Application:
    """Return the endpoint's aiohttp application (routes in the module docstring).

    ``hosts`` are the Host names it answers (see :func:`allowed_hosts`); None turns the check
    off (a Unix socket, which no browser can reach). ``daemon`` is what the running daemon
    shows beyond the ledger (its event hub for ``/v1/events``, every ``heartbeat_s`` a
    heartbeat); without it those parts answer 503. ``static`` are the page's files (default:
    read from the package now, see :func:`~syncd.ops.dashboard.load_static`).
    """
    middlewares: list[Middleware] = [_read_only]
    if hosts is not None:
        middlewares.insert(0, _host_check(hosts))
    app = web.Application(middlewares=middlewares)
    app.on_response_prepare.append(_security_headers)
    app[_STATE] = _State(ledger, metrics, health, ledger_gauges_max_age_s, clock)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/assets", _asset_by_path)
    app.router.add_get("/v1/assets/{key}", _asset_by_key)
    eventstream.add_routes(app, None if daemon is None else daemon.hub, heartbeat_s)
    dashboard.add_routes(app, ledger=ledger, metrics=metrics, daemon=daemon, static=static)
    return app


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a daemon that died, never anything else: a live listener
    or a regular file at ``path`` is refused with ``OSError``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another process listens on {path}")


async def start_http(
    listen: str,
    *,
    ledger: OperatorLedger,
    metrics: Metrics,
    health: Callable[[], Health],
    ledger_gauges_max_age_s: float = LEDGER_GAUGES_MAX_AGE_S,
    extra_hosts: Sequence[str] = (),
    daemon: DaemonView | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> web.AppRunner:
    """Serve the endpoint on ``listen`` (``HOST:PORT``, port 0 for any, or ``unix:/path``).

    Given the daemon's shared ledger and metrics, a callable returning its current
    :class:`Health`, the Host names to answer besides the local ones (``http.allowed_hosts``;
    a Unix socket answers any), and the daemon's live view (see :func:`build_app`). Returns
    the started runner (:func:`stop_http` stops it; :func:`bound_address` tells where it
    listens). Raises
    :class:`SyncdError` for a malformed ``listen`` and ``OSError`` when it cannot be bound.
    """
    where = parse_listen(listen)
    app = build_app(
        ledger=ledger,
        metrics=metrics,
        health=health,
        ledger_gauges_max_age_s=ledger_gauges_max_age_s,
        hosts=None if isinstance(where, str) else allowed_hosts(where[0], extra_hosts),
        daemon=daemon,
        heartbeat_s=heartbeat_s,
        static=await asyncio.to_thread(load_static),
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site: web.BaseSite
        if isinstance(where, str):
            await asyncio.to_thread(_clear_stale_socket, where)
            site = web.UnixSite(runner, where)
            await site.start()
            # The folder's permissions are the real fence; 0600 closes the rest.
            await asyncio.to_thread(os.chmod, where, 0o600)
        else:
            host, port = where
            if not is_loopback(host):
                log.warning(
                    "http.listen %s is reachable from other hosts; the endpoint is read-only "
                    "but shows file paths and states",
                    listen,
                )
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("HTTP endpoint on %s", bound_address(runner))
    return runner


def bound_address(runner: web.AppRunner) -> str:
    """Given a started runner, return where it listens: ``HOST:PORT`` (the real port when 0
    was asked for; IPv6 hosts in brackets) or ``unix:/path``."""
    for address in runner.addresses:
        if isinstance(address, str):
            return f"unix:{address}"
        if isinstance(address, tuple) and len(address) >= 2:
            host, port = str(address[0]), int(address[1])
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    raise RuntimeError("the HTTP endpoint is not listening")


async def stop_http(runner: web.AppRunner) -> None:
    """Stop serving and remove a Unix socket file this endpoint created."""
    paths = [a for a in runner.addresses if isinstance(a, str)]
    await runner.cleanup()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, path)
