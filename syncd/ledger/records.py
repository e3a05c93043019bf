"""The ledger's records and states: what every store returns, whatever holds the rows.

A leaf of :mod:`syncd.ledger`: the SQLite ledger (:mod:`syncd.ledger.sqlite`), the fleet's
PostgreSQL ledger (:mod:`syncd.ledger.postgres`), the store protocol (:mod:`syncd.ledger.store`)
and every caller import these types from here. It imports only :mod:`syncd.fingerprint`. The
states and their transitions are documented in ``docs/ledger.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from syncd.fingerprint import Fingerprint

ContentState = Literal[
    "pending", "allocated", "uploading", "uploaded", "done", "failed", "rejected"
]
PathState = Literal["present", "gone", "skipped", "unsettled", "error"]
# Which due contents go first (``upload.order``): ``oldest`` in the order they became due
# (first found first; a retry when its backoff ends), ``newest`` last found first, by size
# either way, or by the path that holds them.
UploadOrder = Literal["oldest", "newest", "smallest", "largest", "path"]
CONTENT_STATES: tuple[ContentState, ...] = (
    "pending",
    "allocated",
    "uploading",
    "uploaded",
    "done",
    "failed",
    "rejected",
)
PATH_STATES: tuple[PathState, ...] = ("present", "gone", "skipped", "unsettled", "error")


@dataclass(frozen=True, slots=True)
class PathRecord:
    """One path as the ledger knows it."""

    path: str
    root: str
    state: PathState
    sha256: str | None
    reason: str | None
    fingerprint: Fingerprint | None
    open_since: float | None
    first_seen: float
    last_seen: float
    gone_at: float | None
    # The fleet host the path is on, where a listing spans hosts (the shared ledger's
    # iter_assets); None for a SQLite ledger, whose paths are all this host's.
    host: str | None = None


@dataclass(frozen=True, slots=True)
class HashedPath:
    """A path under ``root`` that was hashed: the fingerprint it was hashed with, its SHA-256
    and its extension (what :meth:`record_contents` records for each path)."""

    path: str
    root: str
    fingerprint: Fingerprint
    sha256: str
    extension: str


@dataclass(frozen=True, slots=True)
class Content:
    """One content (distinct bytes) and its remote asset."""

    sha256: str
    size: int
    extension: str
    state: ContentState
    asset_id: str | None
    remote_status: str | None
    upload_mode: str | None
    signed_url: str | None
    signed_url_expires_at: float | None
    attempts: int
    throttle_count: int
    remote_failures: int
    possible_duplicates: int
    last_error: str | None
    next_attempt_at: float
    next_poll_at: float | None
    polls: int
    created_at: float
    updated_at: float
    uploaded_at: float | None
    done_at: float | None


@dataclass(frozen=True, slots=True)
class Job:
    """A content due for upload, with one present path that holds it (None if none does)."""

    content: Content
    path: str | None
    fingerprint: Fingerprint | None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upload attempt, the audit trail behind ``syncd show``."""

    id: int
    sha256: str
    path: str | None
    mode: str
    asset_id: str | None
    started_at: float
    ended_at: float | None
    outcome: str | None
    http_status: int | None
    bytes_sent: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What startup recovery found and did."""

    interrupted_direct: int  # back to pending, counted as possible remote duplicates
    resumed_signed_url: int  # back to allocated, resumed on the same asset id
    polls_rescheduled: int


# Where each store keeps how far it has turned status changes and failures into jobs (kv).
AFTER_WATERMARK_KEY = "after_watermark"
FAILURES_WATERMARK_KEY = "after_failures_watermark"

AfterKind = Literal["on_success", "on_failed", "webhook", "sidecar", "cleanup"]
AfterJobState = Literal["pending", "acting", "done", "given_up"]


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One remote status the poller recorded: the source of the work after an upload."""

    id: int
    sha256: str
    asset_id: str
    remote_status: str
    at: float


@dataclass(frozen=True, slots=True)
class Failure:
    """A content syncd gave up on: ``failed`` or ``rejected``, with the asset id it last
    had (if any) and why."""

    id: int
    sha256: str
    state: str
    asset_id: str | None
    reason: str | None
    at: float


@dataclass(frozen=True, slots=True)
class NewAfterJob:
    """Work owed to one path after a status change: a hook, the sidecar or the clean-up."""

    change_id: int
    kind: AfterKind
    path: str
    root: str
    sha256: str
    asset_id: str | None
    status: str
    at: float


@dataclass(frozen=True, slots=True)
class AfterJob:
    """A queued :class:`NewAfterJob` with its id and progress. ``intent`` is the JSON a
    clean-up commits before it touches the file (``state`` is then ``acting``)."""

    id: int
    change_id: int
    kind: AfterKind
    path: str
    root: str
    sha256: str
    asset_id: str | None
    status: str
    at: float
    state: AfterJobState
    attempts: int
    next_at: float
    outcome: str | None
    intent: str | None
