"""Typed, frozen settings loaded from one YAML file and validated against one schema.

The schema *is* the dataclasses below: every field's type, default and constraints live in one
place. Loading walks the YAML document against them, rejects unknown keys, and collects every
problem with its key path before raising a single :class:`~syncd.errors.ConfigError`.

The API key is never read from the YAML: :mod:`syncd.apikey` finds it in ``MAVI_API_KEY``,
``MAVI_API_KEY_FILE``, ``api.key_file``, or ``$CREDENTIALS_DIRECTORY/mavi_api_key`` (systemd
``LoadCredential=``). The rules that span fields live in :mod:`syncd.config_checks`.

Over ~500 lines because the schema is one dataclass per section with every field's
constraints beside it (about half the module), and the walk that reads YAML against them is
the other half; splitting the two would put a field's type and the code that checks it apart.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from syncd.config_checks import Problems, check_semantics
from syncd.errors import ConfigError
from syncd.units import parse_byte_rate

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/syncd/config.yaml"
DEFAULT_BASE_URL = "https://mavi-backend.memories.ai/serve/api/v2"

# The ending of the files syncd itself writes next to an uploaded one (``NAME.mavi.json``):
# never candidates for upload, whatever a root includes.
SIDECAR_SUFFIX = ".mavi.json"

# Names that writers use while a file is incomplete: dotfiles (rsync's ``.name.XXXXXX``),
# browser and torrent partials, editors' swap and lock files.
DEFAULT_TEMP_PATTERNS: tuple[str, ...] = (
    ".*",
    "*.part",
    "*.partial",
    "*.tmp",
    "*.crdownload",
    "*.!qB",
    "~$*",
    "*.swp",
)


def _meta(
    doc: str,
    minimum: float | None = None,
    exclusive_min: bool = False,
    *,
    absolute: bool = False,
    byte_rate: bool = False,
    key: str | None = None,
) -> Any:
    """A field's schema: its doc line, bounds, whether a string must be an absolute path,
    whether an integer may be written as a byte count (``50M``), and its YAML key when that
    is not the field's name (``from`` is a Python keyword)."""
    return {
        "doc": doc,
        "minimum": minimum,
        "exclusive_min": exclusive_min,
        "absolute": absolute,
        "byte_rate": byte_rate,
        "key": key,
    }


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = field(default=DEFAULT_BASE_URL, metadata=_meta("MAVI v2 base URL"))
    key_file: str | None = field(
        default=None,
        metadata=_meta("file holding the API key (MAVI_API_KEY env wins)", absolute=True),
    )
    upload_mode: Literal["direct", "signed_url", "auto"] = field(
        default="auto", metadata=_meta("direct | signed_url | auto")
    )
    signed_url_min_bytes: int = field(
        default=64 * 1024 * 1024, metadata=_meta("auto mode: signed URL at/above", minimum=0)
    )
    connect_timeout_s: float = field(
        default=10.0, metadata=_meta("TCP+TLS connect timeout", minimum=0, exclusive_min=True)
    )
    read_timeout_s: float = field(
        default=120.0,
        metadata=_meta("longest silence while reading an answer", minimum=0, exclusive_min=True),
    )
    verify_tls: bool = field(default=True, metadata=_meta("verify the server's certificate"))


@dataclass(frozen=True)
class WatchRoot:
    path: str = field(metadata=_meta("absolute path of a folder to watch", absolute=True))
    recursive: bool = field(default=True, metadata=_meta("watch sub-folders too"))
    include: tuple[str, ...] = field(default=(), metadata=_meta("globs; empty means all"))
    exclude: tuple[str, ...] = field(default=(), metadata=_meta("globs to ignore"))
    polling: bool = field(default=False, metadata=_meta("poll instead of inotify (NFS/SMB)"))
    follow_symlinks: bool = field(default=False, metadata=_meta("follow symlinks in this root"))
    sidecar: bool = field(
        default=False, metadata=_meta("write NAME.mavi.json next to each uploaded file")
    )
    after_success: Literal["keep", "delete", "move"] = field(
        default="keep", metadata=_meta("once the asset is SUCCESS: keep | delete | move")
    )
    move_to: str | None = field(
        default=None,
        metadata=_meta(
            "after_success move: folder the files go to (same relative path)", absolute=True
        ),
    )
    after_success_dry_run: bool = field(
        default=False, metadata=_meta("log what after_success would do, do nothing")
    )


