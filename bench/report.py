"""Regenerate ``docs/benchmarks.md`` from the result files in ``bench/results/``.

``python -m bench`` calls :func:`write_report` after its runs; ``python -m bench.report``
rewrites the report from whatever results are there, without running anything.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from bench import BENCHMARKS
from bench.harness import DOCS_PATH, RESULTS_DIR

HEADER = """\
# Benchmarks

How syncd compares with the tools an operator would otherwise use (`openssl`, `find`, `curl`, a
bare `aiohttp` loop) on the same machine, in the same run. Every figure is measured side by
side with its reference against the bundled emulator over loopback: syncd and the emulator run
as separate processes (`syncd run -c CONFIG` and `syncd emulator --port 0 ...`), so they do
not share an event loop; nothing reaches the network.

This file is generated: `python -m bench` runs the suite, writes one JSON file per benchmark
into `bench/results/` (not committed) and rewrites this file from them;
`python -m bench.report` rewrites it from the results already there. A benchmark without a
result file keeps its section (and its summary rows) from the previous report, with the
command, date and load average it was measured with, so running one benchmark alone
replaces only its own section.

```console
$ make bench                             # the whole suite: .venv/bin/python -m bench
$ .venv/bin/python -m bench restart      # one benchmark alone (names below)
$ .venv/bin/python -m bench --full       # also the sizes that do not fit the 10-minute budget
$ .venv/bin/python -m bench --quick      # tiny sizes: checks the suite works, measures nothing
```

Other flags: `--repeat N` (repetitions per figure), `--work-dir DIR` (scratch files; default
the system temp folder), `--results-dir DIR`, `--docs PATH`, `--no-docs`, and per-benchmark
sizes (`python -m bench --help`). Values are medians over repeated runs with the min-max
range; a ratio is syncd / reference per paired run (runs alternate between the two). These
machines are noisy (other work shares the two cores; each section gives the load average when
it started), so read ratios, not absolute numbers, and compare runs from the same machine only.

How things are measured:

- **Times** of daemon events come from its own JSON log lines (`log.format: json`, the `ts` of
  each record, millisecond resolution): `scan of ROOT done ...`, `queued ...` (hashed and
  recorded), `uploaded ... asset=...` (logged right after the asset id is committed to the
  ledger), `asset ... is SUCCESS`. Request arrival times and statuses come from the emulator's
  request log (`GET /_emulator/requests`), on the same clock as the benchmark's own
  `time.time()`.
- **Peak RSS** of the daemon is its `VmHWM` (`/proc/PID/status`), read every 20 ms until it
  exits. `os.wait4`'s `ru_maxrss` is not used: Linux carries the high-water mark across
  `exec`, so a child forked from a large parent (the benchmark holds its test files in memory)
  reports the parent's size. **CPU seconds** are the child's user + system time from
  `os.wait4`.
- Every daemon runs with `settle.quiet_s: 0.2`, no periodic rescan, no HTTP endpoint (but in
  figure 8, which measures it) and, unless
  the figure is about the rate limit, rates of 1,000,000/s (effectively off) in both the
  daemon and the emulator (`--rate-limit 0`).
- Before the first benchmark the suite compiles syncd's modules to bytecode
  (`compileall`), as `pip install` does for an installed package; the checkout's editable
  install does not, and with `PYTHONDONTWRITEBYTECODE=1` (set on these machines) every start
  would compile them from source again (~0.1 s).
