"""The ingest stage: a settled path in, a hashed content recorded in the ledger out.

Given the config, the ledger, the metrics, the roots (``intake.Roots``) and a ``spawn``
callable from the daemon, the stage owns the settler (is the file complete?), the hash queue
with its workers, and the hasher's thread pool. A settled path is checked against its ledger
row (same stat fingerprint and hashed: nothing to do), pre-flighted by extension and magic
bytes, hashed off the loop, and recorded as a path and a content; ``on_queued()`` then tells
the upload stage that something may be due. A file that changed under an upload comes back
through :meth:`IngestStage.resettle`.
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
from syncd.config import Config
from syncd.display import display_path
from syncd.errors import EXIT_FAILURE, SyncdError
from syncd.failpoints import failpoint
from syncd.files import NotRegularFile
from syncd.fingerprint import Fingerprint
from syncd.formats import extension_of
from syncd.ingest.hashing import FileChanged, Hasher, HasherClosed
from syncd.ingest.media import check_extension, preflight, read_head
from syncd.ingest.roots import Roots
from syncd.ingest.settle import Settled, Settler
from syncd.ingest.writers import WriterCheck
from syncd.ledger.store import PathLedger
from syncd.metrics import Metrics

log = logging.getLogger(__name__)


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
    ``spawn`` and ``on_queued()`` (a content may be due for upload now).
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
    ) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.metrics = metrics
        self.roots = roots
        self.counters = counters
        self._spawn = spawn
        self._on_queued = on_queued
        self.hasher = Hasher(cfg.upload.hash_workers)
        self._queue: asyncio.Queue[Settled] = asyncio.Queue(maxsize=cfg.upload.hash_workers * 4)
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
        for i in range(self.cfg.upload.hash_workers):
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
            settled = await self._queue.get()
            self.hashing.add(settled.path)
            try:
                await self._ingest(settled)
            except SyncdError as exc:
                if exc.exit_code != EXIT_FAILURE:
                    raise  # the ledger cannot be written: stop rather than lose track
                log.error("%s: %s", display_path(settled.path), exc)
            finally:
                self.hashing.discard(settled.path)
                self._queue.task_done()

    async def _ingest(self, s: Settled) -> None:
        path, root = s.path, s.root
        state = self.roots.get(root)
        if state is None:
            return
        rec = await self.ledger.get_path(path)
        if rec is not None and rec.fingerprint == s.fingerprint and rec.sha256 is not None:
            if rec.state != "present":
                await self.ledger.touch_paths([path])
            self.counters.unchanged += 1
            return
        name = os.path.basename(path)
        # The extension alone rules most non-media out without opening the file.
        reason = check_extension(name)
        if reason is None:
            try:
                head = await read_head(path, follow_symlinks=state.cfg.follow_symlinks)
            except FileNotFoundError:
                await self.ledger.mark_gone(path)
                return
            except NotRegularFile as exc:
                await self.ledger.record_path_state(path, root, "skipped", str(exc), s.fingerprint)
                return
            except OSError as exc:
                await self._file_error(path, root, exc)
                return
            reason = preflight(
                name, s.fingerprint.size, head, max_bytes=self.cfg.upload.max_file_bytes
            )
        if reason is not None:
            self.counters.skipped += 1
            log.info("skipping %s: %s", display_path(path), reason)
            await self.ledger.record_path_state(path, root, "skipped", reason, s.fingerprint)
            return
        try:
            hashed = await self.hasher.hash(
                path, s.fingerprint, follow_symlinks=state.cfg.follow_symlinks
            )
        except FileChanged:
            log.debug("%s changed while hashing; settling it again", display_path(path))
            await self.resettle(path)
            return
        except HasherClosed:
            return  # shutting down: the path is found again by the next start's scan
        except FileNotFoundError:
            await self.ledger.mark_gone(path)
            return
        except NotRegularFile as exc:
            await self.ledger.record_path_state(path, root, "skipped", str(exc), s.fingerprint)
            return
        except OSError as exc:
            await self._file_error(path, root, exc)
            return
        failpoint("hashed")
        self.counters.hashed += 1
        self.metrics.inc("syncd_files_hashed_total")
        self.metrics.inc("syncd_bytes_hashed_total", hashed.size)
        content = await self.ledger.record_content(
            path, root, hashed.fingerprint, hashed.sha256, extension_of(name)
        )
        events.publish(
            "hashed", path=path, sha256=hashed.sha256, size=hashed.size, state=content.state
        )
        if content.created_at >= time.time() - 5 and content.state == "pending":
            self.counters.new_contents += 1
            log.info(
                "queued %s sha256=%s (%d bytes)",
                display_path(path),
                hashed.sha256[:12],
                hashed.size,
            )
            self._on_queued()
        else:
            self.counters.duplicates += 1
            log.info(
                "%s holds known content sha256=%s (%s%s); not uploading it again",
                display_path(path),
                hashed.sha256[:12],
                content.state,
                f", asset {content.asset_id}" if content.asset_id else "",
            )
            if content.state == "pending":
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