@dataclass(frozen=True)
class SettleConfig:
    quiet_s: float = field(default=3.0, metadata=_meta("silence before a file is complete", 0))
    max_wait_s: float = field(
        default=86400.0,
        metadata=_meta("give up on a file that never settles", minimum=0, exclusive_min=True),
    )
    temp_patterns: tuple[str, ...] = field(
        default=DEFAULT_TEMP_PATTERNS, metadata=_meta("names of incomplete files")
    )
    check_open_writers: bool = field(
        default=True, metadata=_meta("look in /proc for writers of scanned files")
    )


@dataclass(frozen=True)
class LedgerConfig:
    path: str = field(
        default="/var/lib/syncd/ledger.db", metadata=_meta("SQLite ledger file", absolute=True)
    )
    backup_dir: str | None = field(
        default=None, metadata=_meta("where scheduled backups go", absolute=True)
    )
    backup_interval_s: float = field(
        default=86400.0, metadata=_meta("seconds between backups; 0 disables", minimum=0)
    )
    backup_keep: int = field(default=7, metadata=_meta("backups to keep", minimum=1))
    url: str | None = field(
        default=None,
        metadata=_meta("PostgreSQL ledger shared by a fleet (postgresql://...); null: SQLite"),
    )
    lease_s: float = field(
        default=600.0,
        metadata=_meta("how long a fleet host's claim on an upload lasts unrenewed", minimum=5),
    )


@dataclass(frozen=True)
class FleetConfig:
    host_name: str | None = field(
        default=None, metadata=_meta("this host's name in a fleet; null: the machine's hostname")
    )
    redis_url: str | None = field(
        default=None,
        metadata=_meta("Redis holding the fleet's shared rate budget (redis://...); null: local"),
    )
    account: str | None = field(
        default=None,
        metadata=_meta("the account's name in Redis keys; null: a short hash of the API key"),
    )


@dataclass(frozen=True)
class ScanConfig:
    rescan_interval_s: float = field(
        default=3600.0, metadata=_meta("periodic rescan; 0 disables", minimum=0)
    )
    on_start: bool = field(default=True, metadata=_meta("scan every root at startup"))


@dataclass(frozen=True)
class ScheduleWindow:
    days: tuple[str, ...] = field(metadata=_meta("mon..sun, mon-fri, weekdays, weekend, daily"))
    from_: str = field(metadata=_meta("start, HH:MM local time", key="from"))
    to: str = field(metadata=_meta("end, HH:MM local time (24:00 allowed)"))
    max_bytes_per_s: int = field(
        metadata=_meta("limit in this window (50M, 500k); 0: no uploads", 0, byte_rate=True)
    )


