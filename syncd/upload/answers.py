"""How the client reads the MAVI v2 API's answers: every answer classified once.

Given an answer (:class:`Answer`: status, the first ``MAX_ANSWER_BYTES`` of its body, a few
headers), :class:`Classifier` returns the envelope's ``data`` of a success or raises the one
:class:`~syncd.errors.ApiError` subclass that the table in ``client.py`` gives for it; its
messages are one line, name the endpoint and the HTTP status, and never hold the API key nor a
signed URL's query string. The value helpers (``number``, ``integer``, ``string``, ...) read
the loosely typed fields of an answer. No I/O: the client makes the requests.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, NamedTuple

from yarl import URL

from syncd.errors import (
    ApiAlreadyStored,
    ApiAuthError,
    ApiError,
    ApiNoCredits,
    ApiNotFound,
    ApiPermanent,
    ApiRetryable,
    ApiThrottled,
    ApiUnusableAnswer,
    SignedUrlExpired,
)

ASSET_ID_RE: Final = re.compile(r"re_[0-9]{1,40}")
"""What a valid asset id looks like (matched in full)."""

MAX_ANSWER_BYTES: Final = 1 << 20
"""The most of an answer body the client reads; a longer answer is classified unread."""

_NOT_FOUND_MSG: Final = "asset not found"
_MSG_LIMIT: Final = 300
_QUERY_RE: Final = re.compile(r"(https?://[^\s?#'\"<>]*)[?#][^\s'\"<>]*")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


class Answer(NamedTuple):
    """One HTTP answer as the client read it."""

    status: int
    body: bytes
    oversized: bool
    content_type: str
    location: str | None
    body_sent: bool  # for uploads: every byte of the request was handed to the transport


class Classifier:
    """Classifies answers for one API key (which every message it builds masks)."""

    def __init__(self, key: str) -> None:
        self._key = key

    def success_data(
        self, endpoint: str, answer: Answer, *, data_required: bool = True
    ) -> dict[str, Any]:
        """Return the envelope's ``data`` of a successful answer; raise the classified error."""
        if not 200 <= answer.status < 300:
            raise self.status_error(endpoint, answer)
        if answer.oversized:
            raise self.error(
                ApiRetryable,
                endpoint,
                f"answer larger than {MAX_ANSWER_BYTES} bytes, not read",
                answer.status,
            )
        envelope = parse_json(answer.body)
        if not isinstance(envelope, dict) or "code" not in envelope:
            raise self.error(
                ApiRetryable, endpoint, f"not an API answer ({kind(answer)})", answer.status
            )
        if not is_success(envelope):
            msg = short(envelope.get("msg"))
            code = short(envelope.get("code"))
            raise self.error(
                ApiRetryable, endpoint, f"answer says failure (code {code}: {msg})", answer.status
            )
        data = envelope.get("data")
        if isinstance(data, dict):
            return data
        if data_required:
            raise self.error(ApiRetryable, endpoint, "answer has no data", answer.status)
        return {}

    def status_error(self, endpoint: str, answer: Answer) -> ApiError:
        """Return the error for a non-2xx answer."""
        status = answer.status
        storage = endpoint == "storage"
        envelope = None if answer.oversized else parse_json(answer.body)
        msg = envelope.get("msg") if isinstance(envelope, dict) else None
        detail = short(msg) if isinstance(msg, str) and msg.strip() else kind(answer)
        cls: type[ApiError]
        if 300 <= status < 400:
            where = strip_query(answer.location) if answer.location else "nowhere"
            return self.error(
                ApiRetryable,
                endpoint,
                f"redirect to {where} not followed (check api.base_url)",
                status,
            )
        if status in (400, 429):
            if (
                not storage
                and status == 400
                and isinstance(msg, str)
                and msg.strip().rstrip(".").lower() == _NOT_FOUND_MSG
            ):
                cls = ApiNotFound
            elif storage and status == 400 and b"expired" in answer.body.lower():
                cls = SignedUrlExpired
            else:
                cls = ApiThrottled
        elif status in (401, 403):
            cls = SignedUrlExpired if storage else ApiAuthError
        elif status == 402:
            cls = ApiNoCredits
        elif status == 408:
            cls = ApiRetryable
        elif storage and status == 409:
            cls = ApiAlreadyStored
        elif 400 <= status < 500:
            cls = ApiPermanent
        else:
            cls = ApiRetryable
        return self.error(cls, endpoint, detail, status)

    def asset_id_of(self, endpoint: str, data: dict[str, Any], status: int) -> str:
        asset_id = data.get("asset_id")
        if not isinstance(asset_id, str) or not ASSET_ID_RE.fullmatch(asset_id):
            shown = short(asset_id) if asset_id is not None else "none"
            raise self.error(
                ApiRetryable, endpoint, f"answer has no valid asset_id ({shown})", status
            )
        return asset_id

    def error(self, cls: type[ApiError], endpoint: str, what: str, status: int | None) -> ApiError:
        """Build a one-line error that names the endpoint and status and hides the key."""
        if cls is ApiRetryable and status is not None and 200 <= status < 300:
            # The service took the request and answered success, yet named nothing usable:
            # the uploader must know that an asset may exist (statuses stay in here).
            cls = ApiUnusableAnswer
        where = f"HTTP {status}" if status is not None else "no answer"
        message = f"{endpoint}: {where}: {what}"
        message = _CONTROL_RE.sub(" ", strip_query(message))
        message = message.replace(self._key, "<key>")
        if len(message) > _MSG_LIMIT:
            message = message[: _MSG_LIMIT - 3] + "..."
            message = message.replace(self._key, "<key>")
        return cls(message, status=status, endpoint=endpoint)


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def is_success(envelope: dict[str, Any]) -> bool:
    code = envelope.get("code")
    ok_code = (type(code) is int and code == 200) or code in ("200", "0000")
    return (
        ok_code and envelope.get("success", True) is True and envelope.get("failed", False) is False
    )


def kind(answer: Answer) -> str:
    if answer.oversized:
        return f"answer larger than {MAX_ANSWER_BYTES} bytes"
    if not answer.body:
        return "empty answer"
    ctype = answer.content_type.split(";", 1)[0].strip() or "no content type"
    if parse_json(answer.body) is None:
        return f"non-JSON answer ({ctype})"
    return f"JSON answer without msg ({ctype})"


def short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = _CONTROL_RE.sub(" ", text).strip()
    return text if len(text) <= 120 else text[:117] + "..."


def strip_query(text: str) -> str:
    return _QUERY_RE.sub(r"\1?...", text)


def is_http_url(url: str) -> bool:
    try:
        parsed = URL(url, encoded=True)
    except (TypeError, ValueError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def check_asset_id(asset_id: str) -> None:
    if not isinstance(asset_id, str) or not ASSET_ID_RE.fullmatch(asset_id):
        raise ValueError(f"not an asset id: {asset_id!r}")


def number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def string(value: Any) -> str | None:
    return value if isinstance(value, str) else None
