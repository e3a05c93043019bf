"""Smoke test of the benchmark suite: every benchmark runs at a tiny size (``--quick``) and
leaves a well-formed result and report. It measures nothing: no assertion is about speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NAMES = (
    "hashing",
    "restart",
    "bigfile",
    "smallfiles",
    "ratelimit",
    "latency",
    "scaling",
    "dashboard",
    "fleet",
    "idle",
    "backlog",
)


def _check_stat(stat: dict[str, object], where: str) -> None:
    values = stat["values"]
    assert isinstance(values, list) and values, where
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in values), where
    assert stat["n"] == len(values), where
    assert stat["min"] == min(values) and stat["max"] == max(values), where
    assert stat["min"] <= stat["median"] <= stat["max"], where  # type: ignore[operator]
    assert isinstance(stat["unit"], str) and stat["unit"], where


@pytest.mark.timeout(170)
def test_every_benchmark_runs_quick_and_reports(tmp_path: Path) -> None:
    results = tmp_path / "results"
    docs = tmp_path / "benchmarks.md"
    log_path = tmp_path / "bench.log"
    with open(log_path, "w") as log:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench",
                "--quick",
                "--results-dir",
                str(results),
                "--docs",
                str(docs),
                "--work-dir",
                str(tmp_path),
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            timeout=150,
            check=False,
        )
    assert done.returncode == 0, log_path.read_text()[-3000:]
    for name in NAMES:
        data = json.loads((results / f"{name}.json").read_text())
        assert data["benchmark"] == name
        assert data["quick"] is True
        assert data["command"].startswith(".venv/bin/python -m bench --quick")
        assert data["machine"]["nproc"] >= 1
        assert data["figures"], name
        for fig in data["figures"]:
            where = f"{name}/{fig['key']}"
            _check_stat(fig["value"], where)
            if fig["reference"] is not None:
                _check_stat(fig["reference"], where)
                _check_stat(fig["ratio"], where)
            assert fig["met"] in (True, False, None), where
            if fig["target"] is not None:
                assert fig["met"] is not None, where
    report = docs.read_text()
    for title in ("1. Hashing", "2. Restart", "3. Big file", "4. Many small files"):
        assert f"## {title}" in report
    for title in ("5. Under the real rate limit", "6. Latency", "7. Scaling", "8. Dashboard"):
        assert f"## {title}" in report
    assert "## 9. A fleet on one account" in report
    for title in ("10. Idle daemon", "11. Backlog intake"):
        assert f"## {title}" in report
    assert "Quick run (tiny sizes)" in report
    # Scratch folders are removed: only the two outputs stay behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.log", "benchmarks.md", "results"]


def test_an_unknown_benchmark_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "nosuch", "--no-docs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown benchmark 'nosuch'" in done.stderr


def test_a_benchmark_run_alone_replaces_only_its_own_section_of_the_report(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    figure = {
        "key": "wakeups",
        "label": "Wakeups",
        "value": {"median": 1.0, "min": 1.0, "max": 1.0, "n": 1, "values": [1.0], "unit": "/s"},
        "reference": None,
        "reference_label": "",
        "ratio": None,
        "target": None,
        "target_on": "value",
        "better": "lower",
        "target_text": "",
        "goal": None,
        "met": None,
    }
    machine = {"nproc": 2, "cpu_model": "cpu", "sha_extensions": True, "mem_gib": 1.0}
    machine |= {"python": "3", "openssl": "o", "aiohttp": "a", "kernel": "k", "loadavg": "1"}
    data = {
        "benchmark": "idle",
        "command": "python -m bench idle",
        "started_at": 0.0,
        "duration_s": 1.0,
        "machine": machine,
        "params": {"folders": 3},
        "figures": [figure],
        "notes": [],
        "extra": {},
    }
    (results / "idle.json").write_text(json.dumps(data))
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\n## Summary\n\n| figure | syncd |\n|---|---|\n"
        "| Restart over a big library: Restart to ready | 1.28 s |\n"
        "| Idle daemon: Wakeups | 99 /s |\n\n"
        "## 2. Restart over a big library\n\nOld restart text.\n\n"
        "## 10. Idle daemon\n\nOld idle text.\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench.report", "--results-dir", str(results), "--docs", str(docs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = docs.read_text()
    assert "## 2. Restart over a big library\n\nOld restart text.\n" in report
    assert "| Restart over a big library: Restart to ready | 1.28 s |" in report
    assert "Old idle text" not in report and "99 /s" not in report
    assert "| Idle daemon: Wakeups | 1.00 /s |" in report
    # The suite's order: restart (2) before idle (9), in the summary and in the sections.
    assert report.index("| Restart over a big library:") < report.index("| Idle daemon:")
    assert report.index("## 2. Restart") < report.index("## 10. Idle daemon")
