"""docs/operations.md is the contract: every command of the real parser is documented there
with an example that the parser accepts, every documented command exists, and the JSON keys
the commands print are the ones the page lists."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from syncd.cli import build_parser
from syncd.config import Config, LedgerConfig
from syncd.fingerprint import Fingerprint
from syncd.ledger.sqlite import Ledger
from syncd.metrics import METRICS
from syncd.ops import plan, report

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
_SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>", "&"}


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every leaf command path of the parser: ``run``, ``config check``, ..."""
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                below = commands(sub, (*prefix, name))
                found.extend(below or [" ".join((*prefix, name))])
    return found


def sections() -> dict[str, str]:
    """``### syncd COMMAND`` heading -> the text up to the next heading."""
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    out: dict[str, str] = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        m = re.fullmatch(r"### syncd ([a-z][a-z -]*)", heading.strip())
        if m:
            out[m[1].strip()] = body
    return out


def examples(body: str) -> list[list[str]]:
    """The ``syncd ...`` command lines in the ``sh`` code blocks of a section, as argv
    without the program name, cut at the first shell operator."""
    found: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", body, flags=re.S):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if not line.startswith("syncd "):
                continue
            words = shlex.split(line)[1:]
            cut = next((i for i, w in enumerate(words) if w in _SHELL_OPERATORS), len(words))
            found.append(words[:cut])
    return found


def test_every_command_is_documented_with_an_example_that_parses() -> None:
    parser = build_parser()
    documented = sections()
    missing = [c for c in commands(parser) if c not in documented]
    assert not missing, f"commands without a '### syncd X' section in {DOC.name}: {missing}"
    for name, body in documented.items():
        runs = [argv for argv in examples(body) if " ".join(argv).startswith(name)]
        assert runs, f"section 'syncd {name}' has no ```sh example running it"
        for argv in runs:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    parser.parse_args(argv)
                except SystemExit as exc:
                    shown = shlex.join(argv)
                    pytest.fail(f"example `syncd {shown}` does not parse: {err.getvalue()} ({exc})")


def test_every_documented_command_exists() -> None:
    real = set(commands(build_parser()))
    stale = [name for name in sections() if name not in real]
    assert not stale, f"{DOC.name} documents commands the CLI does not have: {stale}"


def test_exit_codes_are_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for code in (0, 1, 2, 65, 69, 70, 73, 74, 75, 78):
        assert re.search(rf"^\| {code} \|", text, flags=re.M), f"exit code {code} missing"


def test_metrics_are_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for spec in METRICS:
        assert f"`{spec.name}`" in text, f"metric {spec.name} is not in {DOC.name}"


async def test_json_keys_are_documented(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    path = str(tmp_path / "ledger.db")
    led = await Ledger.open(path)
    try:
        await led.record_content("/m/a.mp4", "/m", Fingerprint(1, 1, 1, 1, 1), "ab" * 32, "mp4")
        att = await led.begin_attempt("ab" * 32, "/m/a.mp4", "direct")
        await led.finish_upload(
            "ab" * 32, att, "re_1", bytes_sent=1, http_status=200, next_poll_at=0
        )
        await led.record_path_state("/m/odd\udce9.mp4", "/m", "unsettled", None)
        show = await report.show_data(led, await report.resolve(led, "ab" * 32, filesystem=False))
        status = await report.status_data(led, Config(ledger=LedgerConfig(path=path)))
    finally:
        await led.close()
    keys: set[str] = set(show) | set(report.LS_COLUMNS) | set(status)
    keys |= set(show["paths"][0]) | set(show["attempts"][0])
    keys |= set(status["daemon"]) | set(status["backlog"]) | set(status["oldest_waiting"])
    keys |= set(status["rate"]) | set(status["rate"]["upload"])
    keys |= set(status["rate"]["upload"]["last_minute"])
    doc = plan.plan_document(Config(), plan.Plan(), ledger_exists=False)
    keys |= set(doc) | set(doc["categories"]) | set(doc["requests"]) | set(doc["ledger"])
    undocumented = sorted(k for k in keys if f"`{k}`" not in text)
    assert not undocumented, f"JSON keys missing from {DOC.name}: {undocumented}"
