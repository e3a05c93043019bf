"""Log formats: human lines on a terminal, JSON lines otherwise, syslog-prefixed under systemd.

Only :mod:`syncd.cli` installs them. Every format passes the final text through a redactor, so
a secret that slipped into a message or an exception never reaches the output.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

# syslog priorities that journald reads from a "<N>" line prefix.
_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _Redacting(logging.Formatter):
    secrets: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
        return text


class TextFormatter(_Redacting):
    """``2026-11-24 01:02:03 INFO syncd.daemon: message`` (no timestamp when ``journal``)."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.journal:
            prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
            line = f"<{prio}>{record.name}: {message}"
        else:
            when = dt.datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
            line = f"{when} {record.levelname:<7} {record.name}: {message}"
        return self.redact(line)


class JsonFormatter(_Redacting):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` (and ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(data, ensure_ascii=False))


def choose_format(requested: str, stream: TextIO, env: Mapping[str, str] | None = None) -> str:
    """Resolve ``auto``: ``text`` on a terminal, ``journal`` under systemd, else ``json``."""
    env = os.environ if env is None else env
    if requested != "auto":
        return requested
    if env.get("JOURNAL_STREAM"):
        return "journal"
    return "text" if stream.isatty() else "json"


def setup_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    secrets: tuple[str, ...] = (),
    stream: TextIO | None = None,
) -> None:
    """Install one handler on the root logger writing to ``stream`` (default stderr).

    Given the level name, the format (``auto``, ``text``, ``json``, ``journal``) and the secrets
    to redact from every line.
    """
    out = stream or sys.stderr
    chosen = choose_format(fmt, out)
    formatter: _Redacting = (
        JsonFormatter() if chosen == "json" else TextFormatter(journal=chosen == "journal")
    )
    formatter.secrets = tuple(s for s in secrets if s)
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("syncd").setLevel(level.upper())


def add_secret(secret: str) -> None:
    """Redact ``secret`` from every line the installed handlers write from now on."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, _Redacting) and secret and secret not in formatter.secrets:
            formatter.secrets = (*formatter.secrets, secret)
