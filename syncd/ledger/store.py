"""The ledger store seam: what the pipeline and the operator side may ask of a ledger.

:class:`LedgerStore` is the whole store, composed of facets by caller, so each caller is typed
against the narrowest one it needs and any store that satisfies the protocol can take its
place:

- :class:`PathLedger`: the daemon's ingest (a settled, hashed path in; path rows out);
- :class:`UploadLedger`: the uploader (claim due contents, attempts, the upload state machine);
- :class:`PollLedger`: the poller (uploaded contents, their remote status);
- :class:`KvLedger`: small JSON values (the heartbeat, the pacer's cool-downs);
- :class:`DashboardLedger` and :class:`OperatorLedger`: the read queries behind ``syncd
  show/ls/status/retry/forget``, the local HTTP endpoint and its dashboard.

Two stores implement it: the SQLite :class:`~syncd.ledger.sqlite.Ledger` of one host and the
fleet's :class:`~syncd.ledger.postgres.PostgresLedger`; ``mypy --strict`` checks both against
it (see the end of this module), and ``tests/test_store_contract.py`` runs the same state
machine (``docs/ledger.md``) against both. The records it speaks in are in
:mod:`syncd.ledger.records`. How each store opens (its own ``open`` classmethod, lock, lease)
is not part of the seam: the composition root and the operator commands open a concrete store
and hand it on as a :class:`LedgerStore` or one of its facets.

Every coroutine is one transaction. Unless said otherwise a method raises
:class:`~syncd.errors.LedgerError` (or a subclass) when the store cannot answer; writes wait
and retry by themselves while the store is stalled (disk full, server restarting), so a caller
never drops what it meant to record. Paths are ``str`` (``os.fsdecode`` of the exact bytes),
times are wall-clock epoch seconds.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from syncd.fingerprint import Fingerprint
from syncd.ledger.records import (
    AfterJob,
    AfterJobState,
    Attempt,
    Content,
    ContentState,
    Failure,
    HashedPath,
    Job,
    NewAfterJob,
    PathRecord,
    PathState,
    RecoveryReport,
    StatusChange,
    UploadOrder,
)


class KvLedger(Protocol):
    """Small JSON values under a key: the daemon's heartbeat and the pacer's cool-downs."""

    async def get_kv(self, key: str) -> Any:
        """Given a key, return the JSON value stored under it, or None when there is none."""

    async def set_kv(self, key: str, value: Any) -> None:
        """Given a key and a JSON-serialisable value, store the value under the key (this
        host's own in a fleet). Returns once it is committed."""


class PathLedger(Protocol):
    """The ingest side: what the daemon records about paths as it watches, scans and hashes."""

    async def get_path(self, path: str, *, host: str | None = None) -> PathRecord | None:
        """Given a path, return the store's record of it, or None: this host's path, or on a
        fleet's shared ledger that of ``host``. Raises :class:`ValueError` for a ``host`` a
        store of one host cannot look in."""

    async def get_paths(self, paths: Sequence[str]) -> dict[str, PathRecord]:
        """Given paths, return the records of those the store knows, keyed by path."""

    async def touch_paths(self, paths: Iterable[str]) -> None:
        """Given paths a rescan found unchanged, mark them seen now; a gone path that is back
        is present again and a content parked for want of a present path is due again."""

    async def record_content(
        self,
        path: str,
        root: str,
        fingerprint: Fingerprint,
        sha256: str,
        extension: str,
    ) -> Content:
        """Given a path under ``root``, the fingerprint it was hashed with, its hash and its
        extension, record that the path holds that content (new contents are ``pending``,
        due now; a known content is not uploaded again). Returns the content as it stands."""

    async def record_contents(self, hashed: Sequence[HashedPath]) -> list[Content]:
        """Given hashed paths, record each as :meth:`record_content` does, all in one
        transaction (in order: a content two of them hold is created once). Returns each
        one's content as it stands after the transaction, in the order given."""

    async def record_path_state(
        self,
        path: str,
        root: str,
        state: PathState,
        reason: str | None,
        fingerprint: Fingerprint | None = None,
        open_since: float | None = None,
    ) -> None:
        """Given a path that holds no uploadable content, record its state (skipped,
        unsettled, error or gone) with the reason and, when known, fingerprint and
        open-for-writing time."""

    async def set_open_since(self, path: str, since: float | None) -> None:
        """Given a known path, note that it is open for writing since ``since`` (or no longer
        open, with None)."""

    async def mark_gone(self, path: str) -> None:
        """Given a path that was deleted or moved away, mark it gone (its content stays)."""

    async def mark_gone_under(self, folder: str) -> int:
        """Given a folder deleted or moved away, mark every path below it gone; returns how
        many were marked."""

    async def mark_missing_gone(
        self, root: str, paths: Sequence[str], folders: Sequence[str], seen_before: float
    ) -> int:
        """After a complete scan of ``root``: given the tracked paths its listings did not
        show, the folders not walked and the scan's start, mark those paths and every path
        below those folders gone, unless recorded since ``seen_before``. Returns how many."""

    async def forget_path(self, path: str) -> bool:
        """Given a path, stop tracking it (its content and remote asset stay). Returns whether
        the store knew it."""


class UploadLedger(Protocol):
    """The upload stage: due contents, attempts and the upload half of the state machine.

    The order of calls for one content is ``due_jobs`` → ``begin_attempt`` → (signed URL:
    ``allocate`` → ``mark_sending``; direct: ``mark_finishing``) → one of ``finish_upload``,
    ``retry_later``, ``give_up`` or ``supersede``. A fleet store raises
    :class:`~syncd.errors.ClaimLost` from the fenced moves (``begin_attempt``,
    ``mark_sending``, ``mark_finishing``) when another host took the content over.
    """

    async def due_jobs(
        self, limit: int, exclude: Iterable[str] = (), order: UploadOrder = "oldest"
    ) -> list[Job]:
        """Given how many to take, the sha256s already in flight and the order
        (``upload.order``), return up to ``limit`` contents due for upload now, each with a
        present path holding it. A due content no present path holds is parked instead
        (``last_error`` says why)."""

    async def next_due_at(self) -> float | None:
        """Return when the next content becomes due for upload, or None if none waits."""

    async def begin_attempt(
        self, sha256: str, path: str, mode: str, asset_id: str | None = None
    ) -> int:
        """Given a content, the path its bytes are read from, the upload mode and (resuming a
        signed URL) the asset id, mark it ``uploading`` and open an attempt row, committed
        before any byte is sent. Returns the attempt id."""

    async def mark_finishing(self, attempt_id: int) -> None:
        """Given a direct attempt about to send its last bytes, mark it so: from here a crash
        may leave a remote asset whose id was never seen (recovery counts it)."""

    async def allocate(
        self, sha256: str, asset_id: str, url: str, expires_at: float, attempt_id: int
    ) -> None:
        """Given a content, the signed-URL asset allocated for it, the URL, its expiry and the
        attempt, record the allocation (state ``allocated``) before any byte moves."""

    async def mark_sending(self, sha256: str) -> None:
        """Given an allocated signed-URL content, mark it ``uploading``: bytes start moving."""

    async def finish_upload(
        self,
        sha256: str,
        attempt_id: int,
        asset_id: str,
        *,
        bytes_sent: int,
        http_status: int | None,
        next_poll_at: float,
    ) -> None:
        """Given the API's asset id for exactly this content's bytes, the attempt, what was
        sent and when to poll first, mark the content ``uploaded`` and the attempt ``ok``."""

    async def accepted_since(self, mode: str, since: float, other_than: str) -> bool:
        """Return whether another content's upload in ``mode`` succeeded after ``since``."""

    async def previous_attempt_end(self, sha256: str, attempt_id: int) -> float | None:
        """Return when the attempt of ``sha256`` before ``attempt_id`` ended, or None."""

    async def retry_later(
        self,
        sha256: str,
        attempt_id: int | None,
        *,
        outcome: str,
        error: str,
        next_attempt_at: float,
        http_status: int | None = None,
        bytes_sent: int | None = None,
        count_attempt: bool = True,
        count_throttle: bool = False,
        keep_allocation: bool = False,
        possible_duplicate: bool = False,
    ) -> Content:
        """Put a content back in the queue (``pending``, or ``allocated`` with
        ``keep_allocation``) for ``next_attempt_at``, closing its attempt with ``outcome``.

        ``count_attempt`` adds one to its attempts, ``count_throttle`` to its throttle count,
        ``possible_duplicate`` to its possible remote duplicates; an asset id dropped is kept
        as superseded. Returns the content as it now stands.
        """

    async def give_up(
        self,
        sha256: str,
        attempt_id: int | None,
        *,
        state: Literal["failed", "rejected"],
        outcome: str,
        error: str,
        http_status: int | None = None,
    ) -> None:
        """Given a content and its attempt, mark it ``failed`` (attempts exhausted) or
        ``rejected`` (the API refuses it) with the error, closing the attempt."""

    async def supersede(
        self,
        sha256: str,
        attempt_id: int | None,
        asset_id: str,
        *,
        sent_sha256: str | None,
        path: str | None,
        reason: str,
    ) -> None:
        """Given an asset id that is not the content's asset (the bytes changed during the
        upload, an expired URL), keep it as superseded and put the content back ``pending``,
        due now."""

    async def mark_gone(self, path: str) -> None:
        """Given a path found missing while uploading from it, mark it gone."""


class PollLedger(Protocol):
    """The poller: uploaded contents and the remote status the API reports for them."""

    async def due_polls(self, limit: int) -> list[Content]:
        """Return up to ``limit`` uploaded contents whose status is due to be asked for."""

    async def next_poll_at(self) -> float | None:
        """Return when the next status poll is due, or None if nothing awaits one."""

    async def record_status(
        self, sha256: str, asset_id: str, status: str, *, next_poll_at: float | None
    ) -> None:
        """Given a content, its asset id, the polled remote status and when to poll next,
        record the status (``SUCCESS`` makes it ``done``); a stale answer is ignored."""

    async def remote_failed(
        self, sha256: str, asset_id: str, reason: str, *, max_attempts: int
    ) -> ContentState:
        """Given a content whose asset ended ``FAILED`` (or vanished), keep the asset as
        superseded and queue a re-upload, or fail it once ``max_attempts`` ran out. Returns
        the new state, ``pending`` or ``failed``."""


class DashboardLedger(Protocol):
    """The dashboard's pages: each one bounded query, answered from an index."""

    async def counts(self) -> dict[str, dict[str, int]]:
        """Return counts per content state (``contents``) and path state (``paths``), and
        the backlog's bytes (``backlog``: ``{"bytes": n}``)."""

    async def recent_uploads(
        self, limit: int, before_id: int | None = None
    ) -> list[tuple[Attempt, Content | None]]:
        """Return the last ``limit`` successful attempts (newest first) with their contents,
        before attempt ``before_id`` when given (the next page)."""

    async def problem_contents(
        self, limit: int, after: tuple[float, str] | None = None
    ) -> list[tuple[Content, str | None]]:
        """Return up to ``limit`` failed and rejected contents, most recently changed first,
        each with one path holding it; ``after`` is the previous page's last
        ``(updated_at, sha256)``."""

    async def problem_paths(
        self, roots: Sequence[str], limit: int, after: str | None = None
    ) -> list[PathRecord]:
        """Given configured roots, return up to ``limit`` of their paths in state ``error``
        or ``unsettled``, in path order after ``after``."""

    async def find_paths(self, part: str, limit: int) -> list[PathRecord]:
        """Return up to ``limit`` paths starting with ``part`` (when absolute) or else
        containing it, in path order."""


class OperatorLedger(KvLedger, DashboardLedger, Protocol):
    """The operator's side: ``syncd show/ls/status/retry/forget/plan``, the HTTP endpoint."""

    @property
    def path(self) -> str:
        """Where the store is, for messages: a file path, or a URL without its password."""

    async def close(self) -> None:
        """Close the store. Idempotent."""

    async def get_path(self, path: str, *, host: str | None = None) -> PathRecord | None:
        """Given a path, return the store's record of it, or None: this host's path, or on a
        fleet's shared ledger that of ``host``. Raises :class:`ValueError` for a ``host`` a
        store of one host cannot look in."""

    async def get_paths(self, paths: Sequence[str]) -> dict[str, PathRecord]:
        """Given paths, return the records of those the store knows, keyed by path."""

    async def forget_path(self, path: str) -> bool:
        """Given a path, stop tracking it; returns whether the store knew it."""

    async def get_content(self, sha256: str) -> Content | None:
        """Given an exact sha256, return its content, or None."""

    async def get_contents(self, sha256s: Sequence[str]) -> dict[str, Content]:
        """Given sha256s, return the contents the store knows among them, keyed by sha256."""

    async def find_contents(self, key: str) -> list[Content]:
        """Given a sha256 prefix (4+ hex digits) or an asset id (current or superseded),
        return the contents it names."""

    async def paths_of(self, sha256: str) -> list[tuple[str, PathRecord | None]]:
        """Return every path that ever held ``sha256``, with its record (None if forgotten)."""

    async def attempts_of(self, sha256: str) -> list[Attempt]:
        """Return every upload attempt of ``sha256``, oldest first."""

    async def superseded_of(self, sha256: str) -> list[tuple[str, str, float]]:
        """Return the assets once uploaded for ``sha256`` but not its asset, as
        ``(asset_id, reason, at)``, oldest first."""

    async def requeue(self, *, states: Sequence[ContentState], sha256s: Sequence[str] = ()) -> int:
        """Operator retry: given states (and optionally sha256s), make those contents due now
        with attempts and throttle counts reset. Returns how many were re-queued."""

    async def unfinished_count(self) -> int:
        """Return how many contents are still on their way to a final state (parked ones,
        with no present path, are not counted)."""

    async def possible_duplicates(self) -> int:
        """Return the total of possible remote duplicates counted by recovery."""

    def iter_assets(
        self,
        *,
        states: Sequence[str] = (),
        root: str | None = None,
        since: float | None = None,
        page_size: int = 1000,
        on_page: Callable[[int], None] | None = None,
        host: str | None = None,
    ) -> AsyncGenerator[tuple[PathRecord, Content | None], None]:
        """Stream every known path with its content (None when it holds none), in path order,
        one query per page of ``page_size`` (``on_page(rows)`` after each).

        Given optional filters: ``states`` (content and path states mixed; a row matches
        either), ``root`` (paths below it), ``since`` (rows first seen, changed or gone
        since) and ``host`` (a fleet host's paths only; the shared ledger lists every host's
        and sets each record's ``host``). Raises :class:`ValueError` for an unknown state, a
        page size below 1, or a ``host`` a store of one host cannot filter by.
        """

    async def upload_activity(self, since: float) -> dict[str, dict[str, int]]:
        """Return the upload attempts started since ``since`` per mode:
        ``{mode: {"requests": n, "ok": n, "bytes": n}}``."""

    async def oldest_waiting_content(self) -> tuple[Content, str | None] | None:
        """Return the backlog content recorded longest ago with a present path holding it
        (None if none does), or None when the backlog is empty."""

    async def oldest_unsettled_path(self) -> PathRecord | None:
        """Return the path waiting to settle that was seen first, or None."""

    async def due_count(self, now: float) -> int:
        """Return how many contents are due for upload at ``now``."""

    async def any_done_asset_id(self) -> str | None:
        """Return the asset id of some content that is done (for a key probe), or None."""


class AfterLedger(Protocol):
    """The work after a final status (hooks, sidecars, clean-ups), queued from the poller's
    status changes and the failures so a restart loses none of it; in a fleet, each host's
    own, for its own paths."""

    async def get_path(self, path: str) -> PathRecord | None:
        """Given a path, return the store's record of it, or None."""

    async def get_content(self, sha256: str) -> Content | None:
        """Given a sha256, return its content, or None."""

    async def present_paths_of(self, sha256: str) -> list[PathRecord]:
        """This host's present paths recorded as holding ``sha256`` now or before."""

    async def after_watermark(self, key: str = ...) -> int | None:
        """The id of the last status change (or failure, by ``key``) already turned into
        jobs (None: never set)."""

    async def latest_failure(self) -> int:
        """The id of the last failure recorded (0: none)."""

    async def failures_after(self, failure_id: int, limit: int) -> list[Failure]:
        """Up to ``limit`` failures after ``failure_id``, oldest first."""

    async def latest_status_change(self) -> int:
        """The id of the last status change recorded (0: none)."""

    async def status_changes_after(self, change_id: int, limit: int) -> list[StatusChange]:
        """Up to ``limit`` status changes after ``change_id``, oldest first."""

    async def add_after_jobs(
        self, jobs: Iterable[NewAfterJob], watermark: int, key: str = ...
    ) -> None:
        """Queue ``jobs`` (a job already queued stays as it is) and move the watermark under
        ``key``, in one transaction."""

    async def due_after_jobs(self, limit: int, exclude: Iterable[int] = ()) -> list[AfterJob]:
        """Pending jobs due now, oldest first, except ``exclude``; a clean-up waits for the
        sidecar of its path."""

    async def next_after_job_at(self) -> float | None:
        """When the earliest pending job is due, or None."""

    async def acting_after_jobs(self) -> list[AfterJob]:
        """Clean-ups whose intent is committed but whose outcome is not."""

    async def after_job_acting(self, job_id: int, intent: str) -> None:
        """Commit that a clean-up is about to act, with its JSON intent."""

    async def finish_after_job(
        self,
        job_id: int,
        state: AfterJobState,
        *,
        outcome: str,
        next_at: float | None = None,
        exit_status: int | None = None,
        stderr_tail: str | None = None,
        count_attempt: bool = True,
    ) -> None:
        """Record one attempt of a job: its new state and what happened."""

    async def after_counts(self) -> dict[str, dict[str, int]]:
        """Jobs by kind and state; clean-ups done by what they did."""

    async def mark_gone(self, path: str) -> None:
        """Given a path that was deleted or moved away, mark it gone."""


class LedgerStore(PathLedger, UploadLedger, PollLedger, OperatorLedger, AfterLedger, Protocol):
    """The whole store: every facet, plus the lifecycle the composition root drives."""

    @property
    def stalled(self) -> str | None:
        """Why writes are waiting (disk full, read-only, server down), or None: for health."""

    async def recover(self) -> RecoveryReport:
        """Startup recovery (``docs/ledger.md``): direct uploads left ``uploading`` go back to
        ``pending`` (one possible remote duplicate when their last bytes had left),
        signed-URL ones to ``allocated`` on the same asset id, open attempts are closed as
        interrupted, polls are due now. Returns what it found."""

    async def integrity_problems(self, *, quick: bool = False) -> list[str]:
        """Run the store's integrity check; returns its complaints (empty when sound)."""

    async def backup(self, dest: str) -> None:
        """Write a consistent online copy to ``dest``; raises
        :class:`~syncd.errors.LedgerUnwritable` (or :class:`~syncd.errors.LedgerError` where
        the store has no such copy) when it cannot."""


if TYPE_CHECKING:
    # mypy --strict proves here that both stores satisfy the whole protocol.
    from syncd.ledger.postgres import PostgresLedger
    from syncd.ledger.sqlite import Ledger

    def _both_are_stores(sqlite: Ledger, postgres: PostgresLedger) -> list[LedgerStore]:
        return [sqlite, postgres]
