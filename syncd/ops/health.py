"""The running daemon's health, and what ``http.listen`` names, without the HTTP server.

:class:`Health` is what the daemon reports (the summary, the heartbeat, ``/healthz``);
:func:`parse_listen` and :func:`is_loopback` read ``http.listen``. They live apart from
:mod:`syncd.ops.webapi` so that a daemon with no HTTP endpoint, and the commands that only
check the setting (``syncd doctor``), never import aiohttp's server (~15 ms and ~2 MB of
every start).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from syncd.errors import SyncdError


@dataclass
class Health:
    """The daemon's health as the endpoint reports it: ``healthy`` drives ``/healthz``,
    ``ready`` drives ``/readyz``, ``reason`` says why either is false (or notes a degraded
    state)."""

    healthy: bool
    ready: bool
    reason: str


def parse_listen(listen: str) -> tuple[str, int] | str:
    """Given ``http.listen``, return ``(host, port)`` or the Unix socket path.

    Accepts ``HOST:PORT``, ``[IPv6]:PORT`` and ``unix:/abs/path``; raises :class:`SyncdError`
    (one line) for anything else.
    """
    if listen.startswith("unix:"):
        path = listen[len("unix:") :]
        if not os.path.isabs(path):
            raise SyncdError(f"http.listen {listen!r}: the unix socket path must be absolute")
        return path
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SyncdError(f"http.listen {listen!r}: expected HOST:PORT or unix:/path")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
