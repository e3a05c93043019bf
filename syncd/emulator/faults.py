"""Fault injection: scripted rules set through ``/_emulator/faults`` and the account's credits.

A rule applies to the next ``count`` requests of one endpoint (or of every endpoint, ``"*"``),
optionally only to uploads of one file name, and does exactly one thing:

- ``status``: answer that HTTP status (with the envelope; ``msg`` optional);
- ``reset``: drop the connection mid-body (or at arrival for requests without a body);
- ``hang``: never answer (``true``/``"before_store"``: the bytes are read and thrown away;
  ``"after_store"``: the asset is created, then the answer never comes);
- ``latency_s``: wait that long, then handle the request normally.

Besides rules: ``throttle_for_s`` (the endpoint answers the throttle status for that long),
``credits_after`` (402 once that many more assets were created; ``null`` recharges),
``reject_filenames`` (always the validation 400 for those names) and ``fail_processing``
(the next N assets created end ``FAILED``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from syncd.emulator.settings import ENDPOINTS, HangWhen

FAULT_ENDPOINTS: tuple[str, ...] = (*ENDPOINTS, "storage")

FaultKind = Literal["status", "reset", "hang", "latency"]

_RULE_KEYS = frozenset({"endpoint", "count", "filename", "status", "msg", "reset", "hang"})
_ACTION_KEYS = ("status", "reset", "hang", "latency_s")
_OTHER_KEYS = frozenset({"throttle_for_s", "credits_after", "reject_filenames", "fail_processing"})
_KNOWN_KEYS = _RULE_KEYS | _OTHER_KEYS | {"latency_s"}


class FaultSpecError(ValueError):
    """A control request named an unknown key or an invalid value. Given one line."""


@dataclass(frozen=True)
class Fault:
    """What to do to one request. ``source`` is "scripted" or "random" (for the request log)."""

    kind: FaultKind
    source: str
    status: int | None = None
    msg: str | None = None
    hang_when: HangWhen = "before_store"
    latency_s: float = 0.0

    def label(self) -> str:
        """A short name for the request log, e.g. ``"scripted:status=500"``."""
        detail = {
            "status": f"status={self.status}",
            "reset": "reset",
            "hang": f"hang={self.hang_when}",
            "latency": f"latency={self.latency_s:g}s",
        }[self.kind]
        return f"{self.source}:{detail}"


@dataclass
class FaultRule:
    """A scripted fault for the next ``remaining`` matching requests (None: until cleared)."""

    endpoint: str
    fault: Fault
    remaining: int | None = 1
    filename: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the rule as plain data."""
        return {
            "endpoint": self.endpoint,
            "remaining": self.remaining,
            "filename": self.filename,
            "kind": self.fault.kind,
            "status": self.fault.status,
            "msg": self.fault.msg,
            "hang": self.fault.hang_when if self.fault.kind == "hang" else None,
            "latency_s": self.fault.latency_s if self.fault.kind == "latency" else None,
        }


