"""Quantities as people write them in the config: byte counts (``50M``), weekdays
(``mon-fri``) and times of day (``09:30``). A leaf: the config's schema and the upload stage's
shaper both read them. Every parser raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_ALIASES = {"weekdays": "mon-fri", "weekend": "sat-sun", "daily": "mon-sun", "all": "mon-sun"}
_BYTES_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)(?:/s)?", re.IGNORECASE)
_TIME_RE = re.compile(r"(\d{1,2}):(\d{2})")


def parse_byte_rate(value: int | str) -> int:
    """Given a byte count as an integer or a text like ``50M``, ``500k``, ``1.5G``, ``8MiB``
    or ``20MB/s``, return it in bytes.

    ``k``, ``M``, ``G``, ``T`` are powers of 1000, ``Ki``, ``Mi``, ``Gi``, ``Ti`` powers of
    1024; a trailing ``B`` or ``/s`` is allowed; case does not matter. Raises ``ValueError``
    (a one-line message) for anything else, a negative number or a fraction of a byte.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a byte count like 50M or 500k, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return value
    m = _BYTES_RE.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"expected a byte count like 50M or 500k, got {value!r}")
    number, unit, binary, _b = m.groups()
    if binary and not unit:
        raise ValueError(f"expected a byte count like 50M or 500k, got {value!r}")
    power = "kmgt".index(unit.lower()) + 1 if unit else 0
    # Exact arithmetic on the text: 0.1 * 10**6 would be 100000.00000000001 in floats.
    scaled = Fraction(number) * (1024 if binary else 1000) ** power
    if scaled.denominator != 1:
        raise ValueError(f"is not a whole number of bytes: {value!r}")
    return int(scaled)


def parse_days(spec: Sequence[str]) -> frozenset[int]:
    """Given day names (``mon``..``sun``, ranges like ``mon-fri``, or ``weekdays``,
    ``weekend``, ``daily``), return the weekday numbers (Monday 0). Raises ``ValueError``."""
    days: set[int] = set()
    for item in spec:
        text = _DAY_ALIASES.get(item.strip().lower(), item.strip().lower())
        first, sep, last = text.partition("-")
        if first[:3] not in DAY_NAMES or (sep and last[:3] not in DAY_NAMES):
            raise ValueError(
                f"expected day names like mon, mon-fri, weekdays, weekend or daily, got {item!r}"
            )
        start = DAY_NAMES.index(first[:3])
        end = DAY_NAMES.index(last[:3]) if sep else start
        day = start
        while True:  # a range may wrap past Sunday: fri-mon
            days.add(day)
            if day == end:
                break
            day = (day + 1) % 7
    if not days:
        raise ValueError("names no day")
    return frozenset(days)


def parse_clock_time(text: str) -> int:
    """Given ``HH:MM`` (``24:00`` allowed), return minutes after midnight; raises
    ``ValueError``."""
    m = _TIME_RE.fullmatch(text.strip())
    if m is None or int(m[2]) > 59 or int(m[1]) * 60 + int(m[2]) > 24 * 60:
        raise ValueError(f"expected a time of day HH:MM (00:00 to 24:00), got {text!r}")
    return int(m[1]) * 60 + int(m[2])
