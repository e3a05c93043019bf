"""The ingest stage: a settled path in, a hashed content recorded in the ledger out.

Given the config, the ledger, the metrics, the roots (``intake.Roots``) and a ``spawn``
callable from the daemon, the stage owns the settler (is the file complete?), the hash queue
with its workers, and the hasher's thread pool. A settled path is checked against its ledger
row (same stat fingerprint and hashed: nothing to do), pre-flighted by extension and magic
bytes, hashed off the loop, and recorded as a path and a content; ``on_queued()`` then tells
the upload stage that something may be due. The paths queued together go as one batch (one
ledger read, one hashing thread call, one transaction for the records), each with its own
outcome. A file that changed under an upload comes back through
:meth:`IngestStage.resettle`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from syncd import events
from syncd.chunksums import ChunkSumsCache
from syncd.config import Config
from syncd.display import display_path
from syncd.errors import EXIT_FAILURE, SyncdError
from syncd.failpoints import failpoint
from syncd.files import NotRegularFile
from syncd.fingerprint import Fingerprint
from syncd.formats import extension_of
from syncd.ingest.hashing import (
    FileChanged,
    Hashed,
    Hasher,
    HasherClosed,
    HashItem,
    Refused,
)
from syncd.ingest.media import HEAD_BYTES, check_extension, preflight
from syncd.ingest.roots import Roots
from syncd.ingest.settle import Settled, Settler
from syncd.ingest.writers import WriterCheck
from syncd.ledger.records import HashedPath
from syncd.ledger.store import PathLedger
from syncd.metrics import Metrics

log = logging.getLogger(__name__)


# Hash tasks per hashing thread: while one task's batch is in a thread, another's records
# are committed and its next batch is read from the ledger.
TASKS_PER_HASH_THREAD = 2
# A task takes what the settler has queued, up to this many files or bytes (at least one
# file), as one batch: one ledger read, one thread call, one transaction. The byte cap keeps
# big files spread over the threads instead of queued behind each other in one.
BATCH_FILES = 64
BATCH_BYTES = 16 << 20


class Spawn(Protocol):
    """Starts ``coro`` as a task named ``name`` that the daemon tracks and reaps; a
    ``critical`` task that fails stops the daemon with its exit code. Returns the task."""

    def __call__(
        self, coro: Coroutine[Any, Any, Any], name: str, *, critical: bool = True
    ) -> asyncio.Task[Any]: ...


@dataclass
class Counters:
    """What intake and ingest did since the daemon started: the shutdown summary line."""

    events: int = 0
    scanned: int = 0
    unchanged: int = 0
    hashed: int = 0
    new_contents: int = 0
    duplicates: int = 0
    skipped: int = 0
    unsettled: int = 0
    file_errors: int = 0


class IngestStage:
    """The settler, the hash queue and its ``upload.hash_workers`` workers.

    Given the config, the open ledger, the metrics, the shared ``roots``, ``counters``,
    ``spawn`` and ``on_queued()`` (a content may be due for upload now), and where to keep
    the per-chunk checksums of each content queued for upload (``chunk_sums``, for the
    uploader's send-side check; None keeps none).
    """

    def __init__(
        self,
        cfg: Config,
        ledger: PathLedger,
        metrics: Metrics,
        roots: Roots,
        *,
        counters: Counters,
        spawn: Spawn,
        on_queued: Callable[[], None],
        chunk_sums: ChunkSumsCache | None = None,
    ) -> None:
        self.cfg = cfg
        self.chunk_sums = chunk_sums
        self.ledger = ledger
        self.metrics = metrics
        self.roots = roots
        self.counters = counters
        self._spawn = spawn
        self._on_queued = on_queued
        self.hasher = Hasher(cfg.upload.hash_workers)
        self._queue: asyncio.Queue[Settled] = asyncio.Queue(
            maxsize=cfg.upload.hash_workers * TASKS_PER_HASH_THREAD * BATCH_FILES
        )
        self.hashing: set[str] = set()  # paths a worker holds now
        self.settler = Settler(
            quiet_s=cfg.settle.quiet_s,
            max_wait_s=cfg.settle.max_wait_s,
            on_settled=self._queue.put,
            on_unsettled=self._on_unsettled,
            writers=WriterCheck() if cfg.settle.check_open_writers else None,
        )
        self.follow_config(cfg)

    def follow_config(self, cfg: Config) -> None:
        """Take what a reloaded config changes here (which roots follow symlinks)."""
        self.cfg = cfg
        self.settler.follow_symlink_roots = {r.path for r in cfg.watch if r.follow_symlinks}

    def start(self) -> None:
        """Start the settler and the hash workers."""
        self._spawn(self.settler.run(), "settler")
        # More tasks than hashing threads: a batch's ledger read and records overlap another
        # batch's hashing.
        for i in range(self.cfg.upload.hash_workers * TASKS_PER_HASH_THREAD):
            self._spawn(self._hash_worker(), f"hasher-{i}")

    async def aclose(self) -> None:
        """Shutdown, after the workers were cancelled: stop the hasher's threads."""
        await self.hasher.aclose()

    def hash_depth(self) -> int:
        """Settled paths waiting for a hash worker or being hashed."""
        return self._queue.qsize() + len(self.hashing)

    def idle(self) -> bool:
        """Whether nothing is settling, queued for hashing or being hashed."""
        return not (self.settler.tracked() or self._queue.qsize() or self.hashing)

    @property
    def settle_delay_s(self) -> float:
        """The soonest a path offered now can be hashed again (asked by the upload stage when
        a file changed under an upload, to set when its content is due again)."""
        return self.settler.settle_delay_s

    async def resettle(self, path: str) -> None:
        """The file at ``path`` changed (while hashed, or under an upload): back to the
        settler. A path no root owns any more, or that cannot be stat-ed, is left alone."""
        state = self.roots.root_of(path)
        if state is None:
            return
        try:
            fp = await asyncio.to_thread(Fingerprint.stat, path)
        except OSError:
            return
        await self.settler.offer(path, state.cfg.path, fp)

    async def _on_unsettled(self, path: str, root: str, reason: str) -> None:
        self.counters.unsettled += 1
        since = self.settler.open_for_write().get(path)
        log.warning("%s never settled: %s; not uploading it", display_path(path), reason)
        await self.ledger.record_path_state(path, root, "unsettled", reason, open_since=since)

    async def _hash_worker(self) -> None:
        while True:
            # Whatever the settler has queued meanwhile goes as one batch (never waiting for
            # more): files a scan found arrive hundreds at a time, a lone new file alone.
            batch = [await self._queue.get()]
            size = batch[0].fingerprint.size
            while len(batch) < BATCH_FILES and size < BATCH_BYTES and not self._queue.empty():
                batch.append(self._queue.get_nowait())
                size += batch[-1].fingerprint.size
            self.hashing.update(s.path for s in batch)
            try:
                await self._ingest_batch(batch)
            except SyncdError as exc:
                if exc.exit_code != EXIT_FAILURE:
                    raise  # the ledger cannot be written: stop rather than lose track
                for s in batch:
                    log.error("%s: %s", display_path(s.path), exc)
            finally:
                for s in batch:
                    self.hashing.discard(s.path)
                    self._queue.task_done()

    async def _ingest_batch(self, batch: list[Settled]) -> None:
        """Ingest settled paths together: one ledger read for all of them, one call to a
        hashing thread that reads each file's head, pre-flights it and hashes it, and their
        records queued at once (the ledger's writer commits what is queued together in one
        transaction). Each file's outcome is its own (an unreadable file is one warning line,
        a vanished one is marked gone), the others go on. Raises the SyncdError of a ledger
        that cannot be written."""
        todo = [(s, state) for s in batch if (state := self.roots.get(s.root)) is not None]
        if not todo:
            return
        known = await self.ledger.get_paths([s.path for s, _ in todo])
        steps: list[tuple[str, Coroutine[Any, Any, None]]] = []
        touch: list[str] = []
        to_hash: list[Settled] = []
        items: list[HashItem] = []
        for s, state in todo:
            rec = known.get(s.path)
            if rec is not None and rec.fingerprint == s.fingerprint and rec.sha256 is not None:
                if rec.state != "present":
                    touch.append(s.path)
                self.counters.unchanged += 1
                continue
            # The extension alone rules most non-media out without opening the file.
            reason = check_extension(os.path.basename(s.path))
            if reason is not None:
                steps.append((s.path, self._skip(s, reason, s.fingerprint)))
                continue
            to_hash.append(s)
            items.append(HashItem(s.path, s.fingerprint, state.cfg.follow_symlinks))
        if touch:
            steps.append((touch[0], self.ledger.touch_paths(touch)))
        if items:
            try:
                outcomes = await self.hasher.hash_batch(
                    items, check=self._preflight, head_bytes=HEAD_BYTES
                )
            except HasherClosed:
                outcomes = []  # shutting down: the next start's scan finds these files again
            done: list[tuple[Settled, Hashed]] = []
            for s, outcome in zip(to_hash, outcomes, strict=False):
                if isinstance(outcome, Hashed):
                    done.append((s, outcome))
                else:
                    steps.append((s.path, self._after_hash(s, outcome)))
            if done:
                steps.append((done[0][0].path, self._record(done)))
        await self._run_steps(steps)

    def _preflight(self, path: str, fingerprint: Fingerprint, head: bytes) -> str | None:
        """The hasher's head check (in its thread): why the file is not uploaded, or None."""
        return preflight(
            os.path.basename(path),
            fingerprint.size,
            head,
            max_bytes=self.cfg.upload.max_file_bytes,
        )

    async def _run_steps(self, steps: list[tuple[str, Coroutine[Any, Any, None]]]) -> None:
        """Run each file's ledger step at once, so their transactions share one commit. A
        step's own failure (exit code EXIT_FAILURE) is logged with its path; any other error
        is raised once every step has ended (the ledger cannot be written: stop rather than
        lose track)."""
        if not steps:
            return
        results = await asyncio.gather(*(step for _, step in steps), return_exceptions=True)
        fatal: BaseException | None = None
        for (path, _), result in zip(steps, results, strict=True):
            if result is None:
                continue
            if isinstance(result, SyncdError) and result.exit_code == EXIT_FAILURE:
                log.error("%s: %s", display_path(path), result)
            elif fatal is None:
                fatal = result
        if fatal is not None:
            raise fatal

    async def _after_hash(self, s: Settled, outcome: Refused | OSError | SyncdError) -> None:
        """Record what hashing one file of a batch came to when it was not hashed."""
        path, root = s.path, s.root
        if isinstance(outcome, Refused):
            await self._skip(s, outcome.reason, outcome.fingerprint)
        elif isinstance(outcome, FileChanged):
            log.debug("%s changed while hashing; settling it again", display_path(path))
            await self.resettle(path)
        elif isinstance(outcome, HasherClosed):
            return  # shutting down: the path is found again by the next start's scan
        elif isinstance(outcome, FileNotFoundError):
            await self.ledger.mark_gone(path)
        elif isinstance(outcome, NotRegularFile):
            await self.ledger.record_path_state(path, root, "skipped", str(outcome), s.fingerprint)
        elif isinstance(outcome, OSError):
            await self._file_error(path, root, outcome)
        else:
            raise outcome

    async def _skip(self, s: Settled, reason: str, fingerprint: Fingerprint) -> None:
        self.counters.skipped += 1
        log.info("skipping %s: %s", display_path(s.path), reason)
        await self.ledger.record_path_state(s.path, s.root, "skipped", reason, fingerprint)

    async def _record(self, files: list[tuple[Settled, Hashed]]) -> None:
        """Record the hashed files of a batch in one transaction, then say what each became."""
        for _, hashed in files:
            failpoint("hashed")
            self.counters.hashed += 1
            self.metrics.inc("syncd_files_hashed_total")
            self.metrics.inc("syncd_bytes_hashed_total", hashed.size)
        try:
            contents = await self.ledger.record_contents(
                [
                    HashedPath(
                        s.path,
                        s.root,
                        hashed.fingerprint,
                        hashed.sha256,
                        extension_of(os.path.basename(s.path)),
                    )
                    for s, hashed in files
                ]
            )
        except SyncdError as exc:
            if exc.exit_code != EXIT_FAILURE:
                raise
            for s, _ in files:
                log.error("%s: %s", display_path(s.path), exc)
            return
        recent = time.time() - 5
        due = False
        for (s, hashed), content in zip(files, contents, strict=True):
            path = s.path
            events.publish(
                "hashed", path=path, sha256=hashed.sha256, size=hashed.size, state=content.state
            )
            chunks = hashed.chunks()
            if content.state == "pending" and self.chunk_sums is not None and chunks is not None:
                self.chunk_sums.put(chunks)
            due = due or content.state == "pending"
            if content.created_at >= recent and content.state == "pending":
                self.counters.new_contents += 1
                log.info(
                    "queued %s sha256=%s (%d bytes)",
                    display_path(path),
                    hashed.sha256[:12],
                    hashed.size,
                )
            else:
                self.counters.duplicates += 1
                log.info(
                    "%s holds known content sha256=%s (%s%s); not uploading it again",
                    display_path(path),
                    hashed.sha256[:12],
                    content.state,
                    f", asset {content.asset_id}" if content.asset_id else "",
                )
        if due:
            self._on_queued()

    async def _file_error(self, path: str, root: str, exc: OSError) -> None:
        self.counters.file_errors += 1
        reason = f"cannot read: {exc.strerror or exc}"
        prev = await self.ledger.get_path(path)
        if prev is not None and prev.state == "error" and prev.reason == reason:
            # Met again by a rescan: said once already, the ledger shows it meanwhile.
            log.debug("%s: still %s", display_path(path), reason)
        else:
            log.warning("%s: %s; retried at the next rescan", display_path(path), reason)
        await self.ledger.record_path_state(path, root, "error", reason, None)
