"""syncd: watch folders and upload every new media file to the MAVI v2 API, exactly once.

The command line is the only place that sets up logging and maps errors to exit codes: every
failure a user can cause is one line on stderr and a distinct exit status, never a traceback
(``--debug`` shows one for internal errors).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from syncd import __version__
from syncd.apikey import resolve_api_key
from syncd.config import (
    Config,
    config_path_from,
    effective_config,
    load_config,
)
from syncd.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_SOFTWARE,
    ConfigError,
    SyncdError,
)
from syncd.logs import add_secret, close_logging, setup_logging

if TYPE_CHECKING:
    from syncd.ops.live import Snapshot

log = logging.getLogger("syncd.cli")

Handler = Callable[[argparse.Namespace], Awaitable[int] | int]


def _add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="config file (default: $SYNCD_CONFIG or /etc/syncd/config.yaml)",
    )


def _load(args: argparse.Namespace) -> Config:
    return load_config(config_path_from(getattr(args, "config", None)))


# ------------------------------------------------------------------------------ daemon commands


def _require_roots(cfg: Config) -> None:
    if not cfg.watch:
        raise ConfigError(cfg.source, ["watch: at least one folder to watch is needed"])


async def _cmd_run(args: argparse.Namespace) -> int:
    from syncd.daemon import Daemon

    path = config_path_from(args.config)
    cfg = load_config(path)
    _require_roots(cfg)
    _configure_logging(args, cfg, queued=True)
    key = resolve_api_key(cfg)
    add_secret(key)
    return await Daemon(cfg, key, config_path=path).run()


async def _cmd_sync(args: argparse.Namespace) -> int:
    from syncd.daemon import Daemon

    if not args.once:
        raise ConfigError("syncd sync", ["only --once is supported; use `syncd run` to keep going"])
    path = config_path_from(args.config)
    cfg = load_config(path)
    _require_roots(cfg)
    _configure_logging(args, cfg, queued=True)
    key = resolve_api_key(cfg)
    add_secret(key)
    progress = Progress(sys.stderr)
    code = await Daemon(cfg, key, config_path=path, once=True, progress=progress).run()
    progress.finish()
    return code


class Progress:
    """``sync --once`` progress: a live bar on a terminal, a plain line every 10 s otherwise."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.last_line = 0.0
        self.drawn = False

    def __call__(self, s: Snapshot) -> None:
        """Given the daemon's snapshot at a heartbeat, draw or print the progress line."""
        elapsed = max(0.001, time.monotonic() - self.started)
        rate = s.bytes_sent / elapsed
        left = s.backlog_bytes
        eta = f"ETA {_human_seconds(left / rate)}" if rate > 0 and left else "ETA -"
        text = (
            f"uploaded {s.uploaded} file(s), {_human_bytes(s.bytes_sent)} "
            f"({_human_bytes(rate)}/s), {_human_bytes(left)} left, {eta}; done "
            f"{s.done}, in flight {s.in_flight}, settling {s.settling}"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
            self.drawn = True
        elif time.monotonic() - self.last_line >= 10:
            self.last_line = time.monotonic()
            self.stream.write(text + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _human_seconds(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ------------------------------------------------------------------------------ config, ledger


def _cmd_config_check(args: argparse.Namespace) -> int:
    path = args.file or config_path_from(args.config)
    cfg = load_config(path)
    data = effective_config(cfg)
    try:
        resolve_api_key(cfg)
        key_state = "found (never shown)"
    except ConfigError as exc:
        key_state = f"not usable: {exc.problems[0]}"
    if args.json:
        print(json.dumps({"ok": True, "file": path, "api_key": key_state, "config": data}))
    else:
        print(f"# {path}: valid; API key {key_state}")
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    return EXIT_OK


async def _cmd_ledger_backup(args: argparse.Namespace) -> int:
    from syncd.ledger.sqlite import Ledger

    cfg = _load(args)
    dest = await asyncio.to_thread(os.path.abspath, args.dest)
    ledger = await Ledger.open(cfg.ledger.path, readonly=True, check=True)
    try:
        await ledger.backup(dest)
    finally:
        await ledger.close()
    print(f"ledger {cfg.ledger.path} backed up to {args.dest}")
    return EXIT_OK


async def _cmd_ledger_migrate(args: argparse.Namespace) -> int:
    from syncd.ledger.postgres import PostgresLedger
    from syncd.ledger.transfer import migrate_sqlite

    source = str(args.source)
    if not source.startswith("sqlite:") or not os.path.isabs(source[len("sqlite:") :]):
        raise SyncdError(f"--from must be sqlite:/absolute/path/ledger.db, got {source!r}")
    path = source[len("sqlite:") :]
    target = args.target
    host = args.host
    if target is None or host is None:
        cfg = _load(args)
        target = target or cfg.ledger.url
        host = host or cfg.fleet.host_name
    if not target:
        raise SyncdError("--to is missing and the config sets no ledger.url")
    store = await PostgresLedger.open(target, host=host, renew_every_s=3600)
    try:

        def progress(table: str, done: int, total: int) -> None:
            print(f"{table}: {done}/{total}", file=sys.stderr)

        report = await migrate_sqlite(path, store, on_progress=progress)
    finally:
        await store.close()
    print(
        f"ledger {path} copied into {store.path} as host {store.host}: "
        f"{report.contents_new} new content(s), {report.contents_merged} merged, "
        f"{report.paths} path(s), {report.attempts} attempt(s); all {report.asset_ids} "
        "asset id(s) kept"
    )
    return EXIT_OK


async def _cmd_ledger_check(args: argparse.Namespace) -> int:
    from syncd.ledger.sqlite import Ledger

    cfg = _load(args)
    ledger = await Ledger.open(cfg.ledger.path, readonly=True, check=False)
    try:
        problems = await ledger.integrity_problems(quick=False)
    finally:
        await ledger.close()
    if problems:
        print(f"ledger {cfg.ledger.path}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems[:20]:
            print(f"  - {p}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"ledger {cfg.ledger.path}: ok")
    return EXIT_OK


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    # Imported here: urllib.request costs every other command (`syncd run` too) ~13 ms.
    import urllib.error
    import urllib.request

    url = args.url or os.environ.get("SYNCD_HEALTH_URL")
    if url is None:
        listen = (
            _load(args).http.listen if (args.config or os.environ.get("SYNCD_CONFIG")) else None
        )
        listen = listen or "127.0.0.1:9477"
        if listen.startswith("unix:"):
            raise ConfigError("syncd healthcheck", ["http.listen is a Unix socket; pass --url"])
        host, _, port = listen.rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - probe, not bind
        url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout_s) as resp:  # noqa: S310 - http only
            ok = resp.status == 200
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if ok else EXIT_FAILURE


# ------------------------------------------------------------------------------ emulator, demo


def _cmd_emulator(args: argparse.Namespace) -> int:
    from syncd.emulator.main import run

    return run(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    inbox = os.path.abspath(args.inbox)
    data = os.path.abspath(args.data)
    os.makedirs(inbox, exist_ok=True)
    os.makedirs(data, mode=0o700, exist_ok=True)
    here = os.getcwd()
    me = os.path.relpath(sys.argv[0], here) if os.sep in sys.argv[0] else "syncd"
    hints = {
        "inbox": os.path.relpath(inbox, here),
        "config": os.path.relpath(os.path.join(data, "config.yaml"), here),
        "me": me,
    }
    return asyncio.run(_demo(args, inbox, data, hints))


async def _demo(args: argparse.Namespace, inbox: str, data: str, hints: dict[str, str]) -> int:
    from syncd.daemon import Daemon
    from syncd.emulator import DEMO_KEY, EmulatorServer, EmulatorSettings

    settings = EmulatorSettings(
        data_dir=os.path.join(data, "emulator"), waiting_s=1.0, uploading_s=2.0
    )
    async with EmulatorServer(settings, port=args.port) as emulator:
        cfg_path = os.path.join(data, "config.yaml")
        demo_config = {
            "api": {"base_url": emulator.base_url},
            "watch": [{"path": inbox}],
            "ledger": {"path": os.path.join(data, "ledger.db")},
            "settle": {"quiet_s": 2},
            "poll": {"initial_s": 2},
            "http": {"listen": args.http},
            "log": {"format": "text"},
        }
        await asyncio.to_thread(_write_yaml, cfg_path, demo_config)
        cfg = await asyncio.to_thread(load_config, cfg_path)
        _configure_logging(args, cfg)
        me, rel_inbox, rel_cfg = hints["me"], hints["inbox"], hints["config"]
        print(
            f"syncd demo: the MAVI v2 emulator runs at {emulator.base_url} "
            f"(key {DEMO_KEY}, 1 request/s per endpoint, like the real service)\n"
            f"            syncd watches {inbox}\n"
            f"  drop a file:  cp some-video.mp4 {rel_inbox}/\n"
            f"  look it up:   {me} show {rel_inbox}/some-video.mp4 -c {rel_cfg}\n"
            f"  everything:   {me} ls -c {rel_cfg}      progress: {me} status -c {rel_cfg}\n"
            f"  the emulator: curl {emulator.root_url}/_emulator/assets\n"
            "  stop:         Ctrl-C",
            flush=True,
        )
        if not args.no_sample:
            await asyncio.to_thread(_write_sample_png, os.path.join(inbox, "syncd-sample.png"))
        return await Daemon(cfg, DEMO_KEY, config_path=cfg_path).run()


def _write_yaml(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)


def _write_sample_png(path: str) -> None:
    """A real 64x64 PNG, so the demo has something to upload straight away."""
    import struct
    import zlib

    if os.path.exists(path):
        return
    width = height = 64
    rows = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in (x * 4 % 256, y * 4 % 256, 160))
        for y in range(height)
    )

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    tmp = os.path.join(os.path.dirname(path), ".syncd-sample.png.tmp")
    with open(tmp, "wb") as f:
        f.write(png)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ parser and main


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every ``syncd`` command."""
    parser = argparse.ArgumentParser(
        prog="syncd",
        description="Watch folders and upload new media files to the MAVI v2 API, exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (watch, settle, hash, upload, poll)")
    _add_config_option(p)
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("sync", help="scan, upload everything due, wait for final statuses, exit")
    _add_config_option(p)
    p.add_argument("--once", action="store_true", help="required: one pass, then exit")
    p.set_defaults(handler=_cmd_sync)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    pc = csub.add_parser("check", help="validate a config and print the effective settings")
    pc.add_argument("file", nargs="?", help="config file (default: -c, $SYNCD_CONFIG, /etc)")
    _add_config_option(pc)
    pc.add_argument("--json", action="store_true", help="machine-readable output")
    pc.set_defaults(handler=_cmd_config_check)

    p = sub.add_parser("ledger", help="ledger maintenance")
    lsub = p.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND", required=True)
    pb = lsub.add_parser("backup", help="write a consistent online copy of the ledger")
    pb.add_argument("dest", metavar="PATH", help="where to write the copy (must not exist)")
    _add_config_option(pb)
    pb.set_defaults(handler=_cmd_ledger_backup)
    pk = lsub.add_parser("check", help="run SQLite's full integrity check on the ledger")
    _add_config_option(pk)
    pk.set_defaults(handler=_cmd_ledger_check)
    pm = lsub.add_parser(
        "migrate", help="copy a host's SQLite ledger into the fleet's PostgreSQL ledger"
    )
    pm.add_argument(
        "--from", dest="source", required=True, metavar="sqlite:PATH", help="the SQLite ledger"
    )
    pm.add_argument("--to", dest="target", metavar="postgresql://...", help="default: ledger.url")
    pm.add_argument("--host", help="the host the ledger belonged to (default: fleet.host_name)")
    _add_config_option(pm)
    pm.set_defaults(handler=_cmd_ledger_migrate)

    p = sub.add_parser("healthcheck", help="exit 0 if the running daemon's /healthz answers 200")
    _add_config_option(p)
    p.add_argument("--url", help="URL to probe (default: $SYNCD_HEALTH_URL, else http.listen)")
    p.add_argument("--timeout-s", type=float, default=5.0, help="give up after this long")
    p.set_defaults(handler=_cmd_healthcheck)

    p = sub.add_parser("emulator", help="run the bundled MAVI v2 API emulator")
    from syncd.emulator.main import add_arguments as add_emulator_arguments

    add_emulator_arguments(p)
    p.set_defaults(handler=_cmd_emulator, quiet_logs=True)

    p = sub.add_parser("demo", help="the emulator plus the daemon watching ./inbox")
    p.add_argument("--inbox", default="inbox", help="folder to watch (default ./inbox)")
    p.add_argument("--data", default="demo-data", help="ledger, config, emulator store")
    p.add_argument("--port", type=int, default=8765, help="emulator port (0: any)")
    p.add_argument("--http", default="127.0.0.1:9477", help="daemon's status endpoint")
    p.add_argument("--no-sample", action="store_true", help="do not drop a sample image")
    p.set_defaults(handler=_cmd_demo)

    _add_operator_commands(sub)
    return parser


def _add_operator_commands(sub: Any) -> None:
    """Query and maintenance commands that read the ledger (see docs/operations.md)."""
    from syncd.ops import doctor, plan, report

    for cmd in (*report.COMMANDS, plan.COMMAND, doctor.COMMAND):
        p = sub.add_parser(cmd.name, help=cmd.help)
        _add_config_option(p)
        cmd.add_arguments(p)
        p.set_defaults(handler=_operator_handler(cmd))


def _operator_handler(cmd: Any) -> Handler:
    async def handler(args: argparse.Namespace) -> int:
        result: int = await cmd.run(args, _load(args))
        return result

    return handler


def _configure_logging(
    args: argparse.Namespace, cfg: Config | None, *, queued: bool = False
) -> None:
    # ``queued`` (the daemon's commands): its lines are written by a thread of their own, so
    # a line per file does not stall the event loop on a write to stderr; main() writes what
    # is still queued before it prints an error or returns.
    level = "debug" if args.debug else (cfg.log.level if cfg else "warning")
    fmt = cfg.log.format if cfg else "auto"
    setup_logging(level, fmt, queued=queued)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    # A watchdog kill (SIGABRT) or a fatal signal prints every thread's stack to stderr.
    faulthandler.enable()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    # Commands that load a config re-configure logging from it; until then, quiet text.
    setup_logging("debug" if args.debug else "warning", "auto")
    handler: Handler = args.handler
    try:
        try:
            result = handler(args)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
        finally:
            close_logging()  # every line logged is out before an error is printed below
        return int(result)  # type: ignore[arg-type]
    except ConfigError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SyncdError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `syncd ... | head`: the reader left. Not an error; silence the final flush too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if args.debug:
            log.exception("internal error")
        print(
            f"syncd: internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_SOFTWARE
