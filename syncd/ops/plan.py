"""``syncd plan``: a dry run that says what a sync would do, touching neither API nor ledger.

It walks every watched root with the daemon's own scanner and filter, and sorts each candidate
file into one category:

- ``upload``: new or changed, passes pre-flight: it would be hashed and uploaded, unless the
  hash shows bytes the ledger already has (a duplicate). Hashing a whole library just to plan
  would take as long as the sync itself, so the plan does not hash and says so.
- ``queued``: unchanged, its content is in the ledger still waiting to be uploaded.
- ``duplicate``: unchanged (same stat fingerprint as the ledger has), its content already
  uploaded: skipped, never read again.
- ``failed``: unchanged, its content failed or was rejected by the API; ``syncd retry`` would
  queue it again.
- ``waiting``: modified within ``settle.quiet_s`` or held open for writing: not stable yet.
- ``rejected``: refused by pre-flight (not a supported format, empty, too large, not media) or
  unreadable; with the reasons.

Then it counts the requests the uploads need and the time they take at the configured rates
(transfer time not included: it depends on the link, which the plan cannot know). The ledger,
when it exists, is only read (SQLite read-only mode).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from syncd.config import Config, WatchRoot
from syncd.errors import EXIT_FAILURE, EXIT_OK
from syncd.files import NotRegularFile
from syncd.ingest.media import check_extension, preflight, read_head
from syncd.ingest.pathfilter import PathFilter
from syncd.ingest.scanner import RootUnavailable, ScanEntry, scan_root
from syncd.ingest.writers import WriterCheck
from syncd.ledger.records import Content, PathRecord
from syncd.ledger.sqlite import Ledger
from syncd.ledger.store import OperatorLedger
from syncd.ops.render import add_format_arguments, human_bytes, human_duration, write_json
from syncd.ops.report import Command

CATEGORIES = ("upload", "queued", "duplicate", "failed", "waiting", "rejected")
_DESCRIPTIONS = {
    "upload": "new or changed: would be hashed and uploaded unless the hash shows a duplicate",
    "queued": "unchanged, already in the ledger waiting to upload",
    "duplicate": "unchanged, content already uploaded: skipped",
    "failed": "unchanged, content failed or was rejected before (`syncd retry` re-queues)",
    "waiting": "not stable yet: written within settle.quiet_s or open for writing",
    "rejected": "refused before upload (pre-flight) or unreadable",
}
_QUEUED_STATES = ("pending", "allocated", "uploading")
_UPLOADED_STATES = ("uploaded", "done")


@dataclass
class _Tally:
    files: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size


@dataclass
class Plan:
    """What a sync would do: files and bytes per category, reasons for rejections, and the
    uploads by mode (``direct`` or ``signed_url``)."""

    tallies: dict[str, _Tally] = field(default_factory=lambda: {c: _Tally() for c in CATEGORIES})
    reasons: Counter[str] = field(default_factory=Counter)
    uploads: Counter[str] = field(default_factory=Counter)
    roots: list[dict[str, Any]] = field(default_factory=list)
    # Files a sync would upload whose folder deletes or moves them once SUCCESS.
    after_success: Counter[str] = field(default_factory=Counter)
    # Queued contents held by several paths are uploaded once.
    queued_seen: set[str] = field(default_factory=set)


def upload_mode_for(cfg: Config, size: int) -> str:
    """Given the config and a file size, return the mode the uploader would use."""
    mode = cfg.api.upload_mode
    if mode == "auto":
        return "signed_url" if size >= cfg.api.signed_url_min_bytes else "direct"
    return mode


class _Planner:
    def __init__(self, cfg: Config, ledger: OperatorLedger | None, now: float) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.now = now
        self.plan = Plan()
        self.writers = WriterCheck() if cfg.settle.check_open_writers else None

    async def root(self, root: WatchRoot) -> None:
        filt = PathFilter(root, self.cfg.settle.temp_patterns)
        entry: dict[str, Any] = {"path": root.path, "available": True, "error": None, "files": 0}
        self.plan.roots.append(entry)
        walker = scan_root(root, filt, all_roots=[r.path for r in self.cfg.watch])
        try:
            async with contextlib.aclosing(walker) as batches:
                async for batch in batches:
                    entry["files"] += len(batch)
                    await self.batch(root, batch)
        except RootUnavailable as exc:
            entry.update(available=False, error=exc.detail)

    async def batch(self, root: WatchRoot, batch: list[ScanEntry]) -> None:
        known: dict[str, PathRecord] = {}
        contents: dict[str, Content] = {}
        if self.ledger is not None:
            known = await self.ledger.get_paths([e.path for e in batch])
            shas = [r.sha256 for r in known.values() if r.sha256 is not None]
            contents = await self.ledger.get_contents(shas)
        fresh: list[ScanEntry] = []
        for e in batch:
            rec = known.get(e.path)
            size = e.fingerprint.size
            if rec is not None and rec.fingerprint == e.fingerprint:
                if rec.state == "skipped":
                    self.reject(size, rec.reason or "skipped before")
                    continue
                content = contents.get(rec.sha256) if rec.sha256 else None
                if content is not None:
                    self.known(content, size, root)
                    continue
            fresh.append(e)
        quiet_ns = self.cfg.settle.quiet_s * 1e9
        now_ns = self.now * 1e9
        candidates: list[ScanEntry] = []
        for e in fresh:
            size = e.fingerprint.size
            if now_ns - e.fingerprint.mtime_ns < quiet_ns:
                self.plan.tallies["waiting"].add(size)
                continue
            why = check_extension(os.path.basename(e.path))
            if why is not None:
                self.reject(size, why)
                continue
            candidates.append(e)
        if self.writers is not None and candidates:
            busy = await self.writers.writers({e.path: e.fingerprint for e in candidates})
            for e in [c for c in candidates if c.path in busy]:
                self.plan.tallies["waiting"].add(e.fingerprint.size)
            candidates = [c for c in candidates if c.path not in busy]
        heads = await asyncio.gather(
            *(read_head(e.path, follow_symlinks=root.follow_symlinks) for e in candidates),
            return_exceptions=True,
        )
        for e, head in zip(candidates, heads, strict=True):
            size = e.fingerprint.size
            if isinstance(head, FileNotFoundError):
                continue  # gone since the walk: nothing to do for it
            if isinstance(head, NotRegularFile):
                self.reject(size, f"not a regular file ({head.kind})")
                continue
            if isinstance(head, OSError):
                self.reject(size, f"cannot read: {head.strerror or head}")
                continue
            if isinstance(head, BaseException):
                raise head
            why = preflight(
                os.path.basename(e.path), size, head, max_bytes=self.cfg.upload.max_file_bytes
            )
            if why is not None:
                self.reject(size, why)
                continue
            self.plan.tallies["upload"].add(size)
            self.plan.uploads[upload_mode_for(self.cfg, size)] += 1
            self.cleaned(root)

    def cleaned(self, root: WatchRoot) -> None:
        if root.after_success != "keep":
            self.plan.after_success[root.after_success] += 1

    def known(self, content: Content, size: int, root: WatchRoot) -> None:
        if content.state in _UPLOADED_STATES:
            self.plan.tallies["duplicate"].add(size)
        elif content.state in _QUEUED_STATES:
            self.plan.tallies["queued"].add(size)
            self.cleaned(root)
            if content.sha256 not in self.plan.queued_seen:
                self.plan.queued_seen.add(content.sha256)
                self.plan.uploads[upload_mode_for(self.cfg, content.size)] += 1
        else:
            self.plan.tallies["failed"].add(size)

    def reject(self, size: int, reason: str) -> None:
        self.plan.tallies["rejected"].add(size)
        # Reasons that carry sizes ("larger than ... (123 > 100)") group by their text up to
        # the parenthesis so the list stays short.
        self.plan.reasons[reason.split(" (", 1)[0] if "larger than" in reason else reason] += 1


def plan_document(cfg: Config, plan: Plan, ledger_exists: bool) -> dict[str, Any]:
    """Given the config and a finished plan, return the ``syncd plan --json`` document."""
    limits = cfg.rate_limits
    direct = plan.uploads["direct"]
    signed = plan.uploads["signed_url"]
    requests = {
        "upload": direct,
        "signed_url": signed,
        "storage": signed,
        "metadata": direct + signed,
    }
    # The endpoints have separate buckets that run side by side: the slowest one sets the pace.
    paced_s = {
        "upload": direct / limits.upload_per_s,
        "signed_url": signed / limits.signed_url_per_s,
        "metadata": (direct + signed) / limits.metadata_per_s,
    }
    notes = [
        "new files are not hashed by the plan: some may turn out to be duplicates of known "
        "content and would then not be uploaded",
        "metadata requests are a minimum: one status poll per upload; slow processing needs more",
        "time counts request pacing only, not transfer time",
    ]
    if not ledger_exists:
        notes.insert(0, f"no ledger at {cfg.ledger.path} yet: every file counts as new")
    if not cfg.watch:
        notes.insert(0, "no folders to watch: add some under watch:")
    return {
        "roots": plan.roots,
        "categories": {c: {"files": t.files, "bytes": t.bytes} for c, t in plan.tallies.items()},
        "rejected_reasons": dict(plan.reasons.most_common()),
        "requests": requests,
        "rate_limits_per_s": {
            "upload": limits.upload_per_s,
            "signed_url": limits.signed_url_per_s,
            "metadata": limits.metadata_per_s,
        },
        "estimated_s": round(max(paced_s.values()), 1),
        "after_success": {
            "delete": plan.after_success["delete"],
            "move": plan.after_success["move"],
        },
        "ledger": {"path": cfg.ledger.path, "exists": ledger_exists},
        "notes": notes,
    }


def render_plan(doc: Mapping[str, Any], out: TextIO | None = None) -> None:
    """Write a plan for humans: one line per category, then requests and time."""
    w = (out or sys.stdout).write
    roots = doc["roots"]
    w(f"plan for {len(roots)} watched folder{'s' if len(roots) != 1 else ''}\n")
    for r in roots:
        state = f"{r['files']} candidate files" if r["available"] else f"UNAVAILABLE: {r['error']}"
        w(f"  {r['path']}: {state}\n")
    for name in CATEGORIES:
        t = doc["categories"][name]
        size = human_bytes(t["bytes"])
        w(f"{name:<10} {t['files']:>8} files {size:>10}  {_DESCRIPTIONS[name]}\n")
    for reason, n in doc["rejected_reasons"].items():
        w(f"{'':<10} {n:>8} {reason}\n")
    req = doc["requests"]
    w(
        f"requests   {req['upload']} upload, {req['signed_url']} signed-URL (+{req['storage']} "
        f"storage), at least {req['metadata']} metadata\n"
    )
    limits = doc["rate_limits_per_s"]
    w(
        f"time       {human_duration(doc['estimated_s'])} at the configured rates (upload "
        f"{limits['upload']:g}/s, signed-URL {limits['signed_url']:g}/s, metadata "
        f"{limits['metadata']:g}/s)\n"
    )
    after = doc["after_success"]
    if after["delete"] or after["move"]:
        w(
            f"after      {after['delete']} would be deleted and {after['move']} moved once "
            "SUCCESS (after_success), unless they change first\n"
        )
    for note in doc["notes"]:
        w(f"note: {note}\n")


async def make_plan(cfg: Config, now: float | None = None) -> dict[str, Any]:
    """Scan every root and return the plan document. Reads the ledger (read-only) if it
    exists; never writes anything and never calls the API."""
    exists = await asyncio.to_thread(os.path.exists, cfg.ledger.path)
    ledger = await Ledger.open(cfg.ledger.path, readonly=True, check=False) if exists else None
    try:
        planner = _Planner(cfg, ledger, time.time() if now is None else now)
        for root in cfg.watch:
            await planner.root(root)
    finally:
        if ledger is not None:
            await ledger.close()
    return plan_document(cfg, planner.plan, exists)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``syncd plan``."""
    add_format_arguments(p)


async def run(args: argparse.Namespace, cfg: Config) -> int:
    """``syncd plan``: print the plan. Returns 0, or 1 when a watched folder is unavailable
    (the plan for the others is still printed)."""
    doc = await make_plan(cfg)
    if args.format == "json":
        write_json(doc)
    else:
        render_plan(doc)
    return EXIT_OK if all(r["available"] for r in doc["roots"]) else EXIT_FAILURE


COMMAND = Command(
    "plan", "dry run: what a sync would upload, skip or reject, and how long", add_arguments, run
)