@dataclass(frozen=True)
class UploadConfig:
    workers: int = field(default=4, metadata=_meta("concurrent uploads", minimum=1))
    hash_workers: int = field(default=2, metadata=_meta("concurrent hashing threads", minimum=1))
    max_attempts: int = field(default=10, metadata=_meta("attempts before failed", minimum=1))
    backoff_initial_s: float = field(
        default=5.0, metadata=_meta("first retry delay", minimum=0, exclusive_min=True)
    )
    backoff_max_s: float = field(
        default=3600.0, metadata=_meta("longest retry delay", minimum=0, exclusive_min=True)
    )
    reject_after: int = field(
        default=3, metadata=_meta("400s while others succeed before rejected", minimum=1)
    )
    max_file_bytes: int | None = field(
        default=None, metadata=_meta("skip larger files; null means no limit", minimum=1)
    )
    pause_initial_s: float = field(
        default=30.0,
        metadata=_meta("after 401/403/402: wait before one probe", minimum=0, exclusive_min=True),
    )
    pause_max_s: float = field(
        default=600.0,
        metadata=_meta("longest wait between probes", minimum=0, exclusive_min=True),
    )
    max_bytes_per_s: int | None = field(
        default=None,
        metadata=_meta(
            "bytes per second for all workers (50M, 500k); null: none", 1, byte_rate=True
        ),
    )
    schedule: tuple[ScheduleWindow, ...] = field(
        default=(), metadata=_meta("windows with their own byte rate; the first match wins")
    )
    order: Literal["oldest", "newest", "smallest", "largest", "path"] = field(
        default="oldest",
        metadata=_meta("backlog order: oldest | newest | smallest | largest | path"),
    )


@dataclass(frozen=True)
class RateLimitsConfig:
    upload_per_s: float = field(
        default=1.0, metadata=_meta("upload request starts per second", 0, exclusive_min=True)
    )
    metadata_per_s: float = field(
        default=1.0, metadata=_meta("metadata requests per second", 0, exclusive_min=True)
    )
    signed_url_per_s: float = field(
        default=1.0, metadata=_meta("signed-URL allocations per second", 0, exclusive_min=True)
    )
    burst: int = field(default=1, metadata=_meta("bucket capacity", minimum=1))
    cooldown_initial_s: float = field(
        default=2.0, metadata=_meta("first cool-down after a 400/429", 0, exclusive_min=True)
    )
    cooldown_max_s: float = field(
        default=300.0, metadata=_meta("longest cool-down", minimum=0, exclusive_min=True)
    )


@dataclass(frozen=True)
class PollConfig:
    initial_s: float = field(
        default=5.0, metadata=_meta("first status poll after upload", 0, exclusive_min=True)
    )
    max_s: float = field(
        default=3600.0, metadata=_meta("longest gap between polls", 0, exclusive_min=True)
    )


@dataclass(frozen=True)
class ShutdownConfig:
    grace_s: float = field(
        default=20.0, metadata=_meta("time in-flight uploads get to finish", minimum=0)
    )


@dataclass(frozen=True)
class HttpConfig:
    listen: str | None = field(
        default="127.0.0.1:9477",
        metadata=_meta("HOST:PORT or unix:/path for /healthz, /metrics...; null disables"),
    )
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata=_meta("more names the endpoint answers to in the Host header (no port)"),
    )


@dataclass(frozen=True)
class HooksConfig:
    on_success: tuple[str, ...] = field(
        default=(), metadata=_meta("command (argv, no shell) run when an asset is SUCCESS")
    )
    on_failed: tuple[str, ...] = field(
        default=(), metadata=_meta("command (argv, no shell) run when syncd gives up on a file")
    )
    webhook_url: str | None = field(
        default=None, metadata=_meta("POST each outcome as JSON here; null: no webhook")
    )
    webhook_secret_file: str | None = field(
        default=None, metadata=_meta("file holding the HMAC-SHA256 signing secret", absolute=True)
    )
    timeout_s: float = field(
        default=30.0, metadata=_meta("longest run of a command or webhook call", 0, True)
    )
    concurrency: int = field(default=2, metadata=_meta("hooks running at once", minimum=1))
    max_attempts: int = field(default=10, metadata=_meta("attempts before a hook is given up", 1))
    backoff_initial_s: float = field(
        default=5.0, metadata=_meta("first retry delay of a failed hook", 0, exclusive_min=True)
    )
    backoff_max_s: float = field(
        default=3600.0, metadata=_meta("longest retry delay of a hook", 0, exclusive_min=True)
    )


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata=_meta("log level")
    )
    format: Literal["auto", "text", "json"] = field(
        default="auto", metadata=_meta("auto: text on a terminal, JSON lines otherwise")
    )