@dataclass
class FaultState:
    """Every scripted fault in force. Given the initial credits and rejected names."""

    credits_remaining: int | None = None
    reject_filenames: set[str] = field(default_factory=set)
    rules: list[FaultRule] = field(default_factory=list)
    # Endpoint (or "*") -> epoch seconds until which it answers the throttle status.
    throttle_until_s: dict[str, float] = field(default_factory=dict)
    fail_processing: int = 0

    def take(self, endpoint: str, filename: str | None = None) -> Fault | None:
        """Consume and return the first rule matching this request, or None.

        Given the endpoint and, once the upload's file name is known, that name: rules bound to
        a file name only match when it is given and equal; rules without one only match when
        it is not given (they are decided at arrival).
        """
        for rule in self.rules:
            if rule.endpoint not in ("*", endpoint) or rule.filename != filename:
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.rules.remove(rule)
            return rule.fault
        return None

    def throttled(self, endpoint: str, now_s: float) -> bool:
        """Return True when a ``throttle_for_s`` window covers this endpoint now."""
        return any(self.throttle_until_s.get(name, -math.inf) > now_s for name in (endpoint, "*"))

    def take_fail_processing(self) -> bool:
        """Return True (and count it) when the next asset must end FAILED."""
        if self.fail_processing > 0:
            self.fail_processing -= 1
            return True
        return False

    def reserve_credit(self) -> bool:
        """Take one credit for an asset about to be created; False when none are left."""
        if self.credits_remaining is None:
            return True
        if self.credits_remaining <= 0:
            return False
        self.credits_remaining -= 1
        return True

    def refund_credit(self) -> None:
        """Give back a credit reserved for an asset that was not created."""
        if self.credits_remaining is not None:
            self.credits_remaining += 1

    def copy(self) -> FaultState:
        """Return an independent copy (to validate control objects without side effects)."""
        return copy.deepcopy(self)

    def clear(self) -> None:
        """Remove every scripted fault: rules, throttle windows, rejected names, credits limit."""
        self.rules.clear()
        self.throttle_until_s.clear()
        self.reject_filenames.clear()
        self.credits_remaining = None
        self.fail_processing = 0

    def apply(self, spec: Mapping[str, Any], now_s: float) -> None:
        """Apply one control object (see the module docstring); raises :class:`FaultSpecError`.

        The whole object is validated before anything changes.
        """
        unknown = sorted(set(spec) - _KNOWN_KEYS)
        if unknown:
            raise FaultSpecError(
                f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KEYS))}"
            )
        endpoint = spec.get("endpoint", "*")
        if endpoint != "*" and endpoint not in FAULT_ENDPOINTS:
            raise FaultSpecError(
                f"endpoint must be one of {', '.join(FAULT_ENDPOINTS)} or '*', got {endpoint!r}"
            )
        actions = [k for k in _ACTION_KEYS if spec.get(k) not in (None, False)]
        if len(actions) > 1:
            raise FaultSpecError(f"one action per rule, got {', '.join(actions)}")
        rule = _parse_rule(spec, endpoint, actions[0]) if actions else None
        if rule is None and ("count" in spec or "filename" in spec or "msg" in spec):
            raise FaultSpecError(
                "count/filename/msg need an action: status, reset, hang, latency_s"
            )

        throttle_for_s = spec.get("throttle_for_s")
        if throttle_for_s is not None and not _is_number(throttle_for_s, minimum=0):
            raise FaultSpecError(f"throttle_for_s must be a number >= 0, got {throttle_for_s!r}")
        credits_set = "credits_after" in spec
        credits = spec.get("credits_after")
        if credits is not None and not _is_int(credits, minimum=0):
            raise FaultSpecError(f"credits_after must be an integer >= 0 or null, got {credits!r}")
        names = spec.get("reject_filenames")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) and n for n in names)
        ):
            raise FaultSpecError("reject_filenames must be a list of file names")
        fail_n = spec.get("fail_processing")
        if fail_n is not None and not _is_int(fail_n, minimum=0):
            raise FaultSpecError(f"fail_processing must be an integer >= 0, got {fail_n!r}")

        if rule is not None:
            self.rules.append(rule)
        if throttle_for_s is not None:
            self.throttle_until_s[endpoint] = now_s + float(throttle_for_s)
        if credits_set:
            self.credits_remaining = credits
        if names is not None:
            self.reject_filenames.update(names)
        if fail_n is not None:
            self.fail_processing += fail_n

    def to_json(self) -> dict[str, Any]:
        """Return the scripted faults in force as plain data."""
        return {
            "rules": [r.to_json() for r in self.rules],
            "throttle_until_s": dict(self.throttle_until_s),
            "credits_remaining": self.credits_remaining,
            "reject_filenames": sorted(self.reject_filenames),
            "fail_processing": self.fail_processing,
        }


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any, minimum: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= minimum
    )


def _parse_rule(spec: Mapping[str, Any], endpoint: str, action: str) -> FaultRule:
    count = spec.get("count", 1)
    if count is not None and not _is_int(count, minimum=1):
        raise FaultSpecError(f"count must be an integer >= 1 or null (forever), got {count!r}")
    filename = spec.get("filename")
    if filename is not None and (not isinstance(filename, str) or not filename):
        raise FaultSpecError("filename must be a non-empty string")
    msg = spec.get("msg")
    if msg is not None and not isinstance(msg, str):
        raise FaultSpecError("msg must be a string")
    fault: Fault
    if action == "status":
        status = spec["status"]
        if not _is_int(status, minimum=400) or status > 599:
            raise FaultSpecError(f"status must be an HTTP error status 400..599, got {status!r}")
        fault = Fault("status", "scripted", status=status, msg=msg)
    elif action == "reset":
        if spec["reset"] is not True:
            raise FaultSpecError("reset must be true")
        fault = Fault("reset", "scripted")
    elif action == "hang":
        hang = spec["hang"]
        if hang is True:
            hang = "before_store"
        if hang not in ("before_store", "after_store"):
            raise FaultSpecError(
                f"hang must be true, 'before_store' or 'after_store', got {hang!r}"
            )
        fault = Fault("hang", "scripted", hang_when=hang)
    else:
        latency_s = spec["latency_s"]
        if not _is_number(latency_s, minimum=0):
            raise FaultSpecError(f"latency_s must be a number >= 0, got {latency_s!r}")
        fault = Fault("latency", "scripted", latency_s=float(latency_s))
    return FaultRule(endpoint=endpoint, fault=fault, remaining=count, filename=filename)
