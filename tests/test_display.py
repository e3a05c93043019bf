"""One file, one name: the path renderer every log line, command and error message uses."""

from __future__ import annotations

import os

import pytest

from syncd.display import display_path, one_line
from syncd.files import NotRegularFile
from syncd.upload.client import LocalFileError

ODD = os.fsdecode(b"/media/caf\xe9\nx.mp4")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"/media/plain name.mp4", "/media/plain name.mp4"),
        (b"/media/caf\xc3\xa9.mp4", "/media/café.mp4"),  # UTF-8 stays as it is
        (b"/media/caf\xe9\nx.mp4", "/media/caf\\xe9\\nx.mp4"),  # not UTF-8, and a newline
        (b"/media/crlf\r\nX-Injected: 1.mp4", "/media/crlf\\r\\nX-Injected: 1.mp4"),
        (b"/media/esc\x1b[31mred.mp4", "/media/esc\\x1b[31mred.mp4"),  # a terminal escape
        (b"/media/tab\there.mp4", "/media/tab\\there.mp4"),
        (b"/media/\xff\xfe.mp4", "/media/\\xff\\xfe.mp4"),
        ("/media/zero\u200bwidth.mp4".encode(), "/media/zero\\u200bwidth.mp4"),
    ],
)
def test_a_path_is_shown_on_one_printable_line_with_its_odd_bytes_escaped(
    raw: bytes, shown: str
) -> None:
    text = display_path(os.fsdecode(raw))
    assert text == shown
    assert text.isprintable()


def test_a_lone_surrogate_that_is_no_byte_is_escaped_instead_of_raising() -> None:
    assert display_path("/media/\ud800.mp4") == "/media/\\ud800.mp4"


def test_free_text_keeps_printable_characters_and_escapes_the_rest() -> None:
    assert one_line("quota exceeded") == "quota exceeded"
    assert one_line("two\nlines") == "two\\nlines"


def test_the_hasher_and_the_client_name_an_odd_file_as_the_log_does() -> None:
    shown = display_path(ODD)
    assert shown == "/media/caf\\xe9\\nx.mp4"
    assert str(NotRegularFile(ODD, "a FIFO")) == f"{shown} is not a regular file (it is a FIFO)"
    assert str(LocalFileError(ODD, "gone")) == f"cannot upload {shown}: gone"
