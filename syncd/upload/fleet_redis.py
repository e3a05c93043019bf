"""The fleet's state on Redis: where it is kept, the scripts that change it, and reading it.

The key layout (one hash per account and endpoint, one heartbeat key per host), the Lua scripts
:class:`~syncd.upload.fleet_pacer.RedisPacer` runs atomically on the server's clock (see that
module for what each step decides), connecting with the pacer's timeouts, and
:func:`read_fleet_view`, which the pacer's heartbeat and ``syncd status`` both read. Kept apart
from the pacer so that the operator's side reads the fleet without the pacing logic, and the
scripts sit beside the keys they touch.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from syncd.config import Config

KEY_PREFIX = "syncd"
REDIS_TIMEOUT_S = 2.0
STATE_TTL_MS = 7 * 86400 * 1000
"""An endpoint's state (cool-down level) is forgotten after a week without a grant."""

US = 1_000_000
"""Microseconds per second: the scripts speak epoch microseconds on the server's clock."""

# Lua numbers are doubles: epoch microseconds (~1.8e15) are exact, but tostring() would write
# them in exponent form, hence string.format('%.0f') before storing.
RESERVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local st = redis.call('HMGET', KEYS[1], 'tat', 'cool_until')
local tat = tonumber(st[1]) or 0
local cool = tonumber(st[2]) or 0
local slot = math.max(now, tat - (burst - 1) * interval, cool)
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', math.max(tat, slot) + interval))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {slot, now}
"""

START_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = tonumber(ARGV[1])
local gap = tonumber(ARGV[2])
local late = tonumber(ARGV[3])
local st = redis.call('HMGET', KEYS[1], 'last_start', 'cool_until')
local last = tonumber(st[1]) or 0
local cool = tonumber(st[2]) or 0
if cool > now then
  return {-1, now}
end
local ready = math.max(slot, last + gap)
if math.max(now, ready) - slot > late then
  return {-1, now}
end
if ready > now then
  return {ready - now, now}
end
redis.call('HSET', KEYS[1], 'last_start', string.format('%.0f', now))
redis.call('HINCRBY', KEYS[1], 'granted', 1)
return {0, now}
"""

SENT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local st = redis.call('HMGET', KEYS[1], 'tat', 'last_start')
local tat = tonumber(st[1]) or 0
local last = tonumber(st[2]) or 0
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', math.max(tat, now + interval)),
  'last_start', string.format('%.0f', math.max(last, now)))
return now
"""

THROTTLED_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local initial = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local cut = tonumber(ARGV[3])
local st = redis.call('HMGET', KEYS[1], 'cool_until', 'level', 'tat')
local cool = tonumber(st[1]) or 0
local level = tonumber(st[2]) or 0
local tat = tonumber(st[3]) or 0
redis.call('HINCRBY', KEYS[1], 'throttles', 1)
if cool > now then
  return {cool - now, 0}
end
if level <= 0 then
  level = initial
else
  level = math.min(math.max(level * 2, initial), max)
end
local length = math.floor(level * (1 - cut))
redis.call('HSET', KEYS[1], 'cool_until', string.format('%.0f', now + length),
  'level', string.format('%.0f', level), 'tat', string.format('%.0f', math.max(tat, now + length)))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return {length, 1}
"""

SUCCEEDED_SCRIPT = """
local level = tonumber(redis.call('HGET', KEYS[1], 'level') or '0') or 0
local eased = math.max(0, level - tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'level', string.format('%.0f', eased))
return eased
"""

VIEW_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {now}
for i, key in ipairs(KEYS) do
  local st = redis.call('HMGET', key, 'cool_until', 'level', 'throttles', 'granted')
  out[#out + 1] = {st[1] or '0', st[2] or '0', st[3] or '0', st[4] or '0'}
end
return out
"""

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def account_name(cfg: Config, api_key: str | None) -> str:
    """Return the account's name in Redis keys: ``fleet.account``, else ``key-`` and the first
    12 hex digits of the API key's SHA-256 (hosts sharing a key agree; the key stays secret).

    Raises ``ValueError`` when neither is given.
    """
    if cfg.fleet.account is not None:
        return cfg.fleet.account
    if not api_key:
        raise ValueError("fleet.account is not set and there is no API key to derive it from")
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def safe_url(url: str) -> str:
    """Return ``url`` without its password (for logs and status)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    netloc = f"{parts.username or ''}:***@{netloc}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def connect(url: str) -> aioredis.Redis:
    """Return a client for ``url`` that gives up on an unreachable server within
    :data:`REDIS_TIMEOUT_S` (the pacer retries by itself, with its own backoff and log lines)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def endpoint_key(account: str, endpoint: str) -> str:
    """The hash holding one endpoint's budget and cool-down for ``account``."""
    return f"{KEY_PREFIX}:{account}:ep:{endpoint}"


def host_key(account: str, host: str) -> str:
    """The heartbeat key of ``host`` in ``account``'s fleet."""
    return f"{KEY_PREFIX}:{account}:host:{host}"


async def read_fleet_view(
    client: aioredis.Redis, account: str, endpoints: tuple[str, ...]
) -> dict[str, Any]:
    """Return the budget as the fleet sees it: the hosts alive (fresh heartbeat keys) with
    their grants per second, and each endpoint's shared cool-down, level, throttles and grants.

    Given a client built with ``decode_responses=True``. Raises the client's errors.
    """
    hosts: list[dict[str, Any]] = []
    async for key in client.scan_iter(match=host_key(account, "*"), count=100):
        raw = await client.get(key)
        if raw is None:
            continue  # expired between the scan and the read
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        if isinstance(beat, dict):
            hosts.append(
                {
                    "host": str(beat.get("host", key.rsplit(":", 1)[-1])),
                    "grants_per_s": dict(beat.get("grants_per_s") or {}),
                    "updated_at": beat.get("updated_at"),
                }
            )
    hosts.sort(key=lambda h: str(h["host"]))
    keys = [endpoint_key(account, e) for e in endpoints]
    raw_view = await client.eval(VIEW_SCRIPT, len(keys), *keys)
    now_us = float(raw_view[0])
    out = []
    for endpoint, (cool, level, throttles, granted) in zip(endpoints, raw_view[1:], strict=True):
        out.append(
            {
                "endpoint": endpoint,
                "cooldown_remaining_s": round(max(0.0, (float(cool) - now_us) / US), 3),
                "level_s": round(float(level) / US, 3),
                "throttles": int(throttles),
                "granted": int(granted),
            }
        )
    return {"account": account, "hosts": hosts, "endpoints": out}
