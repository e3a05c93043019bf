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
