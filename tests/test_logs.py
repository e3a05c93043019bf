"""The daemon's log lines written by a thread of their own (``logs.QueuedHandler``): in order,
nothing lost at close, warnings out before the call returns, arguments read at the call."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from syncd.logs import QueuedHandler, TextFormatter, add_secret, close_logging, setup_logging


class SlowStream(io.StringIO):
    """A stream whose writes wait until ``release`` is set: lines pile up in the queue."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writes = 0

    def write(self, s: str) -> int:
        self.release.wait()
        self.writes += 1
        return super().write(s)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("syncd").level)
    yield
    close_logging()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    logging.getLogger("syncd").setLevel(saved[2])


def test_lines_are_written_in_order_and_none_is_lost_at_close(restore_logging: None) -> None:
    out = SlowStream()
    setup_logging("info", "journal", stream=out, queued=True)
    log = logging.getLogger("syncd.test")
    for i in range(500):
        log.info("queued file%d", i)
    assert out.getvalue() == ""  # the writer thread is held: the callers did not write
    out.release.set()
    close_logging()
    assert out.getvalue().splitlines() == [f"<6>syncd.test: queued file{i}" for i in range(500)]
    assert out.writes < 500  # what piled up went out in a few writes, not one per line
    log.info("after close")  # written at once by the caller
    assert out.getvalue().endswith("<6>syncd.test: after close\n")


def test_a_warning_is_written_with_every_line_before_it_when_the_call_returns(
    restore_logging: None,
) -> None:
    out = io.StringIO()
    setup_logging("info", "journal", stream=out, queued=True)
    log = logging.getLogger("syncd.test")
    for i in range(200):
        log.info("line %d", i)
    log.warning("careful")
    lines = out.getvalue().splitlines()
    assert lines[-1] == "<4>syncd.test: careful"
    assert lines[:-1] == [f"<6>syncd.test: line {i}" for i in range(200)]


def test_arguments_are_read_when_logged_and_tracebacks_are_redacted(
    restore_logging: None,
) -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out, queued=True)
    add_secret("sk-mavi-topsecret")
    log = logging.getLogger("syncd.test")
    names = ["a.mp4"]
    log.info("files %s", names)
    names.append("b.mp4")  # changed after the call: the line shows what was logged
    try:
        raise RuntimeError("request failed with key sk-mavi-topsecret")
    except RuntimeError:
        log.exception("upload of %s failed", "a.mp4")
    close_logging()
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["msg"] == "files ['a.mp4']"
    assert second["level"] == "error" and second["msg"] == "upload of a.mp4 failed"
    assert "RuntimeError" in second["exc"] and "[redacted]" in second["exc"]
    assert "sk-mavi-topsecret" not in out.getvalue()


def test_flush_waits_for_the_queued_lines() -> None:
    out = io.StringIO()
    handler = QueuedHandler(out)
    handler.setFormatter(TextFormatter(journal=True))
    try:
        for i in range(100):
            handler.handle(logging.makeLogRecord({"name": "t", "msg": f"m{i}", "levelno": 20}))
        handler.flush()
        assert len(out.getvalue().splitlines()) == 100
    finally:
        handler.close()


def test_the_queued_handler_leaves_the_record_as_it_was_for_the_handlers_after_it(
    restore_logging: None,
) -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out, queued=True)
    seen: list[logging.LogRecord] = []
    after = logging.Handler()
    after.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(after)  # called after the queued handler
    log = logging.getLogger("syncd.test")
    log.info("queued %s (%d bytes)", "a.mp4", 10)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("upload of %s failed", "a.mp4")
    close_logging()
    first, second = seen
    assert (first.msg, first.args) == ("queued %s (%d bytes)", ("a.mp4", 10))
    assert second.exc_info is not None and second.exc_info[0] is RuntimeError
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["msg"] for line in lines] == ["queued a.mp4 (10 bytes)", "upload of a.mp4 failed"]
    assert "RuntimeError: boom" in lines[1]["exc"]
