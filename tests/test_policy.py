"""The retry policy alone: ``decide`` turns a classified API error into one decision.

These pin the ambiguous-400 rule (docs/architecture.md, "Telling a throttle from a rejection")
without a daemon, a ledger or the emulator; the end-to-end tests in ``test_upload.py`` and
``test_hostile_api.py`` show the same rule through the whole pipeline.
"""

from __future__ import annotations

import random

import pytest

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
from syncd.upload.policy import Decision, GiveUp, PauseAll, RetryLater, Throttle, decide

CFG = UploadConfig(reject_after=3, max_attempts=5, backoff_initial_s=5.0, backoff_max_s=3600.0)
BAD_REQUEST = ApiThrottled("upload: HTTP 400: bad request", status=400, endpoint="upload")
FIRST = Throttle(cool_s=2.0, had_previous_attempt=False, others_accepted_since=False)
OTHERS_SUCCEEDED = Throttle(cool_s=2.0, had_previous_attempt=True, others_accepted_since=True)
NOTHING_SUCCEEDED = Throttle(cool_s=2.0, had_previous_attempt=True, others_accepted_since=False)


def decide_400(throttle: Throttle, throttle_count: int, mode: str = "direct") -> Decision:
    return decide(
        BAD_REQUEST,
        attempts=0,
        throttle_count=throttle_count,
        mode=mode,
        endpoint="upload",
        cfg=CFG,
        rng=random.Random(1),
        throttle=throttle,
    )


def test_a_files_first_400_counts_against_it_and_puts_it_back_after_the_cool_down() -> None:
    d = decide_400(FIRST, throttle_count=0)
    assert isinstance(d, RetryLater)
    assert d.outcome == "throttled" and d.http_status == 400
    assert d.count_throttle and not d.count_attempt
    assert d.delay_s >= 2.0  # never before the endpoint's cool-down ends


def test_a_later_400_counts_only_if_another_upload_succeeded_since_the_files_last_attempt() -> None:
    counted = decide_400(OTHERS_SUCCEEDED, throttle_count=1)
    throttled = decide_400(NOTHING_SUCCEEDED, throttle_count=1)
    assert isinstance(counted, RetryLater) and counted.count_throttle
    assert isinstance(throttled, RetryLater) and not throttled.count_throttle
    assert "account throttled" in throttled.note


def test_a_file_whose_counted_400s_reach_reject_after_is_rejected() -> None:
    d = decide_400(OTHERS_SUCCEEDED, throttle_count=CFG.reject_after - 1)
    assert d == GiveUp(
        "rejected",
        "API answered HTTP 400 3 times while other uploads succeeded: rejected "
        "(upload: HTTP 400: bad request)",
        400,
    )


def test_a_file_caught_in_an_account_wide_throttle_is_never_rejected() -> None:
    for count in range(CFG.reject_after + 5):
        d = decide_400(NOTHING_SUCCEEDED, throttle_count=count)
        assert isinstance(d, RetryLater) and not d.count_throttle


def test_the_first_400_alone_rejects_only_when_reject_after_is_one() -> None:
    one = UploadConfig(reject_after=1)
    d = decide(
        BAD_REQUEST,
        attempts=0,
        throttle_count=0,
        mode="direct",
        endpoint="upload",
        cfg=one,
        rng=random.Random(1),
        throttle=FIRST,
    )
    assert isinstance(d, GiveUp) and d.state == "rejected"
    assert isinstance(decide_400(FIRST, throttle_count=0), RetryLater)


def test_a_throttled_answer_without_its_evidence_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="Throttle evidence"):
        decide(
            BAD_REQUEST,
            attempts=0,
            throttle_count=0,
            mode="direct",
            endpoint="upload",
            cfg=CFG,
            rng=random.Random(1),
        )


def simple(exc: ApiError, attempts: int = 0, mode: str = "direct") -> Decision:
    return decide(
        exc,
        attempts=attempts,
        throttle_count=0,
        mode=mode,
        endpoint=exc.endpoint,
        cfg=CFG,
        rng=random.Random(1),
        keep_allocation=mode == "signed_url",
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ApiAuthError("upload: HTTP 401: no", status=401, endpoint="upload"), "auth"),
        (ApiNoCredits("upload: HTTP 402: no", status=402, endpoint="upload"), "credits"),
    ],
)
def test_a_refused_key_or_an_empty_account_pauses_every_upload(exc: ApiError, kind: str) -> None:
    d = simple(exc)
    assert isinstance(d, PauseAll) and d.kind == kind and d.http_status == exc.status


def test_a_permanent_refusal_rejects_the_file_at_once() -> None:
    d = simple(ApiPermanent("upload: HTTP 415: unsupported", status=415, endpoint="upload"))
    assert isinstance(d, GiveUp) and d.state == "rejected"
    assert d.reason == "the API refused this file: upload: HTTP 415: unsupported"


def test_retryable_failures_back_off_until_max_attempts_then_fail() -> None:
    exc = ApiRetryable("upload: HTTP 503: busy", status=503, endpoint="upload")
    first = simple(exc, attempts=0)
    assert isinstance(first, RetryLater) and first.count_attempt
    assert first.outcome == "retryable" and 2.5 <= first.delay_s <= 5.0
    last = simple(exc, attempts=CFG.max_attempts - 1)
    assert isinstance(last, GiveUp) and last.state == "failed"
    # An unknown asset is not the file's fault: it is retried like a 5xx, not rejected.
    missing = simple(ApiNotFound("metadata: HTTP 400: not found", status=400, endpoint="x"))
    assert isinstance(missing, RetryLater)


def test_only_a_direct_upload_answered_2xx_but_unusable_may_have_left_a_duplicate() -> None:
    unusable = ApiUnusableAnswer("upload: HTTP 200: no asset_id", status=200, endpoint="upload")
    direct = simple(unusable)
    assert isinstance(direct, RetryLater) and direct.possible_duplicate
    signed = simple(unusable, mode="signed_url")
    assert isinstance(signed, RetryLater) and not signed.possible_duplicate
    assert signed.keep_allocation
    busy = simple(ApiRetryable("upload: HTTP 503: busy", status=503, endpoint="upload"))
    assert isinstance(busy, RetryLater) and not busy.possible_duplicate
