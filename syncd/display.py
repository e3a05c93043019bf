"""How a path is shown to people: one rendering for the log, the operator's commands and errors.

A leaf: it imports nothing from syncd, so every layer may use it. File names are bytes on
Linux; Python hands them on as ``str`` with the bytes that are not UTF-8 surrogate-escaped
(``os.fsdecode``). Shown to a person, such a name must stay one line (a newline in a name must
not split or forge a log line or a table row), must not drive the terminal (escape sequences),
and must read the same wherever it appears, so that one file has one name in the log, in
``syncd show`` and in the API's error messages.
"""

from __future__ import annotations

import os


def display_path(path: str) -> str:
    """Given a path (``os.fsdecode`` form), return it as one printable line.

    Bytes that are not UTF-8 are shown as ``\\xNN``; a name that is printable after that comes
    back unchanged; one with a newline, a terminal escape or another control character comes
    back quoted and escaped (``repr``), so it cannot split, forge or colour a line. Never raises
    (a lone surrogate that ``os.fsencode`` refuses is escaped as ``\\udcNN``).
    """
    try:
        text = os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if text.isprintable() else repr(text)