@dataclass(frozen=True)
class Config:
    watch: tuple[WatchRoot, ...] = field(default=(), metadata=_meta("folders to watch"))
    api: ApiConfig = field(default_factory=ApiConfig, metadata=_meta("the remote API"))
    settle: SettleConfig = field(default_factory=SettleConfig, metadata=_meta("completeness"))
    ledger: LedgerConfig = field(default_factory=LedgerConfig, metadata=_meta("the ledger"))
    fleet: FleetConfig = field(default_factory=FleetConfig, metadata=_meta("several hosts"))
    scan: ScanConfig = field(default_factory=ScanConfig, metadata=_meta("rescans"))
    upload: UploadConfig = field(default_factory=UploadConfig, metadata=_meta("uploads"))
    rate_limits: RateLimitsConfig = field(
        default_factory=RateLimitsConfig, metadata=_meta("request pacing")
    )
    poll: PollConfig = field(default_factory=PollConfig, metadata=_meta("status polling"))
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig, metadata=_meta("shutdown"))
    http: HttpConfig = field(default_factory=HttpConfig, metadata=_meta("local HTTP endpoint"))
    hooks: HooksConfig = field(default_factory=HooksConfig, metadata=_meta("after an upload"))
    log: LogConfig = field(default_factory=LogConfig, metadata=_meta("logging"))
    # Where the settings came from; not a YAML key.
    source: str = field(default="<defaults>", metadata={"internal": True})


# --------------------------------------------------------------------------------------------
# Validation: walk a YAML document against the dataclasses, collecting every problem.


