"""Log formats: human lines on a terminal, JSON lines otherwise, syslog-prefixed under systemd.

Only :mod:`syncd.cli` installs them. Every format passes the final text through a redactor, so
a secret that slipped into a message or an exception never reaches the output.

The daemon's lines can be written by a thread of their own (``setup_logging(queued=True)``):
a per-file INFO line then costs the event loop the rendering of its message and a queue put,
not a format and a write to stderr (a system call after which the loop waits to get the GIL
back while the hashing and ledger threads hold it). See :class:`QueuedHandler`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import sys
import threading
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
        exc = _exception_text(self, record)
        if exc:
            message += "\n" + exc
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
        exc = _exception_text(self, record)
        if exc:
            data["exc"] = exc
        return self.redact(json.dumps(data, ensure_ascii=False))


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """Given a record, return its traceback as text ("" when it has none): rendered already
    when the record went through a queue (``exc_text``), else rendered now."""
    if record.exc_text:
        return record.exc_text
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return ""


# What the writer thread is handed: a record and, for a record its caller waits for, the event
# set once the record is written; a bare event is a flush; None stops the thread.
_Item = tuple[logging.LogRecord, threading.Event | None] | threading.Event | None


class QueuedHandler(logging.Handler):
    """Writes log lines to ``stream`` from a thread of its own, in order.

    The caller only renders the message (its arguments are read at once, a traceback is
    rendered at once) and queues the record; the thread formats what has queued up and writes
    it in one ``write``. A WARNING or worse is waited for until it is written, with every line
    before it: a fatal error, or a warning just before ``os._exit`` (the second SIGINT), is
    never lost. What a SIGKILL can lose is the INFO and DEBUG lines of the last moment.
    :meth:`close` writes everything queued and stops the thread; later lines are written in
    the caller's thread.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="syncd-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue ``record`` (a WARNING or worse: and wait until it is written)."""
        try:
            record = self._prepare(record)
            if self._closed or not self._thread.is_alive():
                self._write([record])
                return
            done = threading.Event() if record.levelno >= logging.WARNING else None
            self._queue.put((record, done))
        except Exception:
            self.handleError(record)
            return
        if done is not None:
            done.wait()

    def flush(self) -> None:
        """Return once every line queued so far is written."""
        if self._closed or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def close(self) -> None:
        """Write every queued line, stop the thread; later lines are written at once."""
        if not self._closed:
            self._closed = True
            if self._thread.is_alive():
                self._queue.put(None)
                self._thread.join()
        super().close()

    def _prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The arguments may change once the caller goes on, and a traceback holds frames:
        # render both now; the costly part (time stamp, JSON, redaction) is the thread's.
        # The copy (other handlers still see the record as it was) takes its attributes
        # directly: copy.copy's way through the pickle protocol was ~1.8 of the ~9 us a
        # queued line cost its caller.
        message = record.getMessage()
        copied = logging.LogRecord.__new__(type(record))
        copied.__dict__.update(record.__dict__)
        record = copied
        record.msg = message
        record.args = None
        if record.exc_info:
            record.exc_text = (self.formatter or logging.Formatter()).formatException(
                record.exc_info
            )
            record.exc_info = None
        return record

    def _write(self, records: list[logging.LogRecord]) -> None:
        lines: list[str] = []
        for record in records:
            try:
                lines.append(self.format(record) + "\n")
            except Exception:
                self.handleError(record)
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except Exception:
                self.handleError(records[0])

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [item[0] for item in items if isinstance(item, tuple)]
            try:
                self._write(records)
            finally:
                for item in items:
                    if isinstance(item, tuple) and item[1] is not None:
                        item[1].set()
                    elif isinstance(item, threading.Event):
                        item.set()
            if None in items:
                return


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
    queued: bool = False,
) -> None:
    """Install one handler on the root logger writing to ``stream`` (default stderr).

    Given the level name, the format (``auto``, ``text``, ``json``, ``journal``), the secrets
    to redact from every line, and whether the lines are written by a thread of their own
    (:class:`QueuedHandler`; call :func:`close_logging` before the process exits). A handler
    installed before is closed (its queued lines written).
    """
    out = stream or sys.stderr
    chosen = choose_format(fmt, out)
    formatter: _Redacting = (
        JsonFormatter() if chosen == "json" else TextFormatter(journal=chosen == "journal")
    )
    formatter.secrets = tuple(s for s in secrets if s)
    handler: logging.Handler = QueuedHandler(out) if queued else logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, QueuedHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("syncd").setLevel(level.upper())


def close_logging() -> None:
    """Write every line still queued (see :class:`QueuedHandler`) and stop the writer thread;
    later lines are written at once. Harmless when nothing is queued."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, QueuedHandler):
            handler.close()


def add_secret(secret: str) -> None:
    """Redact ``secret`` from every line the installed handlers write from now on."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, _Redacting) and secret and secret not in formatter.secrets:
            formatter.secrets = (*formatter.secrets, secret)
