"""Config of what follows an upload and of transfer shaping: byte rates written as people
write them, the transfer timetable, clean-up and sidecars per root, the hooks; every bad value
is one line with its key path, from the schema and from ``syncd config check``."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from samples import write_media

from syncd.config import (
    Config,
    LedgerConfig,
    WatchRoot,
    effective_config,
    load_config,
    parse_config,
)
from syncd.errors import EXIT_CONFIG, ConfigError
from syncd.ops import plan
from syncd.units import parse_clock_time, parse_days

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"


def aged_media(folder: Path, count: int) -> None:
    """``count`` media files in ``folder``, last written an hour ago (settled)."""
    folder.mkdir(parents=True)
    for i in range(count):
        write_media(folder / f"{i}.mp4", seed=i)
        os.utime(folder / f"{i}.mp4", (time.time() - 3600,) * 2)


def problems_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "test")
    return info.value.problems


def test_byte_rates_may_be_written_with_units() -> None:
    cfg = parse_config(
        {
            "upload": {
                "max_bytes_per_s": "50M",
                "schedule": [
                    {"days": ["weekdays"], "from": "09:00", "to": "17:00", "max_bytes_per_s": 0},
                    {"days": ["sat"], "from": "22:00", "to": "06:00", "max_bytes_per_s": "8MiB"},
                ],
            }
        },
        "test",
    )
    assert cfg.upload.max_bytes_per_s == 50_000_000
    assert [w.max_bytes_per_s for w in cfg.upload.schedule] == [0, 8 * 1024 * 1024]
    assert cfg.upload.schedule[0].from_ == "09:00"
    shown = effective_config(cfg)["upload"]["schedule"][0]
    assert list(shown) == ["days", "from", "to", "max_bytes_per_s"]


def test_times_of_day_without_quotes_are_read_as_times(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "upload:\n  schedule:\n    - {days: [mon], from: 9:30, to: 17:00, max_bytes_per_s: 1M}\n"
        "  workers: 8\n  backoff_initial_s: 1.5\n"
    )
    cfg = load_config(path)
    window = cfg.upload.schedule[0]
    assert (window.from_, window.to) == ("9:30", "17:00")  # not YAML 1.1's 570 and 1020
    assert (cfg.upload.workers, cfg.upload.backoff_initial_s) == (8, 1.5)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"upload": {"max_bytes_per_s": "fast"}}, "upload.max_bytes_per_s: expected a byte count"),
        ({"upload": {"max_bytes_per_s": 0}}, "upload.max_bytes_per_s: must be at least 1"),
        ({"upload": {"max_bytes_per_s": "0.5"}}, "upload.max_bytes_per_s: is not a whole number"),
        (
            {"upload": {"schedule": [{"days": ["mon"], "from": "1:00", "to": "2:00"}]}},
            "upload.schedule[0].max_bytes_per_s: required key is missing",
        ),
        (
            {
                "upload": {
                    "schedule": [
                        {"days": ["x"], "from": "1:00", "to": "2:00", "max_bytes_per_s": 1}
                    ]
                }
            },
            "upload.schedule[0].days: expected day names",
        ),
        (
            {
                "upload": {
                    "schedule": [
                        {"days": ["mon"], "from": "25:00", "to": "2:00", "max_bytes_per_s": 1}
                    ]
                }
            },
            "upload.schedule[0].from: expected a time of day HH:MM",
        ),
        (
            {
                "upload": {
                    "schedule": [
                        {"days": ["mon"], "from": "2:00", "to": "2:00", "max_bytes_per_s": 1}
                    ]
                }
            },
            "upload.schedule[0].to: equals from",
        ),
        (
            {
                "upload": {
                    "schedule": [
                        {"days": ["mon"], "from": "24:00", "to": "2:00", "max_bytes_per_s": 1}
                    ]
                }
            },
            "upload.schedule[0].from: a window cannot start at 24:00",
        ),
        (
            {
                "upload": {
                    "schedule": [
                        {"days": ["mon"], "from": "1:00", "to": "2:00", "max_bytes_per_s": -1}
                    ]
                }
            },
            "upload.schedule[0].max_bytes_per_s: must be at least 0",
        ),
    ],
)
def test_each_bad_value_is_one_line_with_its_key_path(doc: dict[str, Any], expected: str) -> None:
    problems = problems_of(doc)
    assert any(p.startswith(expected) for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_the_schedule_windows_shown_in_the_example_are_valid() -> None:
    lines = [
        line.strip().removeprefix("#").strip()
        for line in EXAMPLE.read_text().splitlines()
        if re.match(r"\s*#\s+- \{days:", line)
    ]
    assert lines, "config.example.yaml shows no schedule window"
    windows = yaml.safe_load("\n".join(lines))
    cfg = parse_config({"upload": {"schedule": windows}}, "example")
    for window in cfg.upload.schedule:
        parse_days(window.days)
        parse_clock_time(window.from_)
        parse_clock_time(window.to)


def test_config_check_lists_every_problem_and_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "upload:\n  schedule:\n"
        "    - {days: [someday], from: 1:00, to: 2:00, max_bytes_per_s: 5M}\n"
        "    - {days: [mon], from: 1:00, to: 1:00, max_bytes_per_s: 5M}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAVI_")}
    proc = subprocess.run(
        [sys.executable, "-m", "syncd", "config", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EXIT_CONFIG
    assert "Traceback" not in proc.stderr
    for key in ("upload.schedule[0].days: ", "upload.schedule[1].to: "):
        assert re.search(rf"^  - {re.escape(key)}", proc.stderr, flags=re.M), proc.stderr


def test_the_example_sets_no_byte_limit() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.upload.max_bytes_per_s is None and cfg.upload.schedule == ()


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"watch": [{"path": "/srv/a", "after_success": "remove"}]},
            "watch[0].after_success: expected one of keep, delete, move",
        ),
        (
            {"watch": [{"path": "/srv/a", "after_success": "move"}]},
            "watch[0].move_to: required when after_success is move",
        ),
        (
            {"watch": [{"path": "/srv/a", "move_to": "/srv/done"}]},
            "watch[0].move_to: only used with after_success: move",
        ),
        (
            {"watch": [{"path": "/srv/a", "after_success": "move", "move_to": "done"}]},
            "watch[0].move_to: must be an absolute path",
        ),
        (
            {
                "watch": [
                    {"path": "/srv/a"},
                    {"path": "/srv/b", "after_success": "move", "move_to": "/srv/a/done"},
                ]
            },
            "watch[1].move_to: must lie outside every watched folder (watch[0].path)",
        ),
        (
            {"watch": [{"path": "/srv/a", "after_success": "move", "move_to": "/srv"}]},
            "watch[0].move_to: must lie outside every watched folder (watch[0].path)",
        ),
        ({"watch": [{"path": "/srv/a", "sidecar": "yes"}]}, "watch[0].sidecar: expected true"),
        ({"hooks": {"on_success": "notify.sh"}}, "hooks.on_success: expected a list"),
        ({"hooks": {"webhook_url": "ftp://h/x"}}, "hooks.webhook_url: must start with http"),
        ({"hooks": {"webhook_url": "https:///x"}}, "hooks.webhook_url: has no host name"),
        (
            {"hooks": {"webhook_secret_file": "/etc/s"}},
            "hooks.webhook_secret_file: only used with hooks.webhook_url",
        ),
        (
            {"hooks": {"webhook_url": "https://h/x", "webhook_secret_file": "s"}},
            "hooks.webhook_secret_file: must be an absolute path",
        ),
        ({"hooks": {"timeout_s": 0}}, "hooks.timeout_s: must be greater than 0"),
        ({"hooks": {"concurrency": 0}}, "hooks.concurrency: must be at least 1"),
        (
            {"hooks": {"backoff_initial_s": 10, "backoff_max_s": 5}},
            "hooks.backoff_initial_s: must not exceed hooks.backoff_max_s",
        ),
        ({"hooks": {"shell": "x"}}, "hooks.shell: unknown key"),
        ({"hooks": {"on_failed": [""]}}, "hooks.on_failed[0]: the program to run is empty"),
    ],
)
def test_each_bad_clean_up_or_hook_value_is_one_line_with_its_key_path(
    doc: dict[str, Any], expected: str
) -> None:
    problems = problems_of(doc)
    assert any(p.startswith(expected) for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_the_example_keeps_every_file_and_runs_no_hook() -> None:
    cfg = load_config(EXAMPLE)
    assert all(root.after_success == "keep" and not root.sidecar for root in cfg.watch)
    assert cfg.hooks.on_success == ()
    assert cfg.hooks.webhook_url is None


async def test_plan_counts_the_files_that_would_be_deleted_or_moved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox, camera, done = tmp_path / "inbox", tmp_path / "camera", tmp_path / "done"
    aged_media(inbox, 2)
    aged_media(camera, 3)
    aged_media(tmp_path / "kept", 1)
    cfg = Config(
        watch=(
            WatchRoot(path=str(inbox), after_success="delete"),
            WatchRoot(path=str(camera), after_success="move", move_to=str(done)),
            WatchRoot(path=str(tmp_path / "kept")),
        ),
        ledger=LedgerConfig(path=str(tmp_path / "state" / "ledger.db")),
    )
    parser = argparse.ArgumentParser()
    plan.add_arguments(parser)
    assert await plan.run(parser.parse_args(["--json"]), cfg) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["after_success"] == {"delete": 2, "move": 3}
    assert doc["categories"]["upload"]["files"] == 6
    assert sorted(os.listdir(inbox)) == ["0.mp4", "1.mp4"]  # a plan touches nothing
