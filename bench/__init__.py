"""syncd's benchmark suite: ``python -m bench`` (see ``docs/benchmarks.md``).

Each module measures one figure of the issue side by side with its reference and returns a
:class:`bench.harness.Result`; :mod:`bench.report` turns the saved results into the report.
"""

from __future__ import annotations

from types import ModuleType

from bench import (
    bigfile,
    dashboard,
    fleet,
    hashing,
    latency,
    ratelimit,
    restart,
    scaling,
    smallfiles,
)

BENCHMARKS: tuple[ModuleType, ...] = (
    hashing,
    restart,
    bigfile,
    smallfiles,
    ratelimit,
    latency,
    scaling,
    dashboard,
    fleet,
)
