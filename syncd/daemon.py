"""The daemon: owns the lifecycle, the signals and every task of the pipeline.

Startup takes the ledger's lock, checks and recovers the ledger, then starts, in order: the
hashers, the settler, the watches and scans (intake), the upload dispatcher and workers, the
poller, and the housekeeping tasks (heartbeat, backups, root monitor, HTTP endpoint). Signal
handlers only set events. Shutdown stops intake, lets in-flight uploads finish within
``shutdown.grace_s``, cancels the rest (retried on the next start), flushes the ledger and logs
one summary line with counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from syncd import events
from syncd.after.queue import hook_settings_from
from syncd.after.stage import AfterSettings, AfterStage
from syncd.config import Config, WatchRoot, load_config
from syncd.errors import EXIT_OK, EXIT_SOFTWARE, EXIT_UNAVAILABLE, ConfigError, SyncdError
from syncd.events import EventHub
from syncd.failpoints import failpoint
from syncd.fingerprint import Fingerprint
from syncd.formats import extension_of
from syncd.ingest.hashing import FileChanged, Hasher, HasherClosed, NotRegularFile
from syncd.ingest.media import check_extension, preflight, read_head
from syncd.ingest.pathfilter import PathFilter
from syncd.ingest.scanner import RootUnavailable, ScanEntry, ScanReport, scan_dir, scan_root
from syncd.ingest.settle import Settled, Settler
from syncd.ingest.watcher import (
    FsEvent,
    RootIdentity,
    Watcher,
    WatchError,
    root_available,
    root_identity,
)
from syncd.ingest.writers import WriterCheck
from syncd.ledger.postgres import PostgresLedger
from syncd.ledger.sqlite import Ledger, LedgerLock, PathReader, prepare_ledger_dir
from syncd.ledger.store import LedgerStore
from syncd.metrics import Metrics
from syncd.notify import Notifier, watchdog_loop
from syncd.ops.dashboard import DaemonView
from syncd.ops.report import iso, path_fields
from syncd.ops.webapi import Health, start_http, stop_http
from syncd.upload.client import MaviClient
from syncd.upload.fleet_pacer import build_pacer
from syncd.upload.pacer import Pacer
from syncd.upload.poller import Poller
from syncd.upload.shaper import ByteShaper, timetable_from
from syncd.upload.uploader import Uploader

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
# New folders are scanned once none has appeared for NEW_DIRS_QUIET_S, or NEW_DIRS_MAX_WAIT_S
# after the first: a tree created at once is then walked once, from its top.
NEW_DIRS_QUIET_S = 0.2
NEW_DIRS_MAX_WAIT_S = 1.0
ROOT_CHECK_S = 10.0


@dataclass
class Counters:
    """What the daemon did since it started: the shutdown summary line."""

    events: int = 0
    scanned: int = 0
    unchanged: int = 0
    hashed: int = 0
    new_contents: int = 0
    duplicates: int = 0
    skipped: int = 0
    unsettled: int = 0
    file_errors: int = 0


@dataclass
class RootState:
    """One watched root at run time."""

    cfg: WatchRoot
    filt: PathFilter
    available: bool = False
    identity: RootIdentity | None = None  # what it was when first armed
    watched: bool = False
    reported: bool = False  # its unavailability was logged (once, until it comes back)
    full_scan: asyncio.Task[None] | None = None
    rescan_wanted: bool = False  # a full scan was asked for while one ran
    following_up: bool = False  # the next full scan is a follow-up of a repeated request
    pending_rescan: asyncio.TimerHandle | None = None
    scans: set[asyncio.Task[None]] = field(default_factory=set)


def _display(path: str) -> str:
    # Undecodable bytes as \xNN; a name with a newline or another control character is quoted
    # and escaped, so it cannot split or forge a log line.
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return text if text.isprintable() else repr(text)


class Daemon:
    """The running syncd. Given the validated config and the API key.

    ``once`` turns it into ``syncd sync --once``: scan, upload everything due, wait for final
    statuses, stop. ``config_path`` is re-read on SIGHUP.
    """

    def __init__(
        self,
        cfg: Config,
        key: str,
        *,
        config_path: str | None = None,
        once: bool = False,
        notifier: Notifier | None = None,
        progress: Callable[[Daemon], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._key = key
        self.config_path = config_path
        self.once = once
        self.notifier = notifier or Notifier.from_env()
        self.progress = progress
        self.metrics = Metrics()
        self.events = EventHub()  # what the pipeline publishes; /v1/events follows it
        self.counters = Counters()
        self.started_at = time.time()
        self.ready = False
        self.backlog_bytes = 0  # bytes still to upload (kept current for progress displays)
        self.exit_code = EXIT_OK
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._stop_reason = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self.after: AfterStage | None = None
        self._roots: dict[str, RootState] = {}
        self._hashing: set[str] = set()
        self._scans_running = 0
        self._events: asyncio.Queue[FsEvent] = asyncio.Queue()
        # Folders that appeared (created or moved in) per root, waiting to be scanned; when the
        # first and the last of them arrived (monotonic).
        self._new_dirs: dict[str, set[str]] = {}
        self._new_dirs_since = self._new_dirs_last = 0.0
        self._new_dirs_event = asyncio.Event()
        # Set in run():
        self.ledger: LedgerStore
        self._fleet: PostgresLedger | None = None  # the shared ledger, in fleet mode
        self.uploader: Uploader
        self.poller: Poller
        self.settler: Settler
        self.hasher: Hasher
        self.pacer: Pacer
        self._hash_q: asyncio.Queue[Settled]
        self._watcher: Watcher | None = None

    # ---------------------------------------------------------------- control

    def request_stop(self, reason: str = "requested") -> None:
        """Begin a graceful shutdown (idempotent)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            self._reload.set()
            return
        if self._stop.is_set() and signum == signal.SIGINT:
            log.warning("second SIGINT: exiting at once (the ledger stays consistent)")
            os._exit(130)
        log.info("%s received: shutting down", name)
        self.request_stop(name)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str, *, critical: bool = True) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._reap(t, critical))

    def _reap(self, task: asyncio.Task[Any], critical: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, SyncdError):
            log.error("%s stopped: %s", task.get_name(), exc)
            code = exc.exit_code
        else:
            log.error("%s crashed", task.get_name(), exc_info=exc)
            code = EXIT_SOFTWARE
        if critical:
            self.exit_code = code
            self.request_stop(f"{task.get_name()} failed")

    # ---------------------------------------------------------------- run

    async def run(self) -> int:
        """Run until stopped; returns the process exit code. Raises SyncdError at startup."""
        cfg = self.cfg
        if cfg.ledger.url is not None:
            return await self._run_fleet(cfg.ledger.url)
        lock = LedgerLock(cfg.ledger.path)
        await asyncio.to_thread(prepare_ledger_dir, cfg.ledger.path)
        await asyncio.to_thread(lock.acquire)
        # quick_check reads the whole file (0.7 s at 100,000 files, 12 s at a million rows):
        # it is skipped only when the last run closed the ledger after a graceful stop and
        # nothing has touched the file since. A crash, a kill or any other writer meanwhile
        # (an sqlite3 shell, a copy put back) means a full check before anything is trusted.
        try:
            clean = await asyncio.to_thread(lock.closed_cleanly)
            self.ledger = await Ledger.open(cfg.ledger.path, check=not clean)
        except BaseException:
            lock.release()
            raise
        if clean:
            log.debug("ledger closed cleanly by the last run and untouched since; not checking it")
        code: int | None = None
        try:
            with self.events.activate():  # the tasks started in _run_open publish to it
                code = await self._run_open()
            return code
        finally:
            await self.ledger.close()
            if code == EXIT_OK:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(lock.mark_clean)
            lock.release()

    async def _run_fleet(self, url: str) -> int:
        """Run on the shared PostgreSQL ledger of a fleet (``docs/fleet-ledger.md``): no lock
        file, since hosts share it by design; claims keep them from doing the same work."""
        # The stages wait out a server restart, reads included: a file that settles meanwhile
        # is held (the bounded hash queue and the settler make the walks wait), not dropped.
        store = await PostgresLedger.open(
            url,
            host=self.cfg.fleet.host_name,
            lease_s=self.cfg.ledger.lease_s,
            wait_out_outages=True,
        )
        self._fleet = store
        self.ledger = store
        try:
            return await self._run_open()
        finally:
            # Claims on work not started go back at once instead of when their leases expire.
            with contextlib.suppress(SyncdError):
                await store.release_claims()
            await store.close()

    async def _run_open(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        report = await self.ledger.recover()
        self.metrics.inc("syncd_possible_duplicates_total", report.interrupted_direct)
        if report.interrupted_direct or report.resumed_signed_url:
            log.warning(
                "recovered from an unclean stop: %d direct upload(s) back to pending (possible "
                "remote duplicates), %d signed-URL upload(s) resumed on their asset ids",
                report.interrupted_direct,
                report.resumed_signed_url,
            )
        await self._start_after(cfg)
        # The local buckets, or the fleet's budget on Redis when fleet.redis_url is set.
        self.pacer = await build_pacer(cfg, self._key, self.metrics)
        snapshot = await self.ledger.get_kv("pacer")
        if isinstance(snapshot, dict):
            self.pacer.restore(snapshot)
        self.hasher = Hasher(cfg.upload.hash_workers)
        self._hash_q = asyncio.Queue(maxsize=cfg.upload.hash_workers * 4)
        writers = WriterCheck() if cfg.settle.check_open_writers else None
        self.settler = Settler(
            quiet_s=cfg.settle.quiet_s,
            max_wait_s=cfg.settle.max_wait_s,
            on_settled=self._hash_q.put,
            on_unsettled=self._on_unsettled,
            writers=writers,
        )
        self.settler.follow_symlink_roots = {r.path for r in cfg.watch if r.follow_symlinks}
        # One byte budget for every worker's file bodies (upload.max_bytes_per_s, schedule).
        self.shaper = ByteShaper(timetable_from(cfg.upload))
        client = MaviClient(
            cfg.api.base_url,
            self._key,
            connect_timeout_s=cfg.api.connect_timeout_s,
            read_timeout_s=cfg.api.read_timeout_s,
            verify_tls=cfg.api.verify_tls,
            shaper=self.shaper,
        )
        self.uploader = Uploader(
            cfg, self.ledger, client, self.pacer, self.metrics, on_changed=self._resettle
        )
        self.poller = Poller(
            cfg, self.ledger, client, self.pacer, self.metrics, on_requeued=self.uploader.wake
        )
        self.uploader.on_uploaded = self.poller.wake
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        http_runner = None
        workers: list[asyncio.Task[None]] = []
        try:
            if cfg.http.listen and not self.once:
                try:
                    http_runner = await start_http(
                        cfg.http.listen,
                        ledger=self.ledger,
                        metrics=self.metrics,
                        health=self.health,
                        extra_hosts=cfg.http.allowed_hosts,
                        daemon=DaemonView(
                            hub=self.events,
                            snapshot=self.live,
                            settling=self.settler.waiting,
                            roots=lambda: [r.cfg.path for r in self._roots.values()],
                            limits_per_s={
                                "upload": cfg.rate_limits.upload_per_s,
                                "signed_url": cfg.rate_limits.signed_url_per_s,
                                "metadata": cfg.rate_limits.metadata_per_s,
                            },
                        ),
                    )
                except OSError as exc:
                    log.error(
                        "cannot serve http.listen %s (%s); continuing without it",
                        cfg.http.listen,
                        exc.strerror or exc,
                    )
            self._spawn(self.settler.run(), "settler")
            for i in range(cfg.upload.hash_workers):
                self._spawn(self._hash_worker(), f"hasher-{i}")
            if not self.once:
                self._watcher = Watcher(loop, self._events.put_nowait)
                self._spawn(self._event_loop(), "events")
                self._spawn(self._new_dirs_loop(), "new-folders")
            # Every root is known before any is watched or scanned: with nested roots, the
            # outer root's first events and scan must already leave the inner root's files to it.
            for state in [self._new_root(root) for root in cfg.watch]:
                await self._arm_root(state)
            self._spawn(self.uploader.dispatch(), "dispatcher")
            for i in range(cfg.upload.workers):
                task = asyncio.create_task(self.uploader.work(), name=f"uploader-{i}")
                task.add_done_callback(lambda t: self._reap(t, True))
                workers.append(task)
            self._spawn(self.poller.run(), "poller")
            if self.after is not None:
                self._spawn(self.after.run(), "after-upload")
            self._spawn(self._heartbeat(), "heartbeat", critical=False)
            if not self.once:
                self._spawn(self._root_monitor(), "root-monitor", critical=False)
                self._spawn(self._rescan_loop(), "rescan", critical=False)
                self._spawn(self._reload_loop(), "reload", critical=False)
                if cfg.ledger.backup_dir and cfg.ledger.backup_interval_s > 0:
                    self._spawn(self._backup_loop(), "backup", critical=False)
                if self.notifier.watchdog_interval_s:
                    self._spawn(watchdog_loop(self.notifier), "watchdog", critical=False)
            else:
                self._spawn(self._once_loop(), "once")
            self.ready = True
            self.notifier.ready(self.summary())
            log.info(
                "syncd ready: %d root(s), %d upload worker(s), ledger %s",
                len(self._roots),
                cfg.upload.workers,
                cfg.ledger.path,
            )
            await self._stop.wait()
        finally:
            await self._shutdown(workers, client, http_runner)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.notifier.close()
        return self.exit_code

    async def _shutdown(
        self, workers: list[asyncio.Task[None]], client: MaviClient, http_runner: Any
    ) -> None:
        self.notifier.stopping()
        self.ready = False
        # 1. Stop intake: no new events, scans, hashes or claims.
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.stop)
        self.uploader.stop_intake()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.hasher.aclose()
        # 2. Drain in-flight uploads within the grace period, then cancel them.
        cancelled = await self.uploader.drain(self.cfg.shutdown.grace_s, workers)
        # 3. Flush.
        with contextlib.suppress(SyncdError):
            await self.ledger.set_kv("pacer", self.pacer.snapshot())
            await self._write_heartbeat(stopping=True)
        await client.close()
        await self.pacer.aclose()
        self.events.close()  # ends every /v1/events stream: none may hold the shutdown up
        if http_runner is not None:
            await stop_http(http_runner)
        s = self.uploader.stats
        dups = await self.ledger.possible_duplicates()
        log.info(
            "syncd stopped (%s): uploaded=%d bytes=%d done=%d retried=%d throttled=%d "
            "rejected=%d failed=%d superseded=%d hashed=%d unchanged=%d duplicates=%d "
            "skipped=%d unsettled=%d cancelled_in_flight=%d possible_remote_duplicates=%d "
            "uptime_s=%.0f",
            self._stop_reason or "done",
            s.uploaded,
            s.bytes_sent,
            self.poller.done,
            s.retried,
            s.throttled,
            s.rejected,
            s.failed,
            s.superseded,
            self.counters.hashed,
            self.counters.unchanged,
            self.counters.duplicates,
            self.counters.skipped,
            self.counters.unsettled,
            cancelled,
            dups,
            time.time() - self.started_at,
        )

    # ---------------------------------------------------------------- health

    def health(self) -> Health:
        """Current health for /healthz, /readyz and the heartbeat."""
        state = self.uploader.state
        unavailable = [r.cfg.path for r in self._roots.values() if not r.available]
        reason = state.reason
        healthy = state.healthy
        if self.ledger.stalled is not None:
            healthy, reason = False, self.ledger.stalled
        if not reason and unavailable:
            reason = "unavailable root(s): " + ", ".join(unavailable)
        return Health(healthy=healthy, ready=self.ready, reason=reason)

    def live(self) -> dict[str, Any]:
        """What the dashboard shows of the running daemon beyond the ledger (JSON-ready; see
        :class:`~syncd.ops.dashboard.DaemonView`)."""
        h = self.health()
        pause = self.uploader.state.pause
        hits = self._watcher.watch_limit_hits() if self._watcher is not None else {}
        return {
            "pid": os.getpid(),
            "started_at": iso(self.started_at),
            "healthy": h.healthy,
            "ready": h.ready,
            "reason": h.reason,
            "queue": {
                "settling": self.settler.tracked(),
                "hashing": self._hash_q.qsize() + len(self._hashing),
                "upload_queued": self.uploader.queue_depth(),
                "uploading": len(self.uploader.state.in_flight),
            },
            "paused": None
            if pause is None
            else {"kind": pause.kind, "reason": pause.reason, "until": iso(pause.until)},
            "cooldowns": [
                {"endpoint": name, "remaining_s": round(st.cooldown_remaining_s, 1)}
                for name, st in self.pacer.stats().items()
                if st.cooldown_remaining_s > 0
            ],
            "roots": [
                {
                    **path_fields(state.cfg.path),
                    "available": state.available,
                    "watched": state.watched,
                    "watch_limit_hits": hits.get(os.path.normpath(state.cfg.path), 0),
                }
                for state in self._roots.values()
            ],
        }

    def summary(self) -> str:
        """One line for sd_notify STATUS= and progress logs."""
        s = self.uploader.stats
        text = (
            f"uploaded {s.uploaded}, done {self.poller.done}, in flight "
            f"{len(self.uploader.state.in_flight)}, settling {self.settler.tracked()}, "
            f"hashing {len(self._hashing)}"
        )
        pause = self.uploader.state.pause
        if pause is not None:
            text += f"; paused: {pause.reason}"
        return text

    async def _write_heartbeat(self, *, stopping: bool = False) -> None:
        h = self.health()
        pause = self.uploader.state.pause
        await self.ledger.set_kv(
            "daemon",
            {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "updated_at": time.time(),
                "healthy": h.healthy,
                "ready": h.ready and not stopping,
                "reason": h.reason,
                "paused": pause.reason if pause else None,
                "queue": {
                    "settling": self.settler.tracked(),
                    "hashing": self._hash_q.qsize() + len(self._hashing),
                    "upload_queued": self.uploader.queue_depth(),
                    "uploading": len(self.uploader.state.in_flight),
                },
                "open_for_write": self.settler.open_for_write(),
                "stopping": stopping,
            },
        )

    async def _heartbeat(self) -> None:
        while True:
            self.metrics.set("syncd_queue_depth", self.settler.tracked(), queue="settle")
            self.metrics.set(
                "syncd_queue_depth", self._hash_q.qsize() + len(self._hashing), queue="hash"
            )
            self.metrics.set("syncd_queue_depth", self.uploader.queue_depth(), queue="upload")
            for name, st in self.pacer.stats().items():
                self.metrics.set("syncd_cooldown_seconds", st.cooldown_remaining_s, endpoint=name)
            await self._write_heartbeat()
            await self.ledger.set_kv("pacer", self.pacer.snapshot())
            text = self.summary()
            self.notifier.status(text)
            if self.progress is not None:
                self.backlog_bytes = (await self.ledger.counts())["backlog"]["bytes"]
                self.progress(self)
            await asyncio.sleep(HEARTBEAT_S if not self.once else 1.0)

    # ---------------------------------------------------------------- roots and intake

    async def _add_root(self, root: WatchRoot) -> None:
        await self._arm_root(self._new_root(root))

    def _new_root(self, root: WatchRoot) -> RootState:
        state = RootState(root, PathFilter(root, self.cfg.settle.temp_patterns))
        self._roots[root.path] = state
        return state

    async def _arm_root(self, state: RootState) -> None:
        """Watch and scan a root if it is available; report it clearly (once) if not.

        A root that was armed before must come back as what it was (the same file system, or
        a mount point mounted again): an empty mount point left by an unmounted share is not
        the share, and scanning it would mark every file gone.
        """
        path = state.cfg.path
        available = await asyncio.to_thread(root_available, path, state.identity)
        identity = None
        problem = "not available"
        if available:
            try:
                identity = await asyncio.to_thread(root_identity, path)
            except WatchError as exc:
                available, problem = False, str(exc)
        elif state.identity is None:
            try:
                await asyncio.to_thread(root_identity, path)
            except WatchError as exc:
                problem = str(exc)
        else:
            problem = f"watched folder {_display(path)} is not mounted or not the same folder"
        if not available or identity is None:
            if not state.reported:
                log.error(
                    "%s; its files are not taken as deleted (their ledger records stay as they "
                    "were) and syncd checks for it every %.0f s",
                    problem,
                    ROOT_CHECK_S,
                )
            state.available = False
            state.reported = True
            return
        if state.reported:
            log.info("watched folder %s is available again; rescanning", _display(path))
        state.identity = state.identity or identity
        state.available = True
        state.reported = False
        if self._watcher is not None and not state.watched:
            try:
                await asyncio.to_thread(self._watcher.add_root, state.cfg)
                state.watched = True
            except WatchError as exc:
                log.error("%s; relying on periodic rescans for %s", exc, _display(path))
        if self.cfg.scan.on_start or self.once or self.ready:
            self._start_scan(state)

    def _start_scan(self, state: RootState, subdir: str | None = None) -> None:
        """Scan a root (or one folder in it) in a tracked task.

        Full scans of a root never pile up: asking for one while one runs (an inotify
        overflow, which a scan of a huge tree can itself cause) only asks for one more when
        it ends. That one starts at once; if it too is asked to repeat, the next waits as long
        as the last scan took (at most a minute), so a tree that overflows the queue on every
        walk is rescanned steadily, not in a storm.
        """
        if subdir is None and state.full_scan is not None:
            state.rescan_wanted = True
            return
        task = asyncio.create_task(self._scan(state, subdir), name=f"scan {state.cfg.path}")
        state.scans.add(task)
        self._tasks.add(task)
        follow_up = subdir is None and state.following_up
        if subdir is None:
            state.full_scan = task
            state.following_up = False
        started = time.monotonic()

        def done(t: asyncio.Task[None]) -> None:
            state.scans.discard(t)
            self._reap(t, False)
            if state.full_scan is not t:
                return
            state.full_scan = None
            if state.rescan_wanted and not t.cancelled() and not self._stop.is_set():
                state.rescan_wanted = False
                pause_s = min(60.0, time.monotonic() - started) if follow_up else 0.0
                state.pending_rescan = asyncio.get_running_loop().call_later(
                    pause_s, self._follow_up_scan, state
                )

        task.add_done_callback(done)

    def _follow_up_scan(self, state: RootState) -> None:
        state.pending_rescan = None
        if not self._stop.is_set() and state.available and self._roots.get(state.cfg.path):
            state.following_up = True
            self._start_scan(state)

    async def _scan(self, state: RootState, subdir: str | None = None) -> None:
        root = state.cfg
        started = time.time()
        t0 = time.monotonic()
        all_roots = [r.cfg.path for r in self._roots.values()]
        # The walker thread compares each folder with the ledger (its own read-only
        # connection) and hands on only what is new or changed; an unchanged file costs a
        # stat and nothing else, and nothing is written for it.
        report = ScanReport()
        known = (
            functools.partial(PathReader, self.ledger.path)
            if self._fleet is None
            else self._fleet.path_reader
        )
        # Opening a watched folder queues inotify events of its own: the walk waits for room
        # in the kernel's queue before each folder, so it never overflows the queue itself.
        watcher = self._watcher
        pace = None if watcher is None else functools.partial(watcher.wait_for_room, root.path)
        walker = (
            scan_root(root, state.filt, all_roots=all_roots, known=known, report=report, pace=pace)
            if subdir is None
            else scan_dir(
                root,
                state.filt,
                subdir,
                all_roots=all_roots,
                known=known,
                report=report,
                pace=pace,
            )
        )
        self._scans_running += 1
        try:
            async with contextlib.aclosing(walker) as batches:
                async for batch in batches:
                    await self._ingest_scan_batch(batch)
        except RootUnavailable as exc:
            log.error("%s; will retry when it comes back", exc)
            state.available = False
            return
        finally:
            self._scans_running -= 1
        seen, unchanged = report.seen, report.unchanged
        self.counters.scanned += seen
        self.counters.unchanged += unchanged
        if subdir is None and report.unreadable:
            # Files under a folder the walk could not read were not seen, not deleted.
            log.info(
                "not looking for deleted files under %s: %d folder(s) could not be read",
                _display(root.path),
                len(report.unreadable),
            )
        elif subdir is None and not report.compared:
            log.info(
                "not looking for deleted files under %s: the scan could not read the ledger",
                _display(root.path),
            )
        elif subdir is None and await self._same_root(state):
            gone = await self.ledger.mark_missing_gone(
                root.path, report.missing, report.vanished, started
            )
            if gone:
                log.info("%d file(s) under %s are gone since the last scan", gone, root.path)
        log.info(
            "scan of %s done: %d file(s), %d unchanged, %d to settle (%.2f s)",
            _display(subdir or root.path),
            seen,
            unchanged,
            seen - unchanged,
            time.monotonic() - t0,
        )

    async def _ingest_scan_batch(self, batch: list[ScanEntry]) -> None:
        """Offer to settle what the walk found new or changed (it left out what the ledger
        has unchanged). A path back with the bytes it had when it went is made present
        again by the hasher's fingerprint check, without reading it."""
        for entry in batch:
            if entry.path not in self._hashing and self._owns(entry.root, entry.path):
                await self.settler.offer(entry.path, entry.root, entry.fingerprint)

    async def _same_root(self, state: RootState) -> bool:
        return await asyncio.to_thread(root_available, state.cfg.path, state.identity)

    def _root_of(self, path: str) -> RootState | None:
        """The deepest root ``path`` lies under: with nested roots, the one that owns it."""
        best: RootState | None = None
        best_len = -1
        for state in self._roots.values():
            root = os.path.normpath(state.cfg.path).rstrip("/") + "/"
            if path.startswith(root) and len(root) > best_len:
                best, best_len = state, len(root)
        return best

    def _owns(self, root: str, path: str) -> bool:
        """Whether the root configured as ``root`` owns ``path`` (no deeper root holds it)."""
        owner = self._root_of(path)
        return owner is None or owner.cfg.path == root

    async def _event_loop(self) -> None:
        while True:
            ev = await self._events.get()
            self.counters.events += 1
            try:
                await self._handle_event(ev)
            except SyncdError as exc:
                log.error("event on %s: %s", _display(ev.path), exc)

    async def _new_dirs_loop(self) -> None:
        """Scan new folders once they stop appearing for a moment (at most a second late)."""
        while True:
            await self._new_dirs_event.wait()
            while True:
                now = time.monotonic()
                due = min(
                    self._new_dirs_last + NEW_DIRS_QUIET_S,
                    self._new_dirs_since + NEW_DIRS_MAX_WAIT_S,
                )
                if now >= due:
                    break
                await asyncio.sleep(due - now)
            self._new_dirs_event.clear()
            self._scan_new_dirs()

    def _scan_new_dirs(self) -> None:
        """Scan each folder that appeared, once: one inside another that appeared too is left
        to the outer one's walk, which starts after both existed. A tree created at once
        (``mkdir -p``, a folder moved in) is then one walk, not one walk per level (a 200-level
        tree cost 20,000 folder reads, whose own events overflowed the kernel's queue)."""
        pending, self._new_dirs = self._new_dirs, {}
        for root, paths in pending.items():
            state = self._roots.get(root)
            if state is None or not state.available:
                continue
            for path in paths:
                if not _has_ancestor_in(path, paths):
                    self._start_scan(state, path)

    async def _handle_event(self, ev: FsEvent) -> None:
        state = self._roots.get(ev.root) or self._root_of(ev.path)
        if state is None:
            return
        kind = ev.kind
        if kind == "overflow":
            # The watcher logged it. Events were lost: the settler stops trusting what it had
            # derived about writers (/proc decides), and the rescan finds what was missed.
            self.settler.event(ev)
            self._start_scan(state)
            return
        if kind == "root_gone":
            # The watcher logged it with the fix; the root monitor re-arms it when it is back.
            state.available = False
            state.reported = True
            state.watched = False
            self.settler.forget_root(ev.root)
            if self._watcher is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._watcher.remove_root, ev.root)
            return
        if not self._owns(state.cfg.path, ev.path):
            # Nested roots: the deeper root owns this path, and its own watch reports it.
            return
        if kind in ("dir_created", "dir_moved_to"):
            self._new_dirs_last = time.monotonic()
            if not self._new_dirs:
                self._new_dirs_since = self._new_dirs_last
            self._new_dirs.setdefault(state.cfg.path, set()).add(ev.path)
            self._new_dirs_event.set()
            return
        if kind == "dir_deleted":
            # A folder deleted or moved away: every file below it is gone (its contents stay).
            self.settler.event(ev)
            gone = await self.ledger.mark_gone_under(ev.path)
            if gone:
                log.info("%d file(s) under %s are gone", gone, _display(ev.path))
            return
        if kind in ("deleted", "moved_from"):
            self.settler.forget(ev.path)
            await self.ledger.mark_gone(ev.path)
            return
        if not state.filt.accepts(ev.path):
            return
        self.settler.event(ev)

    async def _on_unsettled(self, path: str, root: str, reason: str) -> None:
        self.counters.unsettled += 1
        since = self.settler.open_for_write().get(path)
        log.warning("%s never settled: %s; not uploading it", _display(path), reason)
        await self.ledger.record_path_state(path, root, "unsettled", reason, open_since=since)

    async def _resettle(self, path: str) -> None:
        """The file changed under an upload: back to the settler."""
        state = self._root_of(path)
        if state is None:
            return
        try:
            fp = await asyncio.to_thread(Fingerprint.stat, path)
        except OSError:
            return
        await self.settler.offer(path, state.cfg.path, fp)

    # ---------------------------------------------------------------- hashing

    async def _hash_worker(self) -> None:
        while True:
            settled = await self._hash_q.get()
            self._hashing.add(settled.path)
            try:
                await self._ingest(settled)
            except SyncdError as exc:
                if exc.exit_code != 1:
                    raise  # the ledger cannot be written: stop rather than lose track
                log.error("%s: %s", _display(settled.path), exc)
            finally:
                self._hashing.discard(settled.path)
                self._hash_q.task_done()

    async def _ingest(self, s: Settled) -> None:
        path, root = s.path, s.root
        state = self._roots.get(root)
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
                await self._file_error(path, root, s.fingerprint, exc)
                return
            reason = preflight(
                name, s.fingerprint.size, head, max_bytes=self.cfg.upload.max_file_bytes
            )
        if reason is not None:
            self.counters.skipped += 1
            log.info("skipping %s: %s", _display(path), reason)
            await self.ledger.record_path_state(path, root, "skipped", reason, s.fingerprint)
            return
        try:
            hashed = await self.hasher.hash(
                path, s.fingerprint, follow_symlinks=state.cfg.follow_symlinks
            )
        except FileChanged:
            log.debug("%s changed while hashing; settling it again", _display(path))
            await self._resettle(path)
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
            await self._file_error(path, root, s.fingerprint, exc)
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
                "queued %s sha256=%s (%d bytes)", _display(path), hashed.sha256[:12], hashed.size
            )
            self.uploader.wake()
        else:
            self.counters.duplicates += 1
            log.info(
                "%s holds known content sha256=%s (%s%s); not uploading it again",
                _display(path),
                hashed.sha256[:12],
                content.state,
                f", asset {content.asset_id}" if content.asset_id else "",
            )
            if content.state == "pending":
                self.uploader.wake()

    async def _file_error(self, path: str, root: str, fp: Fingerprint, exc: OSError) -> None:
        self.counters.file_errors += 1
        reason = f"cannot read: {exc.strerror or exc}"
        prev = await self.ledger.get_path(path)
        if prev is not None and prev.state == "error" and prev.reason == reason:
            # Met again by a rescan: said once already, the ledger shows it meanwhile.
            log.debug("%s: still %s", _display(path), reason)
        else:
            log.warning("%s: %s; retried at the next rescan", _display(path), reason)
        await self.ledger.record_path_state(path, root, "error", reason, None)

    # ---------------------------------------------------------------- housekeeping

    async def _rescan_loop(self) -> None:
        interval = self.cfg.scan.rescan_interval_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            for state in self._roots.values():
                if state.available and not state.scans:
                    self._start_scan(state)

    async def _root_monitor(self) -> None:
        while True:
            await asyncio.sleep(ROOT_CHECK_S)
            for state in list(self._roots.values()):
                if state.available and not await self._same_root(state):
                    log.error(
                        "watched folder %s disappeared or was unmounted; its files are not "
                        "taken as deleted (their ledger records stay as they were)",
                        _display(state.cfg.path),
                    )
                    state.available = False
                    self.settler.forget_root(state.cfg.path)
                    if self._watcher is not None and state.watched:
                        with contextlib.suppress(Exception):
                            await asyncio.to_thread(self._watcher.remove_root, state.cfg.path)
                        state.watched = False
                    state.reported = True
                elif not state.available:
                    await self._arm_root(state)

    async def _start_after(self, cfg: Config) -> None:
        """Build the stage after the upload (sidecars, hooks, clean-ups) when the config asks
        for any of it, and settle the clean-ups a crash interrupted."""
        self.after = None
        hooks = await asyncio.to_thread(hook_settings_from, cfg.hooks)
        settings = AfterSettings({r.path: r for r in cfg.watch}, hooks)
        if not settings.active:
            return

        def root_is_there(root: str) -> bool:
            state = self._roots.get(root)
            return state is not None and state.available

        self.after = AfterStage(self.ledger, settings, root_available=root_is_there)
        await self.after.recover()

    async def _reload_loop(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            self.notifier.reloading()
            await self._reload_config()
            self.notifier.ready(self.summary())

    async def _reload_config(self) -> None:
        if self.config_path is None:
            log.warning("SIGHUP: no config file to reload")
            return
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            # One line: the problems joined, as a log line must not span lines.
            log.error(
                "SIGHUP: the new config is invalid; keeping the old one: %s: %s",
                exc.source,
                "; ".join(exc.problems),
            )
            return
        old_paths = {r.path for r in self.cfg.watch}
        new_paths = {r.path for r in new.watch}
        for path in old_paths - new_paths:
            state = self._roots.pop(path)
            for task in state.scans:
                task.cancel()
            self.settler.forget_root(path)
            if self._watcher is not None and state.watched:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._watcher.remove_root, path)
            log.info("SIGHUP: stopped watching %s", _display(path))
        for root in new.watch:
            if root.path not in old_paths:
                await self._add_root(root)
                log.info("SIGHUP: now watching %s", _display(root.path))
            elif root != next(r for r in self.cfg.watch if r.path == root.path):
                self._roots[root.path].cfg = root
                self._roots[root.path].filt = PathFilter(root, new.settle.temp_patterns)
        timetable = timetable_from(new.upload)
        if timetable != self.shaper.timetable:
            self.shaper.update(timetable)
            log.info("SIGHUP: upload.max_bytes_per_s and upload.schedule are in force")
        # The byte budget is reloaded above: it does not count as a change to upload.
        reloaded_upload = dataclasses.replace(
            new.upload,
            max_bytes_per_s=self.cfg.upload.max_bytes_per_s,
            schedule=self.cfg.upload.schedule,
        )
        unchanged = [
            name
            for name in ("api", "ledger", "rate_limits", "http", "settle", "poll", "hooks")
            if getattr(new, name) != getattr(self.cfg, name)
        ]
        if reloaded_upload != self.cfg.upload:
            unchanged.insert(2, "upload")
        if unchanged:
            log.warning(
                "SIGHUP: changes to %s take effect at the next restart", ", ".join(unchanged)
            )
        if self.after is not None:
            # New roots and their after_success, sidecar and move_to apply from now on.
            roots = {r.path: r for r in new.watch}
            self.after.settings = AfterSettings(roots, self.after.settings.hooks)
            self.after.runner.after = self.after.settings
        self.cfg = new
        self.settler.follow_symlink_roots = {r.path for r in new.watch if r.follow_symlinks}
        logging.getLogger("syncd").setLevel(new.log.level.upper())
        log.info("SIGHUP: configuration reloaded from %s", self.config_path)

    async def _backup_loop(self) -> None:
        folder = self.cfg.ledger.backup_dir
        assert folder is not None  # noqa: S101 - only started when set
        while True:
            await asyncio.sleep(self.cfg.ledger.backup_interval_s)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            dest = os.path.join(folder, f"ledger-{stamp}.db")
            await self.ledger.backup(dest)
            log.info("ledger backed up to %s", dest)
            await asyncio.to_thread(_prune_backups, folder, self.cfg.ledger.backup_keep)

    # ---------------------------------------------------------------- once mode

    async def _once_loop(self) -> None:
        """``sync --once``: stop when nothing is left to settle, hash, upload or poll."""
        await asyncio.sleep(0.2)
        while True:
            pause = self.uploader.state.pause
            if pause is not None and pause.kind == "auth":
                log.error("stopping: %s", pause.reason)
                self.exit_code = EXIT_UNAVAILABLE
                self.request_stop("API refused the key")
                return
            if await self._idle():
                counts = (await self.ledger.counts())["contents"]
                if counts["failed"] or counts["rejected"]:
                    self.exit_code = 1
                self.request_stop("all done")
                return
            await asyncio.sleep(0.5)

    async def _idle(self) -> bool:
        if self._scans_running or any(s.scans for s in self._roots.values()):
            return False
        if self.settler.tracked() or self._hash_q.qsize() or self._hashing:
            return False
        if self.uploader.state.in_flight or self.uploader.queue_depth():
            return False
        if self.after is not None and not await self.after.idle():
            return False
        return await self.ledger.unfinished_count() == 0


def _has_ancestor_in(path: str, paths: set[str]) -> bool:
    parent = os.path.dirname(path)
    while parent not in paths:
        above = os.path.dirname(parent)
        if above == parent:
            return False
        parent = above
    return True


def _prune_backups(folder: str, keep: int) -> None:
    names = sorted(n for n in os.listdir(folder) if n.startswith("ledger-") and n.endswith(".db"))
    for name in names[:-keep]:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))


async def run_daemon(
    cfg: Config,
    key: str,
    *,
    config_path: str | None = None,
    once: bool = False,
    progress: Callable[[Daemon], None] | None = None,
) -> int:
    """Run a daemon to completion; returns its exit code (raises SyncdError at startup)."""
    daemon = Daemon(cfg, key, config_path=config_path, once=once, progress=progress)
    return await daemon.run()
