"""The metrics registry: declared names only, and output a Prometheus parser accepts."""

from __future__ import annotations

import re
import threading

import pytest

from syncd.metrics import METRICS, UPLOAD_DURATION_BUCKETS_S, Metrics

# One sample line of the text format 0.0.4: name, optional labels, value.
_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\})? '
    r"(?P<value>[-+]?(?:[0-9.eE+-]+|Inf|NaN))$"
)


def parse(text: str) -> dict[str, float]:
    """A strict little parser: every line is a HELP, a TYPE or a well-formed sample."""
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram")
            assert name not in typed, f"{name} typed twice"
            typed.add(name)
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed sample line: {line!r}"
        base = re.sub(r"_(bucket|sum|count)$", "", m["name"])
        assert m["name"] in typed or base in typed, f"sample before its TYPE: {line!r}"
        key = m["name"] + ("{" + m["labels"] + "}" if m["labels"] else "")
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(m["value"].replace("Inf", "inf"))
    return samples


def test_every_declared_metric_is_rendered_and_parses() -> None:
    text = Metrics().render()
    samples = parse(text)
    for spec in METRICS:
        assert f"# TYPE {spec.name} {spec.type}" in text
        if not spec.labels and spec.type != "histogram":
            assert samples[spec.name] == 0
    names = [s.name for s in METRICS]
    assert len(names) == len(set(names))


def test_counters_gauges_and_labels() -> None:
    m = Metrics()
    m.inc("syncd_requests_total", endpoint="upload", status="200")
    m.inc("syncd_requests_total", endpoint="upload", status="200")
    m.inc("syncd_requests_total", endpoint="metadata", status="400")
    m.inc("syncd_bytes_uploaded_total", 1234)
    m.set("syncd_queue_depth", 7, queue="upload")
    m.set("syncd_queue_depth", 3, queue="upload")
    m.set("syncd_cooldown_seconds", 1.5, endpoint="upload")
    samples = parse(m.render())
    assert samples['syncd_requests_total{endpoint="upload",status="200"}'] == 2
    assert samples['syncd_requests_total{endpoint="metadata",status="400"}'] == 1
    assert samples["syncd_bytes_uploaded_total"] == 1234
    assert samples['syncd_queue_depth{queue="upload"}'] == 3
    assert samples['syncd_cooldown_seconds{endpoint="upload"}'] == 1.5
    assert m.value("syncd_requests_total", endpoint="upload", status="200") == 2


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.inc("syncd_uploads_total", outcome='we"ird\\\nvalue')
    line = next(s for s in m.render().splitlines() if s.startswith("syncd_uploads_total{"))
    assert line == 'syncd_uploads_total{outcome="we\\"ird\\\\\\nvalue"} 1'
    parse(m.render())


def test_histogram_buckets_are_cumulative() -> None:
    m = Metrics()
    for seconds in (0.1, 0.7, 3.0, 3.0, 10_000.0):
        m.observe("syncd_upload_duration_seconds", seconds)
    samples = parse(m.render())
    assert samples['syncd_upload_duration_seconds_bucket{le="0.5"}'] == 1
    assert samples['syncd_upload_duration_seconds_bucket{le="1"}'] == 2
    assert samples['syncd_upload_duration_seconds_bucket{le="5"}'] == 4
    assert samples['syncd_upload_duration_seconds_bucket{le="3600"}'] == 4
    assert samples['syncd_upload_duration_seconds_bucket{le="+Inf"}'] == 5
    assert samples["syncd_upload_duration_seconds_count"] == 5
    assert samples["syncd_upload_duration_seconds_sum"] == pytest.approx(10_006.8)
    buckets = [k for k in samples if k.startswith("syncd_upload_duration_seconds_bucket")]
    assert len(buckets) == len(UPLOAD_DURATION_BUCKETS_S) + 1


def test_misuse_is_a_programming_error() -> None:
    m = Metrics()
    with pytest.raises(KeyError, match="not declared"):
        m.inc("syncd_no_such_metric")
    with pytest.raises(ValueError, match="takes endpoint, status"):
        m.inc("syncd_requests_total", endpoint="upload")
    with pytest.raises(ValueError, match="takes no labels"):
        m.inc("syncd_bytes_uploaded_total", 1, endpoint="upload")
    with pytest.raises(TypeError, match="is a counter"):
        m.set("syncd_bytes_uploaded_total", 3)
    with pytest.raises(TypeError, match="is a histogram"):
        m.inc("syncd_upload_duration_seconds")
    with pytest.raises(TypeError, match="is a gauge"):
        m.observe("syncd_backlog_bytes", 1)
    with pytest.raises(ValueError, match="cannot decrease"):
        m.inc("syncd_bytes_uploaded_total", -1)


def test_counts_from_threads_are_not_lost() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(2000):
            m.inc("syncd_files_hashed_total")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.value("syncd_files_hashed_total") == 8000


def test_total_sums_the_series_that_match() -> None:
    m = Metrics()
    m.inc("syncd_requests_total", endpoint="upload", status="200")
    m.inc("syncd_requests_total", 2, endpoint="upload", status="429")
    m.inc("syncd_requests_total", endpoint="metadata", status="200")
    assert m.total("syncd_requests_total", endpoint="upload") == 3
    assert m.total("syncd_requests_total", status="200") == 2
    assert m.total("syncd_requests_total") == 4
    assert m.total("syncd_requests_total", endpoint="storage") == 0
    with pytest.raises(ValueError, match="no label"):
        m.total("syncd_requests_total", queue="x")
    with pytest.raises(KeyError):
        m.total("syncd_upload_duration_seconds")
