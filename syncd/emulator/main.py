"""``syncd emulator``: run the MAVI v2 emulator until SIGINT or SIGTERM.

``add_arguments`` fills a (sub)parser; ``run`` blocks and returns the exit code. Invalid flags
raise :class:`~syncd.errors.ConfigError`; a port or data directory that cannot be used raises
:class:`EmulatorStartError`. Both are one-line :class:`~syncd.errors.SyncdError` messages.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from syncd.emulator.settings import DEMO_ACCOUNT, DEMO_KEY, ENDPOINTS, EmulatorSettings
from syncd.errors import EXIT_OK, EXIT_UNAVAILABLE, ConfigError, SyncdError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# Keys given without an account name all belong to this one (they share its rate limits).
DEFAULT_ACCOUNT = "default"


class EmulatorStartError(SyncdError):
    """The emulator could not start (address in use, unusable data directory). One line."""

    exit_code = EXIT_UNAVAILABLE


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability 0..1, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _bytes(text: str) -> int:
    """Parse a byte count with an optional K/M/G/T suffix (powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(raw[-1:], 1)
    try:
        value = int(float(raw[:-1] if factor != 1 else raw) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a byte count like 20M, got {text}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a byte count >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's flags to ``parser`` (the ``syncd emulator`` subcommand's parser)."""
    net = parser.add_argument_group("listening")
    net.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    net.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one (%(default)s)"
    )
    net.add_argument(
        "--port-file", metavar="PATH", help="write the bound port to PATH once listening"
    )
    net.add_argument(
        "--public-url",
        metavar="URL",
        help="scheme://host:port that signed URLs point at (default: the request's Host)",
    )

    acc = parser.add_argument_group("accounts and storage")
    acc.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="[ACCOUNT:]KEY",
        help="accept this API key (repeatable); keys of one ACCOUNT share its rate limits. "
        f"Without any, the demo key {DEMO_KEY} is accepted",
    )
    acc.add_argument(
        "--keys-file",
        metavar="PATH",
        help="read more [ACCOUNT:]KEY lines from PATH (keeps keys out of `ps`)",
    )
    acc.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep blobs and assets here across restarts (default: a temp dir, removed at exit)",
    )
    acc.add_argument("--credits", type=int, metavar="N", help="402 after N assets (default: ∞)")

    lim = parser.add_argument_group("rate limits")
    lim.add_argument(
        "--rate-limit",
        type=_non_negative,
        metavar="PER_S",
        help="requests per second for every endpoint; 0 disables (default 1)",
    )
    lim.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="ENDPOINT=PER_S",
        help=f"one endpoint's rate (repeatable); endpoints: {', '.join(ENDPOINTS)}",
    )
    lim.add_argument(
        "--rate-algorithm",
        choices=("gcra", "fixed_window"),
        default="gcra",
        help="gcra: 1/rate s since the last allowed request; fixed_window: aligned windows",
    )
    lim.add_argument(
        "--throttle-status",
        type=int,
        choices=(400, 429),
        default=400,
        help="status of a throttled answer (default 400, like the service)",
    )

    val = parser.add_argument_group("validation and processing")
    val.add_argument(
        "--any-format", action="store_true", help="accept any file extension on upload"
    )
    for kind in ("video", "audio", "image"):
        val.add_argument(
            f"--max-{kind}-bytes",
            type=_bytes,
            metavar="SIZE",
            help=f"largest {kind} accepted, e.g. 3G (default: no limit)",
        )
    val.add_argument(
        "--too-large-status",
        type=int,
        default=400,
        help="status for a file over its limit (default 400 with the usual text)",
    )
    val.add_argument(
        "--reject-filename",
        action="append",
        default=[],
        metavar="NAME",
        help="always answer the validation 400 for uploads of this file name (repeatable)",
    )
    val.add_argument("--waiting-s", type=_non_negative, default=1.0, help="seconds WAITING")
    val.add_argument("--uploading-s", type=_non_negative, default=2.0, help="seconds UPLOADING")
    val.add_argument(
        "--fail-fraction", type=_probability, default=0.0, help="share of assets ending FAILED"
    )
    val.add_argument(
        "--signed-url-ttl-s",
        type=float,
        default=93600.0,
        help="lifetime of signed URLs (default %(default)s)",
    )
    val.add_argument(
        "--share-assets-across-accounts",
        action="store_true",
        help="let any account read and delete any asset (default: foreign ids are not found)",
    )

    flt = parser.add_argument_group("random faults (each a probability per request)")
    flt.add_argument("--seed", type=int, help="seed every random decision, for replays")
    flt.add_argument("--error-rate", type=_probability, default=0.0, help="answer --error-status")
    flt.add_argument("--error-status", type=int, default=500, help="(default %(default)s)")
    flt.add_argument("--reset-rate", type=_probability, default=0.0, help="reset mid-body")
    flt.add_argument("--hang-rate", type=_probability, default=0.0, help="never answer")
    flt.add_argument("--latency-rate", type=_probability, default=0.0, help="delay by --latency-s")
    flt.add_argument("--latency-s", type=_non_negative, default=0.0, help="added delay")


def _parse_keys(entries: Sequence[str], problems: list[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for raw in entries:
        text = raw.strip()
        account, sep, key = text.partition(":")
        if not sep:
            account, key = DEFAULT_ACCOUNT, text
        if not key or not account:
            problems.append("--key: expected KEY or ACCOUNT:KEY, got an empty part")
            continue
        keys[key] = account
    return keys


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    """Build settings from parsed flags; raises ConfigError listing every problem."""
    problems: list[str] = []
    entries = list(args.key)
    if args.keys_file:
        try:
            with open(args.keys_file, encoding="utf-8") as f:
                entries += [ln for ln in f.read().splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"--keys-file: cannot read {args.keys_file}: {exc}")
    keys = _parse_keys(entries, problems) if entries else {DEMO_KEY: DEMO_ACCOUNT}
    rates: dict[str, float] = {}
    if args.rate_limit is not None:
        rates = dict.fromkeys(ENDPOINTS, args.rate_limit)
    for item in args.rate:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        try:
            per_s = float(value)
        except ValueError:
            per_s = -1.0
        if not sep or name not in ENDPOINTS or per_s < 0:
            problems.append(
                f"--rate: expected ENDPOINT=PER_S with ENDPOINT in {', '.join(ENDPOINTS)} "
                f"and PER_S >= 0, got {item!r}"
            )
            continue
        rates[name] = per_s
    if problems:
        raise ConfigError("command line", problems)
    fields: dict[str, Any] = {
        "keys": keys,
        "rates": rates,
        "rate_algorithm": args.rate_algorithm,
        "throttle_status": args.throttle_status,
        "check_formats": not args.any_format,
        "max_video_bytes": args.max_video_bytes,
        "max_audio_bytes": args.max_audio_bytes,
        "max_image_bytes": args.max_image_bytes,
        "too_large_status": args.too_large_status,
        "waiting_s": args.waiting_s,
        "uploading_s": args.uploading_s,
        "fail_fraction": args.fail_fraction,
        "seed": args.seed,
        "error_rate": args.error_rate,
        "error_status": args.error_status,
        "reset_rate": args.reset_rate,
        "hang_rate": args.hang_rate,
        "latency_rate": args.latency_rate,
        "latency_s": args.latency_s,
        "credits": args.credits,
        "reject_filenames": frozenset(args.reject_filename),
        "data_dir": args.data_dir,
        "public_url": args.public_url,
        "signed_url_ttl_s": args.signed_url_ttl_s,
        "share_assets_across_accounts": args.share_assets_across_accounts,
    }
    try:
        return EmulatorSettings(**fields)
    except ConfigError as exc:
        raise ConfigError("command line", exc.problems) from None


def _write_port_file(path: str, port: int) -> None:
    # Written whole then renamed: a parent polling for the file never reads half a number.
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".port-", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


async def _serve(settings: EmulatorSettings, args: argparse.Namespace) -> int:
    # Imported here: the daemon's command line reads this module for its flags alone.
    from syncd.emulator.server import EmulatorServer

    if settings.data_dir is not None:
        try:
            await asyncio.to_thread(os.makedirs, settings.data_dir, exist_ok=True)
        except OSError as exc:
            raise EmulatorStartError(
                f"cannot use data dir {settings.data_dir}: {exc.strerror or exc}"
            ) from None
    server = EmulatorServer(settings, host=args.host, port=args.port)
    try:
        await server.start()
    except OSError as exc:
        raise EmulatorStartError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if args.port_file:
            try:
                await asyncio.to_thread(_write_port_file, args.port_file, server.port)
            except OSError as exc:
                raise EmulatorStartError(
                    f"cannot write port file {args.port_file}: {exc.strerror or exc}"
                ) from None
        if DEMO_KEY in settings.keys:
            who = f"key: {DEMO_KEY}"
        else:
            count = len(settings.keys)
            who = f"{count} key{'s' if count != 1 else ''} configured"
        print(f"syncd emulator listening on {server.base_url} ({who})", flush=True)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await server.close()
        if args.port_file:
            await asyncio.to_thread(_remove_quietly, args.port_file)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run the emulator until SIGINT/SIGTERM; returns 0 then.

    Given the flags parsed by a parser that :func:`add_arguments` filled. Raises ConfigError
    for invalid flags and :class:`EmulatorStartError` when it cannot listen or store.
    """
    settings = settings_from_args(args)
    return asyncio.run(_serve(settings, args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m syncd.emulator``: parse, run, report errors in one line."""
    parser = argparse.ArgumentParser(
        prog="syncd emulator", description="Run the MAVI v2 API emulator."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    # ``syncd emulator`` gets its logging from syncd.cli; run alone, print request lines.
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        return run(args)
    except SyncdError as exc:
        print(f"syncd emulator: {exc}", file=sys.stderr)
        return exc.exit_code
