"""Command line: the only place that sets up logging and maps errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from syncd import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every ``syncd`` command."""
    parser = argparse.ArgumentParser(prog="syncd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0
