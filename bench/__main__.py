"""``python -m bench [NAME ...] [--quick] [--full]``: run the benchmark suite.

Each benchmark writes ``bench/results/NAME.json``; afterwards ``docs/benchmarks.md`` is
regenerated from every result file present. ``--quick`` runs each benchmark at a tiny size
(for the smoke test, not for figures); ``--full`` runs the sizes that do not fit the suite's
10-minute budget (figure 5 with 300 files, the 10x larger scaling points).
"""

from __future__ import annotations

import argparse
import compileall
import json
import shlex
import sys
import time
from pathlib import Path

import syncd
from bench import BENCHMARKS
from bench.harness import DOCS_PATH, RESULTS_DIR, BenchError, log
from bench.report import write_report


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``python -m bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="syncd's benchmark suite: each figure side by side with its reference.",
    )
    names = [m.NAME for m in BENCHMARKS]
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all): {names}"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--full", action="store_true", help="also the sizes over the budget")
    parser.add_argument("--repeat", type=int, help="repetitions per figure (default per bench)")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where NAME.json files go"
    )
    parser.add_argument(
        "--docs", type=Path, default=DOCS_PATH, help="report to regenerate (default docs/)"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not regenerate the report")
    parser.add_argument("--work-dir", help="where scratch files go (default: the temp folder)")
    parser.add_argument("--debug", action="store_true", help="tracebacks for internal errors")
    for module in BENCHMARKS:
        module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; returns 0 when every one produced a result, else 1."""
    args = build_parser().parse_args(argv)
    known = {m.NAME: m for m in BENCHMARKS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"python -m bench: unknown benchmark {unknown[0]!r}", file=sys.stderr)
        return 2
    chosen = [known[n] for n in args.names] if args.names else list(BENCHMARKS)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    # An installed package comes with its bytecode (pip compiles it); the editable checkout
    # does not, and PYTHONDONTWRITEBYTECODE=1 would make every daemon start compile it again.
    compileall.compile_dir(str(Path(syncd.__file__).parent), quiet=1)
    failed: list[str] = []
    suite_t0 = time.monotonic()
    for module in chosen:
        started_at = time.time()
        t0 = time.monotonic()
        log(f"{module.NAME}: starting")
        try:
            result = module.run(args)
        except BenchError as exc:
            log(f"{module.NAME}: FAILED: {exc}")
            failed.append(module.NAME)
            continue
        except Exception as exc:
            if args.debug:
                raise
            log(f"{module.NAME}: FAILED: internal error: {type(exc).__name__}: {exc} (--debug)")
            failed.append(module.NAME)
            continue
        duration_s = time.monotonic() - t0
        data = result.as_json(command.strip(), started_at, duration_s)
        data["quick"] = bool(args.quick)
        data["full"] = bool(args.full)
        out = args.results_dir / f"{module.NAME}.json"
        out.write_text(json.dumps(data, indent=2) + "\n")
        log(f"{module.NAME}: done in {duration_s:.1f} s -> {out}")
        for figure in data["figures"]:
            value = figure["value"]
            ratio = figure["ratio"]
            text = f"  {figure['label']}: {value['median']:.4g} {value['unit']}"
            if ratio is not None:
                text += f", ratio {ratio['median']:.3g}x"
            if figure["met"] is not None:
                text += f" (target {figure['target_text']}: {'met' if figure['met'] else 'MISSED'})"
            log(text)
    log(f"suite finished in {time.monotonic() - suite_t0:.1f} s")
    if failed:
        log(f"failed: {', '.join(failed)}")
    if not args.no_docs:
        write_report(args.results_dir, args.docs)
        log(f"report written to {args.docs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
