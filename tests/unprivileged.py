"""Checks that need an unprivileged user: root reads every file, so permission-denied cases
run in a forked child that has dropped to ``nobody``, on a folder that user can reach."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def shared_folder() -> Iterator[Path]:
    """A 0755 folder outside pytest's private tmp tree, so ``nobody`` can reach it; removed
    afterwards even when a test left folders under it without permissions."""
    path = Path(tempfile.mkdtemp(prefix="syncd-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for folder, dirs, _ in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(folder, d), 0o700)
        shutil.rmtree(path)


def run_unprivileged(check: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run ``check`` in a forked child that drops root to ``nobody`` first (the interpreter
    lives where ``nobody`` cannot exec it, so a fork is the way); return the dict it returns,
    with the child's effective uid under ``"euid"``. Raises AssertionError if the child failed
    (its traceback is on stderr)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            out = check()
            out["euid"] = os.geteuid()
            os.write(write_end, json.dumps(out).encode())
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged check failed"
    result: dict[str, object] = json.loads(data)
    return result
