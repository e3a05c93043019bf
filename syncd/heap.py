"""Giving the memory a burst of work freed back to the system (after a full scan).

A scan of a big tree allocates and frees a few MB per pass (folder listings, ledger rows, the
batches handed on). Freed, they stay with the process: in the interpreter's free lists (of
tuples, lists, dicts, floats, frames), which keep pymalloc's arenas in use, and in glibc's
heap, which keeps freed pages mapped for reuse. An idle daemon would carry the peak of its
last scan: ~5 MB at 10,000 watched folders (figure 10 of ``docs/benchmarks.md``).
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl has no malloc_trim): the collection alone
    return trim


def trim_heap() -> bool:
    """Blocking (run it in a thread): give freed memory back to the kernel.

    A full garbage collection, which also empties the interpreter's free lists (only a full
    one does), so that pymalloc can release its emptied arenas; then glibc's
    ``malloc_trim(0)``. The collection holds the GIL (~30 ms with 10,000 watched folders).
    Returns whether the C library could trim (False on one without ``malloc_trim``). Never
    raises.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
