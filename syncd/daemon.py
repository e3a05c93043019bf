"""The daemon: the composition root. It builds the stages, owns the lifecycle and the signals,
and owns every task of the pipeline.

The run reads as build, then with the signals installed: start, wait, shut down. Startup takes
the ledger's lock, checks and recovers the ledger, then starts, in order: the ingest stage
(settler and hashers), the intake (watches and scans of every root), the upload dispatcher and
workers, the poller, and the housekeeping (heartbeat, backups, reload, HTTP endpoint). What a
stage does lives in the stage (``syncd.ingest.intake``, ``syncd.ingest.stage``,
``syncd.upload``); the daemon hands each a ``spawn`` callable so that a crashed task is logged at
once and stops the daemon with its exit code. Signal handlers only set events. Shutdown stops
intake, lets in-flight uploads finish within ``shutdown.grace_s``, cancels the rest (retried on
the next start), flushes the ledger and logs one summary line with counters. What the
running daemon shows of itself (summary, heartbeat, dashboard, progress line) is rendered from
one ``snapshot()`` by ``syncd.ops.live``.

About 600 lines: the wiring of six stages (ingest, intake, upload, polling, the work after a
final status, housekeeping), the endpoint, SIGHUP reload, ``--once`` and the two ledgers
(SQLite with its lock, or the fleet's) is what is left, each a few lines.
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
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from syncd.after.queue import hook_settings_from
from syncd.after.stage import AfterSettings, AfterStage
from syncd.chunksums import ChunkSumsCache
from syncd.config import Config, load_config
from syncd.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    ConfigError,
    SyncdError,
)
from syncd.events import EventHub
from syncd.ingest.hashing import Hasher
from syncd.ingest.intake import Intake
from syncd.ingest.roots import Roots
from syncd.ingest.scanner import KnownFiles
from syncd.ingest.settle import Settler
from syncd.ingest.stage import Counters, IngestStage
from syncd.ledger.sqlite import Ledger, LedgerLock, PathReader, prepare_ledger_dir
from syncd.ledger.store import LedgerStore
from syncd.metrics import Metrics
from syncd.notify import Notifier, watchdog_loop
from syncd.ops.health import Health
from syncd.ops.live import RootView, Snapshot, heartbeat_record, live_view, stopped_line
from syncd.upload.client import MaviClient
from syncd.upload.pacer import Pacer
from syncd.upload.poller import Poller
from syncd.upload.shaper import ByteShaper, timetable_from
from syncd.upload.uploader import Uploader

if TYPE_CHECKING:  # the driver (asyncpg) is imported only when a ledger.url is used
    from syncd.ledger.postgres import PostgresLedger

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# Config sections a running daemon cannot take over on SIGHUP: it says they wait for a restart.
# The sections a SIGHUP cannot apply; upload is compared without its byte budget, which it
# can (see _reload_config).
_RESTART_SECTIONS = ("api", "ledger", "fleet", "rate_limits", "http", "settle", "poll", "hooks")


class Daemon:
    """The running syncd. Given the validated config and the API key.

    ``once`` turns it into ``syncd sync --once``: scan, upload everything due, wait for final
    statuses, stop. ``config_path`` is re-read on SIGHUP. ``progress(snapshot)`` is called at
    every heartbeat (the CLI's progress line).
    """

    def __init__(
        self,
        cfg: Config,
        key: str,
        *,
        config_path: str | None = None,
        once: bool = False,
        notifier: Notifier | None = None,
        progress: Callable[[Snapshot], None] | None = None,
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
        self._workers: list[asyncio.Task[None]] = []
        self._http: Any = None
        self.roots = Roots()
        # Set in run():
        self.ledger: LedgerStore
        self._fleet: PostgresLedger | None = None  # the shared ledger, in fleet mode
        self.client: MaviClient
        self.pacer: Pacer
        self.ingest: IngestStage
        self.intake: Intake
        self.uploader: Uploader
        self.poller: Poller

    @property
    def settler(self) -> Settler:
        """The ingest stage's settler."""
        return self.ingest.settler

    @property
    def hasher(self) -> Hasher:
        """The ingest stage's hasher."""
        return self.ingest.hasher

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

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Route SIGTERM, SIGINT and SIGHUP to :meth:`_on_signal` while the block runs."""
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, *, critical: bool = True
    ) -> asyncio.Task[Any]:
        """Start a task the daemon tracks (cancelled at shutdown) and reaps; returns it."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._reap(t, critical))
        return task

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
            with self.events.activate():  # the tasks started in _serve publish to it
                code = await self._serve()
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
        # Imported here: the driver (asyncpg) costs every start ~35 ms and ~3 MB otherwise.
        from syncd.ledger.postgres import PostgresLedger

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
            return await self._serve()
        finally:
            # Claims on work not started go back at once instead of when their leases expire.
            with contextlib.suppress(SyncdError):
                await store.release_claims()
            await store.close()

    async def _serve(self) -> int:
        """On the open ledger: recover, build, then with the signals: start, wait, shut down."""
        await self._recover()
        self._build()
        try:
            with self._signals():
                try:
                    await self._start()
                    await self._stop.wait()
                finally:
                    await self._shutdown()
        finally:
            self.notifier.close()
        return self.exit_code

    async def _recover(self) -> None:
        report = await self.ledger.recover()
        self.metrics.inc("syncd_possible_duplicates_total", report.interrupted_direct)
        if report.interrupted_direct or report.resumed_signed_url:
            log.warning(
                "recovered from an unclean stop: %d direct upload(s) back to pending (possible "
                "remote duplicates), %d signed-URL upload(s) resumed on their asset ids",
                report.interrupted_direct,
                report.resumed_signed_url,
            )
        await self._start_after(self.cfg)
        # The local buckets, or the fleet's budget on Redis when fleet.redis_url is set; the
        # Redis client is imported only then (~6 MB of RSS and its import time otherwise).
        if self.cfg.fleet.redis_url is None:
            self.pacer = Pacer.from_config(self.cfg.rate_limits)
        else:
            from syncd.upload.fleet_pacer import build_pacer

            self.pacer = await build_pacer(self.cfg, self._key, self.metrics)
        snapshot = await self.ledger.get_kv("pacer")
        if isinstance(snapshot, dict):
            self.pacer.restore(snapshot)

    def _build(self) -> None:
        """Wire the stages to one another (nothing runs yet)."""
        cfg = self.cfg
        # One byte budget for every worker's file bodies (upload.max_bytes_per_s, schedule).
        self.shaper = ByteShaper(timetable_from(cfg.upload))
        self.client = MaviClient(
            cfg.api.base_url,
            self._key,
            connect_timeout_s=cfg.api.connect_timeout_s,
            read_timeout_s=cfg.api.read_timeout_s,
            verify_tls=cfg.api.verify_tls,
            shaper=self.shaper,
        )
        # What the hash pass saw of each chunk, for the upload to check what it sends.
        self.chunk_sums = ChunkSumsCache()
        # The stages wake one another in a ring (ingest -> uploader -> poller -> uploader):
        # the first of each pair is built before the second exists, so it is handed a
        # callable that looks the second up when called.
        self.ingest = IngestStage(
            cfg,
            self.ledger,
            self.metrics,
            self.roots,
            counters=self.counters,
            spawn=self._spawn,
            on_queued=lambda: self.uploader.wake(),
            chunk_sums=self.chunk_sums,
        )
        self.uploader = Uploader(
            cfg,
            self.ledger,
            self.client,
            self.pacer,
            self.metrics,
            resettle=self.ingest,
            on_uploaded=lambda: self.poller.wake(),
            chunk_sums=self.chunk_sums,
        )
        self.poller = Poller(
            cfg, self.ledger, self.client, self.pacer, self.metrics, on_requeued=self.uploader.wake
        )
        known: Callable[[], KnownFiles] = (
            functools.partial(PathReader, self.ledger.path)
            if self._fleet is None
            else self._fleet.path_reader
        )
        self.intake = Intake(
            cfg,
            self.ledger,
            self.ingest.settler,
            self.roots,
            counters=self.counters,
            spawn=self._spawn,
            stopping=self._stop.is_set,
            hashing=self.ingest.hashing,
            known=known,
            watch=not self.once,
        )

    async def _start(self) -> None:
        cfg = self.cfg
        if cfg.http.listen and not self.once:
            await self._start_http(cfg.http.listen)
        self.ingest.start()
        await self.intake.start(once=self.once)
        self._spawn(self.uploader.dispatch(), "dispatcher")
        for i in range(cfg.upload.workers):
            # Not in _tasks: shutdown drains the workers (in-flight uploads finish) instead
            # of cancelling them with the rest.
            task = asyncio.create_task(self.uploader.work(), name=f"uploader-{i}")
            task.add_done_callback(lambda t: self._reap(t, True))
            self._workers.append(task)
        self._spawn(self.poller.run(), "poller")
        if self.after is not None:
            self._spawn(self.after.run(), "after-upload")
        self._spawn(self._heartbeat(), "heartbeat", critical=False)
        if not self.once:
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
            len(self.roots),
            cfg.upload.workers,
            self.ledger.path,  # the file, or the shared ledger's URL without its password
        )

    async def _start_http(self, listen: str) -> None:
        # Imported here: a daemon without the endpoint never loads aiohttp's server
        # (~15 ms and ~2 MB of every start).
        from syncd.ops.dashboard import DaemonView
        from syncd.ops.webapi import start_http

        cfg = self.cfg
        try:
            self._http = await start_http(
                listen,
                ledger=self.ledger,
                metrics=self.metrics,
                health=self.health,
                extra_hosts=cfg.http.allowed_hosts,
                daemon=DaemonView(
                    hub=self.events,
                    snapshot=self.live,
                    settling=self.ingest.settler.waiting,
                    roots=lambda: [r.cfg.path for r in self.roots],
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
                listen,
                exc.strerror or exc,
            )

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        self.ready = False
        # 1. Stop intake: no new events, scans, hashes or claims.
        await self.intake.stop()
        self.uploader.stop_intake()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ingest.aclose()
        # 2. Drain in-flight uploads within the grace period, then cancel them.
        cancelled = await self.uploader.drain(self.cfg.shutdown.grace_s, self._workers)
        # 3. Flush.
        with contextlib.suppress(SyncdError):
            await self.ledger.set_kv("pacer", self.pacer.snapshot())
            await self._write_heartbeat(self.snapshot(), stopping=True)
        await self.client.close()
        await self.pacer.aclose()
        self.events.close()  # ends every /v1/events stream: none may hold the shutdown up
        if self._http is not None:
            from syncd.ops.webapi import stop_http

            await stop_http(self._http)
        log.info(
            "%s",
            stopped_line(
                self._stop_reason or "done",
                self.uploader.stats,
                self.counters,
                done=self.poller.done,
                cancelled_in_flight=cancelled,
                possible_duplicates=await self.ledger.possible_duplicates(),
                uptime_s=time.time() - self.started_at,
            ),
        )

    # ---------------------------------------------------------------- state

    def health(self) -> Health:
        """Current health for /healthz, /readyz and the heartbeat."""
        state = self.uploader.state
        unavailable = [r.cfg.path for r in self.roots if not r.available]
        reason = state.reason
        healthy = state.healthy
        if self.ledger.stalled is not None:
            healthy, reason = False, self.ledger.stalled
        if not reason and unavailable:
            reason = "unavailable root(s): " + ", ".join(unavailable)
        return Health(healthy=healthy, ready=self.ready, reason=reason)

    def snapshot(self) -> Snapshot:
        """The running daemon now (see :class:`Snapshot`)."""
        s = self.uploader.stats
        return Snapshot(
            health=self.health(),
            uploaded=s.uploaded,
            bytes_sent=s.bytes_sent,
            done=self.poller.done,
            in_flight=len(self.uploader.state.in_flight),
            upload_queued=self.uploader.queue_depth(),
            settling=self.ingest.settler.tracked(),
            hashing=len(self.ingest.hashing),
            hash_depth=self.ingest.hash_depth(),
            pause=self.uploader.state.pause,
            backlog_bytes=self.backlog_bytes,
        )

    def summary(self) -> str:
        """One line for sd_notify STATUS= and progress logs."""
        return self.snapshot().summary()

    def live(self) -> dict[str, Any]:
        """What the dashboard shows of the running daemon (see :func:`live_view`)."""
        hits = self.intake.watch_limit_hits()
        return live_view(
            self.snapshot(),
            started_at=self.started_at,
            cooldowns_s={n: st.cooldown_remaining_s for n, st in self.pacer.stats().items()},
            roots=[
                RootView(
                    r.cfg.path,
                    r.available,
                    r.watched,
                    hits.get(os.path.normpath(r.cfg.path), 0),
                )
                for r in self.roots
            ],
        )

    async def _write_heartbeat(self, snap: Snapshot, *, stopping: bool = False) -> None:
        record = heartbeat_record(
            snap,
            started_at=self.started_at,
            now=time.time(),
            open_for_write=self.ingest.settler.open_for_write(),
            stopping=stopping,
        )
        await self.ledger.set_kv("daemon", record)

    # ---------------------------------------------------------------- housekeeping

    async def _heartbeat(self) -> None:
        while True:
            snap = self.snapshot()
            self.metrics.set("syncd_queue_depth", snap.settling, queue="settle")
            self.metrics.set("syncd_queue_depth", snap.hash_depth, queue="hash")
            self.metrics.set("syncd_queue_depth", snap.upload_queued, queue="upload")
            for name, st in self.pacer.stats().items():
                self.metrics.set("syncd_cooldown_seconds", st.cooldown_remaining_s, endpoint=name)
            await self._write_heartbeat(snap)
            await self.ledger.set_kv("pacer", self.pacer.snapshot())
            self.notifier.status(snap.summary())
            if self.progress is not None:
                self.backlog_bytes = (await self.ledger.counts())["backlog"]["bytes"]
                self.progress(self.snapshot())
            await asyncio.sleep(HEARTBEAT_S if not self.once else 1.0)

    async def _start_after(self, cfg: Config) -> None:
        """Build the stage after the upload (sidecars, hooks, clean-ups) when the config asks
        for any of it, and settle the clean-ups a crash interrupted."""
        self.after = None
        hooks = await asyncio.to_thread(hook_settings_from, cfg.hooks)
        settings = AfterSettings({r.path: r for r in cfg.watch}, hooks)
        if not settings.active:
            return

        def root_is_there(root: str) -> bool:
            state = self.roots.get(root)
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
        await self.intake.reload(new)
        timetable = timetable_from(new.upload)
        if timetable != self.shaper.timetable:
            self.shaper.update(timetable)
            log.info("SIGHUP: upload.max_bytes_per_s and upload.schedule are in force")
        if self.after is not None:
            # New roots and their after_success, sidecar and move_to apply from now on.
            roots = {r.path: r for r in new.watch}
            self.after.settings = AfterSettings(roots, self.after.settings.hooks)
            self.after.runner.after = self.after.settings
        # The byte budget is reloaded above: it does not count as a change to upload.
        reloaded_upload = dataclasses.replace(
            new.upload,
            max_bytes_per_s=self.cfg.upload.max_bytes_per_s,
            schedule=self.cfg.upload.schedule,
        )
        changed = [
            name for name in _RESTART_SECTIONS if getattr(new, name) != getattr(self.cfg, name)
        ]
        if reloaded_upload != self.cfg.upload:
            changed.insert(3, "upload")
        if changed:
            log.warning("SIGHUP: changes to %s take effect at the next restart", ", ".join(changed))
        self.cfg = new
        self.ingest.follow_config(new)
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
                    self.exit_code = EXIT_FAILURE
                self.request_stop("all done")
                return
            await asyncio.sleep(0.5)

    async def _idle(self) -> bool:
        if not self.intake.idle() or not self.ingest.idle():
            return False
        if self.uploader.state.in_flight or self.uploader.queue_depth():
            return False
        if self.after is not None and not await self.after.idle():
            return False
        return await self.ledger.unfinished_count() == 0


def _prune_backups(folder: str, keep: int) -> None:
    names = sorted(n for n in os.listdir(folder) if n.startswith("ledger-") and n.endswith(".db"))
    for name in names[:-keep]:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