_MISSING = object()
_LARGEST = 10**15  # bytes: about a petabyte; seconds: 30 million years


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, path: str, meta: Mapping[str, Any], problems: Problems) -> Any:
    """Given a YAML value and a target type, return the converted value or ``_MISSING``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1:
            return _convert(value, non_null[0], path, meta, problems)
        problems.add(path, f"expected {_type_name(tp)}")
        return _MISSING
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            problems.add(path, f"expected one of {', '.join(map(str, allowed))}, got {value!r}")
            return _MISSING
        return value
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.add(path, f"expected a list, got {_yaml_kind(value)}")
            return _MISSING
        items = [_convert(v, item_tp, f"{path}[{i}]", {}, problems) for i, v in enumerate(value)]
        return _MISSING if any(i is _MISSING for i in items) else tuple(items)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if tp is bool:
        if not isinstance(value, bool):
            problems.add(path, f"expected true or false, got {_yaml_kind(value)}")
            return _MISSING
        return value
    if tp is int and meta.get("byte_rate") and isinstance(value, str):
        try:
            value = parse_byte_rate(value)
        except ValueError as exc:
            problems.add(path, str(exc))
            return _MISSING
    if tp is int or tp is float:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if tp is float:
            ok = ok or isinstance(value, float)
        if not ok:
            problems.add(path, f"expected {_type_name(tp)}, got {_yaml_kind(value)}")
            return _MISSING
        if isinstance(value, float) and not math.isfinite(value):
            # YAML's .nan and .inf: every comparison with NaN is false, so it would pass any
            # minimum and then stall or spin whatever paces or waits by it.
            problems.add(path, f"must be a finite number, got {value}")
            return _MISSING
        if abs(value) > _LARGEST:
            # No setting means anything this large; it also keeps float() of a 400-digit
            # integer from raising OverflowError.
            problems.add(path, "is far too large (at most 10^15)")
            return _MISSING
        minimum = meta.get("minimum")
        if minimum is not None:
            if meta.get("exclusive_min") and value <= minimum:
                problems.add(path, f"must be greater than {minimum}, got {value}")
                return _MISSING
            if value < minimum:
                problems.add(path, f"must be at least {minimum}, got {value}")
                return _MISSING
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            problems.add(path, f"expected a string, got {_yaml_kind(value)}")
            return _MISSING
        if meta.get("absolute") and not os.path.isabs(value):
            problems.add(path, f"must be an absolute path, got {value!r}")
            return _MISSING
        return value
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in the schema, not in the input


def _yaml_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _build(cls: Any, data: Any, path: str, problems: Problems) -> Any:
    if not isinstance(data, dict):
        problems.add(path, f"expected a mapping, got {_yaml_kind(data)}")
        return _MISSING
    hints = typing.get_type_hints(cls)
    fields = {_key(f): f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    ok = True
    for key in data:
        if key not in fields:
            near = ", ".join(sorted(fields))
            problems.add(_join(path, str(key)), f"unknown key (known here: {near})")
            ok = False
    for name, f in fields.items():
        sub = _join(path, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.add(sub, "required key is missing")
                ok = False
            continue
        value = _convert(data[name], hints[f.name], sub, f.metadata, problems)
        if value is _MISSING:
            ok = False
        else:
            kwargs[f.name] = value
    return cls(**kwargs) if ok else _MISSING


def _key(f: dataclasses.Field[Any]) -> str:
    """A field's YAML key."""
    return str(f.metadata.get("key") or f.name)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_config(data: Any, source: str) -> Config:
    """Validate a parsed YAML document.

    Given the document (``None`` for an empty file) and a name for messages; returns the
    frozen :class:`Config`; raises :class:`ConfigError` listing every problem.
    """
    problems = Problems()
    cfg = _build(Config, {} if data is None else data, "", problems)
    if cfg is not _MISSING:
        check_semantics(cfg, problems)
    if problems.items:
        raise ConfigError(source, problems.items)
    result: Config = dataclasses.replace(cfg, source=source)
    return result


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    PyYAML keeps the last of two equal keys without a word, so a second ``watch:`` section
    would silently drop the folders of the first. Keys merged in with ``<<`` may still be
    overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Mark] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                earlier = first.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if earlier is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given at line {earlier.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads 17:30 as the base-60 number 1050, so a time of day written without quotes
# would be a number; YAML 1.2 dropped base 60. The config loader follows 1.2 here: the same
# resolvers as SafeLoader, less the base-60 branch of integers and floats.
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    _INT_TAG,
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_StrictLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file.

    Given its path; returns the :class:`Config`; raises :class:`ConfigError` for an unreadable
    file, invalid YAML (with line and column) or any schema problem.
    """
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, [f"<file>: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(name, [f"<file>: not UTF-8 text ({exc.reason})"]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, started = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and started and mark and started.line != mark.line:
            # Where an unclosed bracket or quote began is where the mistake usually is.
            what += f" ({context} at line {started.line + 1}, column {started.column + 1})"
        raise ConfigError(name, [f"<yaml>: invalid YAML at {where}: {what}"]) from None
    return parse_config(data, name)


def config_path_from(cli_value: str | None) -> str:
    """Return the config path: the ``-c`` value, else ``$SYNCD_CONFIG``, else the default."""
    return cli_value or os.environ.get("SYNCD_CONFIG") or DEFAULT_CONFIG_PATH


def effective_config(cfg: Config) -> dict[str, Any]:
    """Return the settings as plain data (for ``syncd config check``); holds no key."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {
                _key(f): plain(getattr(v, f.name))
                for f in dataclasses.fields(v)
                if not f.metadata.get("internal")
            }
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    result: dict[str, Any] = plain(cfg)
    return result


def schema_docs() -> list[tuple[str, str, str]]:
    """Return ``(key path, type, doc)`` for every key, for docs and the example-config test."""
    rows: list[tuple[str, str, str]] = []

    def walk(cls: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            tp = hints[f.name]
            path = _join(prefix, _key(f))
            rows.append((path, _type_name(tp), f.metadata.get("doc", "")))
            inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
            if dataclasses.is_dataclass(inner):
                walk(inner, path + ("[]" if inner is not tp else ""))

    walk(Config, "")
    return rows
