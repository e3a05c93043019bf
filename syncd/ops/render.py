"""How the operator's commands show their data: tables and lines for people, JSON, CSV.

Given the plain data the read model builds (``report.py``: ``show_data``, ``ls_row``,
``status_data``), these functions write it for a person (local times, human sizes, one line
per record whatever the names hold), as JSON or as CSV; ``add_format_arguments`` gives each
command its ``--json``/``--csv`` flags. No ledger, no I/O beyond the stream they are given.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from syncd.display import one_line


def local_time(ts: float | None) -> str:
    """Given epoch seconds (or None), return local time for humans (``-`` for None)."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def human_bytes(n: int | float | None) -> str:
    """Given a byte count, return it in binary units (``1.5 GiB``); ``-`` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """Given a duration in seconds, return it tersely (``45s``, ``12m``, ``3h05m``, ``2d04h``)."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def add_format_arguments(p: argparse.ArgumentParser, *, csv: bool = False) -> None:
    """Add ``--json`` (and, for listings, ``--jsonl`` and ``--csv``) to ``p``; the choice ends
    up in ``args.format`` (``table`` by default)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="print JSON for scripts (keys are documented and stable)",
    )
    if csv:
        group.add_argument(
            "--jsonl",
            dest="format",
            action="store_const",
            const="jsonl",
            help="print one JSON object per line",
        )
        group.add_argument(
            "--csv", dest="format", action="store_const", const="csv", help="print CSV"
        )
    p.set_defaults(format="table")


def write_json(data: Any, out: TextIO | None = None) -> None:
    """Write ``data`` as indented JSON (ASCII-only, so any terminal or pipe takes it)."""
    (out or sys.stdout).write(json.dumps(data, indent=2) + "\n")


class RowWriter:
    """Streams rows (dicts with the keys ``columns``) as a table, JSON array, JSON lines or CSV.

    Given the format, the column names (CSV header and order), a function that renders one row
    for humans, the human header line and the output stream. Nothing is buffered beyond the
    stream's own buffer, so a million rows never sit in memory.
    """

    def __init__(
        self,
        fmt: str,
        columns: Sequence[str],
        human: Callable[[Mapping[str, Any]], str],
        header: str,
        out: TextIO | None = None,
    ) -> None:
        self.fmt = fmt
        self.columns = list(columns)
        self.human = human
        self.header = header
        self.out = out or sys.stdout
        self.count = 0
        self._csv = csv.writer(self.out, lineterminator="\n") if fmt == "csv" else None

    def write(self, row: Mapping[str, Any]) -> None:
        """Write one row."""
        if self.count == 0:
            self._start()
        self.count += 1
        if self.fmt == "json":
            sep = "\n" if self.count == 1 else ",\n"
            self.out.write(sep + json.dumps(row))
        elif self.fmt == "jsonl":
            self.out.write(json.dumps(row) + "\n")
        elif self._csv is not None:
            self._csv.writerow(_csv_cell(row.get(c)) for c in self.columns)
        else:
            self.out.write(self.human(row) + "\n")

    def _start(self) -> None:
        if self.fmt == "json":
            self.out.write("[")
        elif self._csv is not None:
            self._csv.writerow(self.columns)
        elif self.fmt == "table":
            self.out.write(self.header + "\n")

    def close(self) -> None:
        """Finish the output (close the JSON array; headers for an empty CSV)."""
        if self.count == 0:
            if self.fmt == "json":
                self.out.write("[]\n")
            elif self._csv is not None:
                self._csv.writerow(self.columns)
        elif self.fmt == "json":
            self.out.write("\n]\n")
        self.out.flush()


def _csv_cell(value: Any) -> Any:
    return "" if value is None else value


def from_iso(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


def _size_text(size: int | None) -> str:
    if size is None:
        return "-"
    short = human_bytes(size)
    return short if short.endswith(" B") else f"{short} ({size} bytes)"


def render_show(doc: Mapping[str, Any], out: TextIO | None = None) -> None:
    """Write a ``show`` document for humans: a key/value block, then paths and attempts."""
    w = (out or sys.stdout).write
    first = doc["paths"][0]["path"] if doc["paths"] else doc["sha256"]
    w(one_line(str(first)) + "\n")
    state = doc["state"]
    if doc["remote_status"]:
        state += f" (remote {doc['remote_status']})"
    rows: list[tuple[str, str]] = [
        ("sha256", doc["sha256"] or "- (no content: nothing was hashed)"),
        ("size", _size_text(doc["size"])),
        ("state", state),
        ("asset id", doc["asset_id"] or "-"),
    ]
    if doc["sha256"] is not None:
        counts = f"{doc['attempt_count']}"
        extra = [
            f"{doc[k]} {label}"
            for k, label in (
                ("throttle_count", "throttled"),
                ("remote_failures", "remote failures"),
                ("possible_duplicates", "possible remote duplicates"),
            )
            if doc[k]
        ]
        if extra:
            counts += " (" + ", ".join(extra) + ")"
        rows.append(("attempts", counts))
    rows.append(("last error", one_line(doc["last_error"]) if doc["last_error"] else "-"))
    if doc["next_attempt_at"]:
        rows.append(("next try", local_time(from_iso(doc["next_attempt_at"]))))
    for key, label in (
        ("created_at", "first seen"),
        ("uploaded_at", "uploaded"),
        ("done_at", "done"),
    ):
        if doc[key]:
            rows.append((label, local_time(from_iso(doc[key]))))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        w(f"  {label:>{width}}: {value}\n")
    if doc["paths"]:
        w("paths:\n")
        for p in doc["paths"]:
            state = p["state"] or "forgotten"
            note = f"  ({one_line(p['reason'])})" if p.get("reason") else ""
            w(f"  {state:<9} {one_line(p['path'])}{note}\n")
    if doc["attempts"]:
        w("attempts:\n")
        for a in doc["attempts"]:
            status = "-" if a["http_status"] is None else str(a["http_status"])
            took = "" if a["duration_s"] is None else f" {human_duration(a['duration_s'])}"
            error = f"  {one_line(a['error'])}" if a["error"] else ""
            w(
                f"  #{a['id']:<4} {local_time(from_iso(a['started_at']))} {a['mode']:<10} "
                f"{a['outcome'] or 'running':<10} {status:>5} {a['asset_id'] or '-'}{took}{error}\n"
            )
    if doc["superseded_assets"]:
        w("superseded assets (not this content's; kept so none is lost track of):\n")
        for s in doc["superseded_assets"]:
            w(f"  {s['asset_id']}  {local_time(from_iso(s['at']))}  {one_line(s['reason'])}\n")


LS_HEADER = f"{'STATE':<9} {'FILE':<9} {'SIZE':>9}  {'ASSET ID':<22} PATH"


def ls_human(row: Mapping[str, Any]) -> str:
    size = human_bytes(row["size"]) if row["size"] is not None else "-"
    note = f"  ({one_line(row['reason'])})" if row["reason"] else ""
    where = f"{one_line(row['host'])}:" if row.get("host") else ""  # a fleet's listing
    return (
        f"{row['state']:<9} {row['path_state']:<9} {size:>9}  {row['asset_id'] or '-':<22} "
        f"{where}{one_line(row['path'])}{note}"
    )


def _counts_line(counts: Mapping[str, int]) -> str:
    shown = [f"{state} {n}" for state, n in counts.items() if n]
    return ", ".join(shown) or "none"


def render_status(doc: Mapping[str, Any], out: TextIO | None = None) -> None:
    """Write a ``status`` document for humans, one topic per line."""
    w = (out or sys.stdout).write
    d = doc["daemon"]
    if not d["running"]:
        daemon = "not running"
    else:
        daemon = f"running, pid {d['pid'] or '?'}, "
        daemon += "healthy" if d["healthy"] else f"UNHEALTHY: {d['reason']}"
        if d["heartbeat_age_s"] is not None:
            daemon += f" (heartbeat {human_duration(d['heartbeat_age_s'])} ago)"
        if d["healthy"] and d["reason"]:
            daemon += f"; {d['reason']}"
        if d["paused"]:
            daemon += f"; uploads paused: {d['paused']}"
    lines = [
        ("daemon", daemon),
        ("files", _counts_line(doc["files"])),
        ("paths", _counts_line(doc["paths"])),
        (
            "backlog",
            f"{doc['backlog']['files']} files, {human_bytes(doc['backlog']['bytes'])}; "
            f"{doc['due_now']} due now",
        ),
    ]
    for endpoint, r in doc["rate"].items():
        m, h = r["last_minute"], r["last_hour"]
        lines.append(
            (
                f"rate {endpoint}",
                f"{m['requests_per_s']:.2f}/s last minute, {h['requests_per_s']:.2f}/s last hour "
                f"(limit {r['limit_per_s']:g}/s); {h['uploaded']} uploaded, "
                f"{human_bytes(h['bytes'])} in the last hour",
            )
        )
    cds = doc["cooldowns"]
    lines.append(
        (
            "cool-downs",
            ", ".join(f"{c['endpoint']} {human_duration(c['remaining_s'])}" for c in cds) or "none",
        )
    )
    o = doc["oldest_waiting"]
    if o is None:
        lines.append(("oldest", "nothing waits"))
    else:
        what = one_line(o["path"]) if o["path"] else f"content {o['sha256'][:12]}"
        lines.append(("oldest", f"{what}: waiting {human_duration(o['age_s'])}: {o['why']}"))
    if doc["possible_remote_duplicates"]:
        lines.append(("duplicates", f"{doc['possible_remote_duplicates']} possible remote"))
    after = doc.get("after_upload")
    if after and any(after.values()):
        cleaned = f"{after['deleted']} deleted, {after['moved']} moved, {after['kept']} kept"
        if after["would"]:
            cleaned += f", {after['would']} would be (dry run)"
        hooks = f"{after['hooks_pending']} pending, {after['hooks_given_up']} given up"
        lines.append(("after upload", f"{cleaned}; hooks {hooks}"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        w(f"{key:<{width}}  {value}\n")
