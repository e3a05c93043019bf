"""The retry policy: what a failed upload means for its content, decided before anything is
written.

:func:`decide` is pure. Given the classified error (``syncd.errors``), the content's counts so
far, the upload settings, the evidence about an ambiguous 400 (:class:`Throttle`) and a random
source for the jitter, it returns one of three values: :class:`RetryLater` (back to the queue
after a delay, with what to count), :class:`GiveUp` (``failed`` or ``rejected``: kept until an
operator retries it or its bytes change) or :class:`PauseAll` (the key or the account is at
fault: every upload waits, probed slowly). The decision is written in one place
(``Outcomes.apply`` in ``outcomes.py``), the only caller of the ledger's ``retry_later`` and
``give_up``.

The ambiguous 400 (``docs/architecture.md``, "Telling a throttle from a rejection"): the API
answers 400 for "rate limit exceeded" and for several validation failures alike. A file's first
400 counts against it; a later one counts only if another upload succeeded since the file's
previous attempt, so a file caught in an account-wide throttle never accumulates counts; a file
whose count reaches ``upload.reject_after`` is ``rejected``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from syncd.config import UploadConfig
from syncd.errors import (
    ApiAuthError,
    ApiError,
    ApiNoCredits,
    ApiNotFound,
    ApiPermanent,
    ApiRetryable,
    ApiThrottled,
    ApiUnusableAnswer,
)


@dataclass(frozen=True)
class RetryLater:
    """Put the content back, due again in ``delay_s``.

    ``outcome`` and ``error`` are what the attempt records; ``count_attempt`` and
    ``count_throttle`` say whether the attempt counts towards ``max_attempts`` and the 400
    towards ``reject_after``; ``keep_allocation`` keeps a signed URL's asset id;
    ``possible_duplicate`` marks a service that may hold an asset nobody can name. ``note``,
    when set, is the tail of the "retry ... in ..." log line and makes the retry count in the
    uploader's statistics (a retry the API caused, not a file or shutdown problem).
    """

    outcome: str
    error: str
    delay_s: float
    http_status: int | None = None
    count_attempt: bool = True
    count_throttle: bool = False
    keep_allocation: bool = False
    possible_duplicate: bool = False
    note: str = ""


@dataclass(frozen=True)
class GiveUp:
    """Stop trying this content: ``failed`` (attempts used up) or ``rejected`` (the API
    refuses the file). ``reason`` is shown by ``syncd show`` and the log."""

    state: Literal["failed", "rejected"]
    reason: str
    http_status: int | None


@dataclass(frozen=True)
class PauseAll:
    """Pause every upload: the key was refused (``auth``) or the account has no credits. The
    content goes back untouched, due when the pause's probe is."""

    kind: Literal["auth", "credits"]
    reason: str
    http_status: int | None
    keep_allocation: bool = False


Decision = RetryLater | GiveUp | PauseAll


@dataclass(frozen=True)
class Throttle:
    """What is known about a 400/429: the cool-down the pacer set for the endpoint, whether
    this content had an earlier attempt, and whether another upload was accepted by the same
    mode since that attempt ended."""

    cool_s: float
    had_previous_attempt: bool
    others_accepted_since: bool

    @property
    def counted(self) -> bool:
        """Whether this 400 counts against the file (see the module docstring)."""
        return not self.had_previous_attempt or self.others_accepted_since


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter in its upper half: attempt 1 waits ~initial_s."""
    base = min(max_s, initial_s * 2.0 ** max(0, attempt - 1))
    return min(max_s, base * (0.5 + rng.random() * 0.5))


def decide(
    exc: ApiError,
    *,
    attempts: int,
    throttle_count: int,
    mode: str,
    endpoint: str,
    cfg: UploadConfig,
    rng: random.Random,
    throttle: Throttle | None = None,
    keep_allocation: bool = False,
) -> Decision:
    """Given an API error on one upload attempt, return what to do with its content.

    ``attempts`` and ``throttle_count`` are the content's counts before this attempt; ``mode``
    is ``direct`` or ``signed_url``, ``endpoint`` the one that answered; ``throttle`` is
    required for :class:`~syncd.errors.ApiThrottled` (a ``ValueError`` otherwise). Pure: no
    I/O, no clock; ``rng`` only draws the jitter.
    """
    if isinstance(exc, ApiThrottled):
        if throttle is None:
            raise ValueError("a throttled answer needs its Throttle evidence")
        counted = throttle.counted
        if counted and throttle_count + 1 >= cfg.reject_after:
            return GiveUp(
                "rejected",
                f"API answered HTTP {exc.status} {throttle_count + 1} times while other "
                f"uploads succeeded: rejected ({exc})",
                exc.status,
            )
        cool_s = throttle.cool_s
        delay = max(cool_s, backoff_s(throttle_count + 1, cool_s, cfg.backoff_max_s, rng))
        why = "counted against the file" if counted else "account throttled"
        return RetryLater(
            "throttled",
            str(exc),
            delay,
            http_status=exc.status,
            count_attempt=False,
            count_throttle=counted,
            keep_allocation=keep_allocation,
            note=f": HTTP {exc.status} on {endpoint} ({why}; cool-down {cool_s:.1f}s)",
        )
    if isinstance(exc, ApiAuthError):
        reason = f"the API refused the key (HTTP {exc.status}): check MAVI_API_KEY / api.key_file"
        return PauseAll("auth", reason, exc.status, keep_allocation)
    if isinstance(exc, ApiNoCredits):
        reason = f"the account is out of credits (HTTP {exc.status}): recharge it"
        return PauseAll("credits", reason, exc.status, keep_allocation)
    if isinstance(exc, ApiPermanent) and not isinstance(exc, ApiNotFound):
        return GiveUp("rejected", f"the API refused this file: {exc}", exc.status)
    # Retryable (5xx, transport, timeouts, malformed answers) and anything unforeseen.
    attempt = attempts + 1
    if attempt >= cfg.max_attempts:
        return GiveUp("failed", f"{attempt} attempts failed; the last: {exc}", exc.status)
    # A direct upload answered with a 2xx that names no usable asset came from a service that
    # took the body: it may hold an asset nobody can name.
    return RetryLater(
        "retryable" if isinstance(exc, ApiRetryable) else "error",
        str(exc),
        backoff_s(attempt, cfg.backoff_initial_s, cfg.backoff_max_s, rng),
        http_status=exc.status,
        keep_allocation=keep_allocation,
        possible_duplicate=mode == "direct" and isinstance(exc, ApiUnusableAnswer),
        note=f" (attempt {attempt}): {exc}",
    )