"""


def _fmt(x: float) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _stat(stat: dict[str, Any] | None, unit: bool = True) -> str:
    if stat is None:
        return "-"
    text = _fmt(stat["median"])
    if stat["n"] > 1:
        text += f" ({_fmt(stat['min'])}-{_fmt(stat['max'])})"
    if unit:
        text += stat["unit"] if stat["unit"] == "x" else f" {stat['unit']}"
    return text


def _met(figure: dict[str, Any]) -> str:
    met = figure["met"]
    if met is None:
        return "-"
    return "**met**" if met else "**missed**"


def _machine(results: list[dict[str, Any]]) -> str:
    machine = results[0]["machine"]
    sha = "yes" if machine["sha_extensions"] else "no"
    rows = [
        ("cores (`nproc`)", str(machine["nproc"])),
        ("CPU", f"{machine['cpu_model']} (SHA extensions: {sha})"),
        ("memory", f"{machine['mem_gib']} GiB"),
        ("Python", machine["python"]),
        ("OpenSSL", machine["openssl"]),
        ("aiohttp", machine["aiohttp"]),
        ("kernel", machine["kernel"]),
    ]
    lines = ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    return "\n".join(lines)


def _summary(results: list[dict[str, Any]]) -> str:
    lines = [
        "| figure | syncd | reference | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for data in results:
        title = _title(data["benchmark"])
        for fig in data["figures"]:
            if fig["target"] is None and data["benchmark"] == "scaling":
                continue
            lines.append(
                f"| {title}: {fig['label']} | {_stat(fig['value'])} | "
                f"{_stat(fig['reference'])} | {_stat(fig['ratio'])} | "
                f"{fig['target_text'] or '-'} | {_met(fig)} |"
            )
    return "\n".join(lines)


def _title(name: str) -> str:
    for module in BENCHMARKS:
        if name == module.NAME:
            return str(module.TITLE).split(". ", 1)[-1]
    return name


def _module(name: str) -> Any:
    for module in BENCHMARKS:
        if name == module.NAME:
            return module
    return None


def _section(data: dict[str, Any]) -> str:
    module = _module(data["benchmark"])
    title = module.TITLE if module else data["benchmark"]
    out = [f"## {title}", ""]
    if module is not None:
        out += [module.DESCRIPTION, ""]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(data["started_at"]))
    load = data["machine"].get("loadavg")
    out += [
        f"Command: `{data['command']}` ({when}, {data['duration_s']:.0f} s"
        + (f", load average at start {load}" if load else "")
        + ")",
        "",
    ]
    if data.get("quick"):
        out += ["*Quick run (tiny sizes): these numbers say nothing about performance.*", ""]
    params = ", ".join(f"{k} = {v}" for k, v in data["params"].items())
    out += [f"Parameters: {params}.", ""]
    out += [
        "| figure | syncd | reference | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for fig in data["figures"]:
        ref = _stat(fig["reference"])
        if fig["reference"] is not None and fig["reference_label"]:
            ref += f" ({fig['reference_label']})"
        out.append(
            f"| {fig['label']} | {_stat(fig['value'])} | {ref} | {_stat(fig['ratio'])} | "
            f"{fig['target_text'] or '-'} | {_met(fig)} |"
        )
    out.append("")
    for note in data.get("notes", []):
        out += [note, ""]
    extra = _extra_text(data)
    if extra:
        out += [extra, ""]
    findings: dict[str, str] = getattr(module, "FINDINGS", {}) if module else {}
    for fig in data["figures"]:
        text = findings.get(fig["key"])
        if text and fig["met"] is False:
            out += [f"**Why {fig['label'].lower()} misses its target.** {text}", ""]
    general = findings.get("*")
    if general:
        out += [general, ""]
    return "\n".join(out)


def _extra_text(data: dict[str, Any]) -> str:
    name = data["benchmark"]
    extra = data.get("extra", {})
    if name == "scaling":
        return _scaling_text(extra)
    if name == "bigfile" and extra:
        return (
            "Where the time goes (medians): settling and hashing "
            f"{_fmt(_median(extra['settle_and_hash_s']))} s, the transfer "
            f"{_fmt(_median(extra['transfer_s']))} s. CPU seconds over the run: syncd "
            f"{_fmt(_median(extra['syncd_cpu_s']))} (curl {_fmt(_median(extra['curl_cpu_s']))}); "
            f"the emulator {_fmt(_median(extra['emulator_cpu_s_with_syncd']))} receiving from "
            f"syncd, {_fmt(_median(extra['emulator_cpu_s_with_curl']))} from curl."
        )
    if name == "smallfiles" and extra:
        return (
            f"Settle quiet time excluded: {extra['settle_quiet_s_excluded']} s per burst. "
            f"Writing the burst took {_fmt(_median(extra['write_s']))} s; syncd's peak RSS "
            f"{_fmt(_median(extra['rss_mb']))} MB, CPU {_fmt(_median(extra['syncd_cpu_s']))} s."
        )
    if name == "ratelimit" and extra:
        runs = extra["runs"]
        r = runs[len(runs) // 2]
        return (
            f"Request log of the (median) run: {r['api_requests']} API requests, "
            f"{r['throttled']} answered 400/429; {r['uploads_ok']} uploads, spaced "
            f"{_fmt(r['upload_gap_min_s'])}-{_fmt(r['upload_gap_max_s'])} s apart; "
            f"{r['metadata_requests']} status polls at {_fmt(r['metadata_rate_per_s'])}/s, "
            f"{r['metadata_throttled']} throttled. From the drop to the last asset SUCCESS: "
            f"{_fmt(_median(extra['drop_to_all_success_s']))} s." + _delay_text(r.get("send_delay"))
        )
    if name == "idle" and extra:
        return (
            f"Whole run of the daemon (start, scan, idle windows, shutdown): "
            f"{_fmt(extra['daemon_cpu_s_whole_run'])} CPU-s; threads while idle: "
            f"{max(extra['threads'])}; log lines after the scan (shutdown included): "
            f"{extra['log_lines_after_scan']}."
        )
    if name == "backlog" and extra:
        return (
            f"Medians: the startup scan was done {_fmt(_median(extra['scan_s']))} s after the "
            f"spawn and the first file queued at {_fmt(_median(extra['first_queued_s']))} s; "
            f"the daemon used {_fmt(_median(extra['syncd_cpu_s']))} CPU-s in all (its threads "
            f"together, shutdown included), peak RSS {_fmt(_median(extra['rss_mb']))} MB; "
            f"{_median(extra['uploads']):.0f} uploads reached the emulator meanwhile (paced "
            "at 1/s)."
        )
    if name == "latency" and extra:
        return (
            f"Fastest file {_fmt(min(extra['min_ms']))} ms, slowest "
            f"{_fmt(max(extra['max_ms']))} ms (after the quiet time)."
        )
    return ""


def _delay_text(delay: dict[str, Any] | None) -> str:
    if not delay:
        return ""
    text = (
        " From the upload pacer's grant to the request's arrival at the emulator: median "
        f"{_fmt(delay['delay_ms_median'])} ms, p99 {_fmt(delay['delay_ms_p99'])} ms, max "
        f"{_fmt(delay['delay_ms_max'])} ms."
    )
    for t in delay["throttled_uploads"]:
        text += (
            f" A throttled upload was granted {_fmt(t['grant_gap_s'])} s after the previous "
            f"one but arrived {_fmt(t['arrival_gap_s'])} s after it (its send delay "
            f"{_fmt(t['delay_ms'])} ms, the previous one's {_fmt(t['delay_before_ms'])} ms)."
        )
    return text


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return float("nan")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _scaling_text(extra: dict[str, Any]) -> str:
    out = [
        "| restart: files | syncd | find | syncd per file | find per file | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for p in extra.get("restart_points", []):
        ready = _median(p["ready_s"])
        find = _median(p["find_s"])
        out.append(
            f"| {p['files']:,} | {_fmt(ready)} s | {_fmt(find)} s | "
            f"{_fmt(ready / p['files'] * 1e6)} µs | {_fmt(find / p['files'] * 1e6)} µs | "
            f"{_fmt(_median(p['rss_mb']))} MB |"
        )
    out += [
        "",
        "| small files: burst | syncd | bare aiohttp | syncd per file | bare per file | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for p in extra.get("small_points", []):
        ours = _median(p["files_per_s"])
        bare = _median(p["bare_files_per_s"])
        out.append(
            f"| {p['files']:,} | {_fmt(ours)} files/s | {_fmt(bare)} files/s | "
            f"{_fmt(_median(p['e2e_s']) / p['files'] * 1e3)} ms | "
            f"{_fmt(_median(p['bare_s']) / p['files'] * 1e3)} ms | "
            f"{_fmt(_median(p['rss_mb']))} MB |"
        )
    for failure in extra.get("failures", []):
        out += ["", f"**Did not finish: {failure['what']}.** {failure['error']}."]
    rf, ff = extra.get("restart_fit", {}), extra.get("find_fit", {})
    sf, bf = extra.get("small_fit", {}), extra.get("bare_fit", {})
    if rf and sf:
        out += [
            "",
            "Fitted lines (medians): restart "
            f"{_fmt(rf['fixed_s'])} s + {_fmt(rf['per_file_us'])} µs per file (find "
            f"{_fmt(ff['fixed_s'])} s + {_fmt(ff['per_file_us'])} µs per file); small files "
            f"{_fmt(sf['fixed_s'])} s + {_fmt(sf['per_file_ms'])} ms per file (bare aiohttp "
            f"{_fmt(bf['fixed_s'])} s + {_fmt(bf['per_file_ms'])} ms per file).",
        ]
    return "\n".join(out)


def _previous_parts(previous: str) -> tuple[dict[str, str], list[str]]:
    """Split an earlier report into its sections (by ``## `` title) and its summary rows."""
    sections: dict[str, str] = {}
    title = ""
    lines: list[str] = []
    for line in [*previous.splitlines(), "## "]:
        if line.startswith("## "):
            if title:
                sections[title] = "\n".join(lines).rstrip() + "\n"
            title, lines = line[3:].strip(), [line]
        elif title:
            lines.append(line)
    summary = sections.get("Summary", "")
    rows = [r for r in summary.splitlines() if r.startswith("| ") and ": " in r.split("|")[1]]
    return sections, rows


def render(results_dir: Path, previous: str = "") -> str:
    """Return the report's Markdown for the result files in ``results_dir``.

    Given ``previous`` (the report as it was), a benchmark with no result file keeps its
    section and its summary rows from it, with the command, date and load average they were
    measured with: running one benchmark alone does not erase the others' figures.
    """
    order = {m.NAME: i for i, m in enumerate(BENCHMARKS)}
    results: list[dict[str, Any]] = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("benchmark") in order:
            results.append(data)
    results.sort(key=lambda d: order[d["benchmark"]])
    parts = [HEADER]
    if not results:
        parts.append("No results yet: run `python -m bench`.\n")
        return "\n".join(parts)
    by_name = {d["benchmark"]: d for d in results}
    kept, kept_rows = _previous_parts(previous)
    summary = _summary(results).splitlines()
    body: list[str] = []
    for module in BENCHMARKS:
        data = by_name.get(module.NAME)
        if data is not None:
            body.append(_section(data))
            continue
        old = kept.get(str(module.TITLE))
        if old is None:
            continue
        body.append(old)
        prefix = f"| {_title(module.NAME)}: "
        rows = [r for r in kept_rows if r.startswith(prefix)]
        # Kept rows go where the benchmark stands in the suite's order.
        before = [m.NAME for m in BENCHMARKS[: BENCHMARKS.index(module)]]
        at = 2 + sum(
            1 for r in summary[2:] if any(r.startswith(f"| {_title(n)}: ") for n in before)
        )
        summary[at:at] = rows
    parts += ["## Machine", "", _machine(results), ""]
    parts += ["## Summary", "", "\n".join(summary), ""]
    parts += body
    return "\n".join(parts).rstrip() + "\n"


def write_report(results_dir: Path, docs: Path) -> None:
    """Render the results in ``results_dir`` and write them to ``docs``, keeping the
    sections of the benchmarks without a result from the report already there."""
    docs.parent.mkdir(parents=True, exist_ok=True)
    try:
        previous = docs.read_text()
    except FileNotFoundError:
        previous = ""
    docs.write_text(render(results_dir, previous))


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report``: rewrite the report from the saved results."""
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--docs", type=Path, default=DOCS_PATH)
    args = parser.parse_args(argv)
    write_report(args.results_dir, args.docs)
    print(f"wrote {args.docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
