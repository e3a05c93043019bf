"""The emulator's settings: one frozen dataclass, validated when it is built."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from syncd.errors import ConfigError
from syncd.formats import MediaKind

DEMO_KEY = "sk-mavi-demo-0000000000000000"
DEMO_ACCOUNT = "demo"

API_BASE_PATH = "/serve/api/v2"

# The rate-limited API endpoints, by the names used in settings, logs and fault rules.
ENDPOINTS: tuple[str, ...] = ("upload", "metadata", "signed_url", "download", "delete")
# Endpoint names that appear in the request log besides ENDPOINTS: the signed-URL target,
# the inspection/control routes, and requests that matched no route.
OTHER_ENDPOINT_NAMES: tuple[str, ...] = ("storage", "control", "unknown")

THROTTLE_MSG = "Request has exceeded the limit."

RateAlgorithm = Literal["gcra", "fixed_window"]
HangWhen = Literal["before_store", "after_store"]

# Settings that may be changed while the emulator runs (POST /_emulator/settings).
RUNTIME_SETTINGS: frozenset[str] = frozenset(
    {
        "rates",
        "rate_algorithm",
        "throttle_status",
        "check_formats",
        "max_video_bytes",
        "max_audio_bytes",
        "max_image_bytes",
        "too_large_status",
        "waiting_s",
        "uploading_s",
        "fail_fraction",
        "error_rate",
        "error_status",
        "reset_rate",
        "hang_rate",
        "latency_rate",
        "latency_s",
        "signed_url_ttl_s",
        "share_assets_across_accounts",
        "public_url",
    }
)


def uniform_rates(per_s: float) -> Mapping[str, float]:
    """Given a rate in requests per second (0 disables), return it for every endpoint."""
    return MappingProxyType(dict.fromkeys(ENDPOINTS, float(per_s)))


def _default_keys() -> Mapping[str, str]:
    return MappingProxyType({DEMO_KEY: DEMO_ACCOUNT})


def _default_rates() -> Mapping[str, float]:
    return uniform_rates(1.0)


@dataclass(frozen=True)
class EmulatorSettings:
    """Everything the emulator can be told. Invalid values raise :class:`ConfigError`.

    Mappings given as plain dicts are frozen on construction (copied into read-only views).
    """

    # Accounts: API key -> account name. Every key of one account shares its rate limits.
    keys: Mapping[str, str] = field(default_factory=_default_keys)

    # Rate limits: requests per second per (account, endpoint); 0 disables. Missing endpoints
    # default to 1/s, like the real service.
    rates: Mapping[str, float] = field(default_factory=_default_rates)
    # "gcra": allowed when 1/rate seconds have passed since the last allowed request (sliding).
    # "fixed_window": one request per aligned window of 1/rate seconds.
    rate_algorithm: RateAlgorithm = "gcra"
    # HTTP status of a throttled answer: 400 (what the service does) or 429 (what its docs say).
    throttle_status: int = 400

    # Validation. check_formats=False lets any extension through (the real service may not check).
    check_formats: bool = True
    max_video_bytes: int | None = None
    max_audio_bytes: int | None = None
    max_image_bytes: int | None = None
    # No status is documented for "too large": 400 with the usual text by default.
    too_large_status: int = 400

    # Processing: seconds an asset spends WAITING, then UPLOADING, then SUCCESS or FAILED.
    waiting_s: float = 1.0
    uploading_s: float = 2.0
    fail_fraction: float = 0.0

    # Seed of every random decision (processing failures, probabilistic faults); None: random.
    seed: int | None = None

    # Probabilistic faults, each a probability per request (0 disables).
    error_rate: float = 0.0
    error_status: int = 500
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    latency_rate: float = 0.0
    latency_s: float = 0.0
    # Credits: uploads (assets created) allowed before 402; None means unlimited.
    credits: int | None = None
    # File names (with extension, no directory) that always get the validation 400.
    reject_filenames: frozenset[str] = frozenset()

    # Storage: None keeps everything in a temporary directory removed at shutdown.
    data_dir: str | None = None
    # Scheme://host[:port] that signed URLs point at; None: derived from the request's Host.
    public_url: str | None = None
    signed_url_ttl_s: float = 93600.0

    # Whether one account may read/delete another account's assets (the docs do not say).
    share_assets_across_accounts: bool = False
    # Newest request-log entries kept in memory.
    request_log_limit: int = 100_000

    def __post_init__(self) -> None:
        # Freeze the mappings the caller handed in, so that the dataclass really is immutable.
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        rates = dict(_default_rates())
        rates.update({k: float(v) for k, v in self.rates.items()})
        object.__setattr__(self, "rates", MappingProxyType(rates))
        object.__setattr__(self, "reject_filenames", frozenset(self.reject_filenames))
        problems = self.problems()
        if problems:
            raise ConfigError("emulator settings", problems)

    def problems(self) -> list[str]:
        """Return every problem of these settings as ``"field: what is wrong"`` (empty if none)."""
        out: list[str] = []
        if not self.keys:
            out.append("keys: at least one API key is needed")
        for key, account in self.keys.items():
            if not key or key != key.strip() or not account:
                out.append(f"keys: key ending {key[-4:]!r} or its account name is empty/padded")
        for name, rate in self.rates.items():
            if name not in ENDPOINTS:
                out.append(f"rates.{name}: unknown endpoint (known: {', '.join(ENDPOINTS)})")
            elif not math.isfinite(rate) or rate < 0:
                out.append(f"rates.{name}: must be a finite number >= 0, got {rate}")
        if self.rate_algorithm not in ("gcra", "fixed_window"):
            out.append(f"rate_algorithm: expected gcra or fixed_window, got {self.rate_algorithm}")
        if self.throttle_status not in (400, 429):
            out.append(f"throttle_status: expected 400 or 429, got {self.throttle_status}")
        for name in ("too_large_status", "error_status"):
            status = getattr(self, name)
            if not isinstance(status, int) or not 400 <= status <= 599:
                out.append(f"{name}: expected an HTTP error status 400..599, got {status}")
        for name in ("max_video_bytes", "max_audio_bytes", "max_image_bytes", "credits"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                out.append(f"{name}: expected an integer >= 0 or null, got {value}")
        for name in ("waiting_s", "uploading_s", "latency_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                out.append(f"{name}: must be a finite number >= 0, got {value}")
        if not math.isfinite(self.signed_url_ttl_s) or self.signed_url_ttl_s <= 0:
            out.append(f"signed_url_ttl_s: must be > 0, got {self.signed_url_ttl_s}")
        for name in ("fail_fraction", "error_rate", "reset_rate", "hang_rate", "latency_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                out.append(f"{name}: must be a probability between 0 and 1, got {value}")
        if self.public_url is not None and not self.public_url.startswith(("http://", "https://")):
            out.append(f"public_url: must start with http:// or https://, got {self.public_url}")
        if self.request_log_limit < 1:
            out.append(f"request_log_limit: must be at least 1, got {self.request_log_limit}")
        return out

    def rate_per_s(self, endpoint: str) -> float:
        """Given an endpoint name, return its rate limit in requests per second (0: none)."""
        return self.rates.get(endpoint, 0.0)

    def max_bytes(self, kind: MediaKind | None) -> int | None:
        """Given a media kind (None when unknown), return its size limit in bytes or None."""
        if kind == "video":
            return self.max_video_bytes
        if kind == "audio":
            return self.max_audio_bytes
        if kind == "image":
            return self.max_image_bytes
        return None

    def replace(self, **changes: Any) -> EmulatorSettings:
        """Return a copy with ``changes`` applied; raises :class:`ConfigError` when invalid."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError("emulator settings", [f"{n}: unknown setting" for n in unknown])
        return dataclasses.replace(self, **changes)
