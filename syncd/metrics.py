"""The daemon's Prometheus metrics: one declared table, an in-memory registry, text rendering.

Every metric syncd exports is declared once in :data:`METRICS` (name, type, help, label names,
histogram buckets). The daemon counts through :class:`Metrics`; the local HTTP endpoint
(:mod:`syncd.ops.webapi`) renders them at ``/metrics`` in the Prometheus text format 0.0.4, after
setting the gauges it derives from the ledger at scrape time. Using a name that is not
declared, or other labels than the declared ones, is a programming error and raises.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

MetricType = Literal["counter", "gauge", "histogram"]

# Upload durations: from a small image on a fast link to a multi-gigabyte video.
UPLOAD_DURATION_BUCKETS_S: Final = (
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    900.0,
    3600.0,
)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One declared metric: its name, type, help text, label names and (histograms) buckets."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


METRICS: Final[tuple[MetricSpec, ...]] = (
    # Counted by the daemon as things happen.
    MetricSpec(
        "syncd_requests_total",
        "counter",
        "Requests to the API by endpoint and HTTP status ('error' when no answer came).",
        ("endpoint", "status"),
    ),
    MetricSpec(
        "syncd_throttle_events_total",
        "counter",
        "400/429 answers taken as possible throttling, by endpoint.",
        ("endpoint",),
    ),
    MetricSpec(
        "syncd_uploads_total",
        "counter",
        "Finished upload attempts by outcome (ok, superseded, rejected, failed, ...).",
        ("outcome",),
    ),
    MetricSpec("syncd_bytes_uploaded_total", "counter", "Bytes of successful uploads."),
    MetricSpec(
        "syncd_upload_duration_seconds",
        "histogram",
        "Duration of successful uploads, from the first request to the asset id.",
        buckets=UPLOAD_DURATION_BUCKETS_S,
    ),
    MetricSpec(
        "syncd_cooldown_seconds",
        "gauge",
        "Seconds left of the shared cool-down, by endpoint (0 when none runs).",
        ("endpoint",),
    ),
    MetricSpec(
        "syncd_fleet_redis_up",
        "gauge",
        "Fleet mode: 1 while the shared rate budget on Redis answers, else 0 (no request starts).",
    ),
    MetricSpec(
        "syncd_fleet_hosts_alive",
        "gauge",
        "Fleet mode: hosts of the account whose heartbeat on Redis is fresh.",
    ),
    MetricSpec(
        "syncd_fleet_grants_per_second",
        "gauge",
        "Fleet mode: request starts granted per second, by host and endpoint (10 s average).",
        ("host", "endpoint"),
    ),
    MetricSpec(
        "syncd_queue_depth",
        "gauge",
        "Items waiting in an in-memory stage (settle, hash, upload).",
        ("queue",),
    ),
    MetricSpec("syncd_files_hashed_total", "counter", "Files hashed (read in full)."),
    MetricSpec("syncd_bytes_hashed_total", "counter", "Bytes read to hash files."),
    MetricSpec(
        "syncd_possible_duplicates_total",
        "counter",
        "Direct uploads whose answer was lost: the service may hold an untracked copy.",
    ),
    # Derived from the ledger when /metrics is scraped (see syncd.ops.webapi).
    MetricSpec(
        "syncd_files",
        "gauge",
        "Distinct contents in the ledger by state (pending, uploading, done, failed, ...).",
        ("state",),
    ),
    MetricSpec(
        "syncd_paths",
        "gauge",
        "Paths in the ledger by state (present, gone, skipped, unsettled, error).",
        ("state",),
    ),
    MetricSpec("syncd_backlog_bytes", "gauge", "Bytes of contents waiting to be uploaded."),
    MetricSpec(
        "syncd_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest content waiting to be uploaded (0 when none waits).",
    ),
    MetricSpec("syncd_healthy", "gauge", "1 when the daemon is healthy, else 0."),
    MetricSpec("syncd_ready", "gauge", "1 once the daemon is ready, else 0."),
)

_LabelKey = tuple[str, ...]


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)  # the last one is +Inf
        self.sum = 0.0


class Metrics:
    """A registry of the metrics in :data:`METRICS`; safe to use from threads.

    Counters only grow (:meth:`inc`), gauges are set or moved (:meth:`set`, :meth:`inc`),
    histograms observe (:meth:`observe`). Label values are given as keyword arguments and must
    be exactly the declared label names.
    """

    def __init__(self, specs: Sequence[MetricSpec] = METRICS) -> None:
        self._specs: dict[str, MetricSpec] = {s.name: s for s in specs}
        self._values: dict[str, dict[_LabelKey, float]] = {s.name: {} for s in specs}
        self._histograms: dict[str, dict[_LabelKey, _Histogram]] = {s.name: {} for s in specs}
        # The hasher threads count too; one lock keeps read-modify-write whole.
        self._lock = threading.Lock()

    def _spec(
        self, name: str, kinds: tuple[MetricType, ...], labels: Mapping[str, str]
    ) -> _LabelKey:
        spec = self._specs.get(name)
        if spec is None:
            raise KeyError(f"metric {name!r} is not declared in syncd.metrics.METRICS")
        if spec.type not in kinds:
            raise TypeError(f"metric {name!r} is a {spec.type}; this call needs {'/'.join(kinds)}")
        if set(labels) != set(spec.labels):
            want = ", ".join(spec.labels) or "no labels"
            raise ValueError(f"metric {name!r} takes {want}; got {', '.join(labels) or 'none'}")
        for key, value in labels.items():
            if not isinstance(value, str):
                raise TypeError(f"label {key}={value!r} of {name!r} must be a str")
        return tuple(labels[k] for k in spec.labels)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to a counter (``value`` >= 0) or gauge. Raises on an undeclared name,
        wrong labels, a histogram, or a negative counter increment."""
        key = self._spec(name, ("counter", "gauge"), labels)
        if value < 0 and self._specs[name].type == "counter":
            raise ValueError(f"counter {name!r} cannot decrease (inc by {value})")
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge to ``value``. Raises on an undeclared name, wrong labels or another type."""
        key = self._spec(name, ("gauge",), labels)
        with self._lock:
            self._values[name][key] = float(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation in a histogram. Raises on an undeclared name, wrong labels or
        another type."""
        key = self._spec(name, ("histogram",), labels)
        buckets = self._specs[name].buckets
        with self._lock:
            hist = self._histograms[name].get(key)
            if hist is None:
                hist = self._histograms[name][key] = _Histogram(len(buckets))
            for i, bound in enumerate(buckets):
                if value <= bound:
                    hist.counts[i] += 1
                    break
            else:
                hist.counts[-1] += 1
            hist.sum += value

    def value(self, name: str, **labels: str) -> float:
        """Return a counter's or gauge's current value (0 when never touched); for tests and
        the daemon's own summaries."""
        key = self._spec(name, ("counter", "gauge"), labels)
        with self._lock:
            return self._values[name].get(key, 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Return the sum of a counter's or gauge's series whose labels include ``labels``
        (all of them when none are given): ``total("syncd_requests_total", endpoint="upload")``
        counts upload requests whatever their status. Raises on an undeclared name, a label
        the metric does not have, or a histogram."""
        spec = self._specs.get(name)
        if spec is None or spec.type == "histogram":
            raise KeyError(f"{name!r} is not a declared counter or gauge")
        unknown = set(labels) - set(spec.labels)
        if unknown:
            raise ValueError(f"metric {name!r} has no label {sorted(unknown)[0]!r}")
        want = [(spec.labels.index(k), v) for k, v in labels.items()]
        with self._lock:
            return sum(
                value
                for key, value in self._values[name].items()
                if all(key[i] == v for i, v in want)
            )

    def render(self) -> str:
        """Return every metric in the Prometheus text exposition format 0.0.4.

        A metric without labels is always shown (0 until touched); a labelled one shows the
        label sets seen so far.
        """
        out: list[str] = []
        with self._lock:
            for spec in self._specs.values():
                out.append(f"# HELP {spec.name} {_escape_help(spec.help)}")
                out.append(f"# TYPE {spec.name} {spec.type}")
                if spec.type == "histogram":
                    self._render_histogram(spec, out)
                    continue
                series = self._values[spec.name]
                if not spec.labels and not series:
                    out.append(f"{spec.name} 0")
                for key in sorted(series):
                    out.append(f"{spec.name}{_labels(spec.labels, key)} {_number(series[key])}")
        return "\n".join(out) + "\n"

    def _render_histogram(self, spec: MetricSpec, out: list[str]) -> None:
        series = self._histograms[spec.name]
        if not spec.labels and not series:
            series = {(): _Histogram(len(spec.buckets))}
        for key in sorted(series):
            hist = series[key]
            cumulative = 0
            for bound, count in zip((*spec.buckets, math.inf), hist.counts, strict=True):
                cumulative += count
                names = (*spec.labels, "le")
                values = (*key, _number(bound))
                out.append(f"{spec.name}_bucket{_labels(names, values)} {cumulative}")
            out.append(f"{spec.name}_sum{_labels(spec.labels, key)} {_number(hist.sum)}")
            out.append(f"{spec.name}_count{_labels(spec.labels, key)} {cumulative}")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"
