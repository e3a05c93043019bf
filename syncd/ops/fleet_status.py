"""The fleet's rate budget as ``syncd status`` shows it (``fleet.redis_url`` set).

Reads Redis directly, as every host's pacer does
(:func:`~syncd.upload.fleet_redis.read_fleet_view`): the hosts alive (fresh heartbeat keys) with
their grants per second, and each endpoint's shared cool-down. A Redis that does not answer is
reported, not raised: status must still print.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from redis.exceptions import RedisError

from syncd.apikey import resolve_api_key
from syncd.config import Config
from syncd.errors import ConfigError
from syncd.upload.fleet_redis import account_name, connect, read_fleet_view, safe_url
from syncd.upload.pacer import ENDPOINTS

READ_TIMEOUT_S = 5.0


async def fleet_budget(cfg: Config) -> dict[str, Any] | None:
    """Return the ``fleet_budget`` part of ``syncd status --json``, or ``None`` without
    ``fleet.redis_url``.

    Given the config (the API key, when ``fleet.account`` is unset, names the account). The
    document has ``redis`` (the URL without password), ``reachable``, and when reachable
    ``account``, ``hosts`` (``host``, ``grants_per_s`` per endpoint, ``updated_at``) and
    ``endpoints`` (``endpoint``, ``cooldown_remaining_s``, ``level_s``, ``throttles``,
    ``granted``); otherwise ``error``.
    """
    url = cfg.fleet.redis_url
    if url is None:
        return None
    out: dict[str, Any] = {"redis": safe_url(url), "reachable": False}
    try:
        key = None if cfg.fleet.account is not None else resolve_api_key(cfg)
        account = account_name(cfg, key)
    except (ConfigError, ValueError) as exc:
        out["error"] = f"cannot tell the account: {exc}"
        return out
    client = connect(url)
    try:
        view = await asyncio.wait_for(read_fleet_view(client, account, ENDPOINTS), READ_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError) as exc:
        out["account"] = account
        out["error"] = str(exc) or type(exc).__name__
        return out
    finally:
        await client.aclose()
    return {**out, "reachable": True, **view}


def render_fleet_budget(doc: Mapping[str, Any], out: TextIO | None = None) -> None:
    """Write the fleet's budget for humans, one topic per line (after the status lines)."""
    w = (out or sys.stdout).write
    if not doc["reachable"]:
        w(f"fleet budget  Redis {doc['redis']} NOT reachable: {doc.get('error', '?')}\n")
        return
    hosts = doc["hosts"]
    w(f"fleet budget  account {doc['account']} on {doc['redis']}, {len(hosts)} host(s) alive\n")
    for h in hosts:
        rates = ", ".join(f"{e} {r:.2f}/s" for e, r in sorted(h["grants_per_s"].items()))
        w(f"fleet host    {h['host']}: {rates or 'no grants'}\n")
    cooling = [e for e in doc["endpoints"] if e["cooldown_remaining_s"] > 0]
    text = ", ".join(f"{e['endpoint']} {e['cooldown_remaining_s']:.1f} s" for e in cooling)
    w(f"fleet cool    {text or 'none'}\n")
