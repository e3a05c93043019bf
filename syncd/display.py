"""How a path is shown to people: one rendering for the log, the operator's commands and errors.

A leaf: it imports nothing from syncd, so every layer may use it. File names are bytes on
Linux; Python hands them on as ``str`` with the bytes that are not UTF-8 surrogate-escaped
(``os.fsdecode``). Shown to a person, such a name must stay one line (a newline in a name must
not split or forge a log line or a table row), must not drive the terminal (escape sequences),
and must read the same wherever it appears, so that one file has one name in the log, in
``syncd show`` and in the API's error messages. The exact bytes, where a program needs them,
are in the JSON output (``path_bytes_hex``), not here.
"""

from __future__ import annotations

import os


def display_path(path: str) -> str:
    """Given a path (``os.fsdecode`` form), return it as one printable line.

    Bytes that are not UTF-8 are shown as ``\\xNN``; a newline, a terminal escape or another
    character that does not print is shown as its Python escape (``\\n``, ``\\x1b``,
    ``\\u200b``); everything else is unchanged, without quotes. So
    ``b'/media/caf\\xe9\\nx.mp4'`` is shown as ``/media/caf\\xe9\\nx.mp4``. Never raises (a lone
    surrogate that ``os.fsencode`` refuses is shown as ``\\udNNN``).
    """
    try:
        text = os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return one_line(text)


def one_line(text: str) -> str:
    """Given text for people (a path already decoded, an error, a reason), return it with
    every character that does not print escaped, so that one record stays one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
