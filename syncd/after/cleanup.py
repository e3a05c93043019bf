"""Source clean-up after SUCCESS: what to do with an uploaded file (keep, delete, move), when it
is safe, how to do it, and how to finish or undo it after a crash.

The decision (:func:`decide`) is pure: the caller gathers the facts (the ledger's state and
remote status of the content, the fingerprint recorded when the file was hashed, a fresh stat,
whether the root is present) and gets back one :class:`Decision`. A file is deleted or moved
only when all of these hold, and is otherwise kept with the reason:

- ``after_success`` is ``delete`` or ``move``;
- the content is ``done`` and its remote status is ``SUCCESS`` (uploaded is not enough; failed,
  rejected and superseded content is never touched);
- the path still holds that content (no newer content was recorded for it);
- its root is present (a vanished root is not a mass deletion: nothing under it is touched);
- the file's stat fingerprint (device, inode, size, mtime, ctime) equals the one recorded when
  it was hashed. That is the check: no second hash is read. A writer that changes the bytes
  changes mtime and ctime, and one that restores mtime still moves ctime, which no user call
  can set; a file that changed is kept and reported.

Carrying it out (:func:`carry_out`, blocking: run it in a thread) re-checks the fingerprint
immediately before the file goes. The ledger commits an :class:`Intent` first; a crash between
that commit and the outcome's is settled at the next start by :func:`resolve_interrupted`,
which says whether the step was finished or undone. A move never replaces an existing file:
on one file system it is ``link`` then ``unlink``; across file systems, a copy to a temporary
name beside the destination, ``fsync``, a rename onto the free name, then ``unlink``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import dataclass
from typing import Literal

from syncd.failpoints import failpoint
from syncd.fingerprint import Fingerprint

AfterSuccess = Literal["keep", "delete", "move"]
Verb = Literal["keep", "delete", "move"]
_FIELDS = ("device", "inode", "size", "mtime", "ctime")


@dataclass(frozen=True)
class Facts:
    """What the decision needs to know about one uploaded file.

    ``state`` and ``remote_status`` are the content's in the ledger; ``hashed`` is the
    fingerprint recorded with it; ``current`` a stat made now (``None``: the file is gone);
    ``superseded`` whether the path has since been recorded with other content;
    ``root_present`` whether the watched root it lies under is there.
    """

    path: str
    root: str
    state: str
    remote_status: str | None
    hashed: Fingerprint
    current: Fingerprint | None
    superseded: bool = False
    root_present: bool = True


@dataclass(frozen=True)
class Decision:
    """``verb`` is what to do (``keep`` for every refusal); ``reason`` one line saying why;
    ``target`` the destination of a move; ``report`` whether an operator should hear of it
    (a file that changed or could not be placed, as opposed to a configured keep)."""

    verb: Verb
    reason: str
    target: str | None = None
    report: bool = False


def move_target(path: str, root: str, move_to: str) -> str:
    """Given a file, the root it lies under and ``move_to``, return where a move puts it:
    the same path relative to ``move_to`` as to the root. Raises ``ValueError`` for a path
    that is not under the root."""
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(root))
    if rel in (".", "..") or rel.startswith("../"):
        raise ValueError(f"{path!r} is not under the root {root!r}")
    return os.path.join(move_to, rel)


def changed_fields(hashed: Fingerprint, current: Fingerprint) -> list[str]:
    """Given two fingerprints, return the names of the fields that differ."""
    return [name for name, a, b in zip(_FIELDS, hashed, current, strict=True) if a != b]


def decide(facts: Facts, after_success: AfterSuccess, move_to: str | None = None) -> Decision:
    """Given the facts about one file and the root's ``after_success`` and ``move_to``,
    return what to do with it (see the module docstring for the rules, in their order).
    Raises ``ValueError`` for ``move`` without ``move_to``."""
    if after_success == "keep":
        return Decision("keep", "after_success is keep")
    if after_success == "move" and not move_to:
        raise ValueError("after_success: move needs move_to")
    if facts.state != "done" or facts.remote_status != "SUCCESS":
        status = facts.remote_status or "none"
        return Decision("keep", f"not finished: state {facts.state}, remote status {status}")
    if facts.superseded:
        return Decision("keep", "the path now holds newer content", report=True)
    if not facts.root_present:
        return Decision("keep", f"its root {facts.root} is not there", report=True)
    if facts.current is None:
        return Decision("keep", "the file is no longer there")
    differ = changed_fields(facts.hashed, facts.current)
    if differ:
        what = ", ".join(differ)
        return Decision("keep", f"changed since it was hashed ({what})", report=True)
    if after_success == "delete":
        return Decision("delete", "uploaded, SUCCESS, unchanged")
    assert move_to is not None  # checked above  # noqa: S101
    try:
        target = move_target(facts.path, facts.root, move_to)
    except ValueError as exc:
        return Decision("keep", str(exc), report=True)
    return Decision("move", "uploaded, SUCCESS, unchanged", target=target)


@dataclass(frozen=True)
class Intent:
    """What the ledger commits before a file is deleted or moved: enough to finish or undo
    the step after a crash."""

    verb: Literal["delete", "move"]
    path: str
    hashed: Fingerprint
    target: str | None = None


@dataclass(frozen=True)
class Outcome:
    """``done``: the file was deleted or moved; otherwise it is in place and ``reason``
    (one line) says why; ``report`` as in :class:`Decision`."""

    done: bool
    reason: str
    report: bool = False


def temp_name(target: str) -> str:
    """The temporary name a cross-device move copies to, beside its destination (a dot name,
    which the watcher ignores, and the same on every try so a restart can remove it)."""
    folder, name = os.path.split(target)
    return os.path.join(folder, f".{name}.syncd-move")


def _current(path: str) -> Fingerprint | None:
    try:
        return Fingerprint.stat(path)
    except FileNotFoundError:
        return None


def carry_out(intent: Intent) -> Outcome:
    """Delete or move ``intent.path``, after checking once more that it is the file that was
    hashed. Blocking (run it in a thread). Returns the :class:`Outcome`; raises ``OSError``
    for a file system failure (the file is then still in place, or the step is one that
    :func:`resolve_interrupted` finishes)."""
    now = _current(intent.path)
    if now is None:
        return Outcome(False, "the file is no longer there")
    differ = changed_fields(intent.hashed, now)
    if differ:
        return Outcome(False, f"changed since it was hashed ({', '.join(differ)})", report=True)
    if intent.verb == "delete":
        os.unlink(intent.path)
        failpoint("cleanup_unlinked")
        return Outcome(True, "deleted")
    target = intent.target
    if target is None:
        raise ValueError("a move needs a target")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(intent.path, target)
    except FileExistsError:
        return Outcome(False, f"{target} already exists", report=True)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        placed = _copy_to_free_name(intent.path, target)
        if not placed:
            return Outcome(False, f"{target} already exists", report=True)
    _fsync_dir(os.path.dirname(target))
    failpoint("cleanup_placed")
    # The copy or link is durable; the source goes only if it is still the hashed file.
    differ = _content_changes(intent.hashed, _current(intent.path) or intent.hashed)
    if differ:
        # Written to while it was being copied: the copy is not the uploaded content.
        _remove_placed(target, intent)
        return Outcome(False, f"changed while it was moved ({', '.join(differ)})", report=True)
    os.unlink(intent.path)
    failpoint("cleanup_unlinked")
    return Outcome(True, f"moved to {target}")


def _copy_to_free_name(path: str, target: str) -> bool:
    """Copy ``path`` to ``target`` through a temporary name; return ``False`` (nothing left
    behind) when ``target`` exists."""
    temp = temp_name(target)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # left by an interrupted copy
    try:
        with open(path, "rb") as src, open(temp, "xb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
        shutil.copystat(path, temp)
        if os.path.lexists(target):
            os.unlink(temp)
            return False
        os.rename(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return True


def _content_changes(hashed: Fingerprint, now: Fingerprint) -> list[str]:
    """The fields that differ, but ctime: linking a file moves its ctime (the link count
    changed), so once it is linked only a change of size or mtime tells a write."""
    return [f for f in changed_fields(hashed, now) if f != "ctime"]


def _remove_placed(target: str, intent: Intent) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Recovery:
    """What :func:`resolve_interrupted` did: ``finished`` (the step is complete now, or was),
    ``undone`` (the file is where it was and stays), and one line for the log."""

    result: Literal["finished", "undone"]
    reason: str


def resolve_interrupted(intent: Intent) -> Recovery:
    """Given an :class:`Intent` found in the ledger at startup (a crash came between its
    commit and its outcome's), finish the step or undo it, and say which. Blocking (run it
    in a thread); raises ``OSError`` for a file system failure."""
    src = _current(intent.path)
    src_same = src is not None and not changed_fields(intent.hashed, src)
    if intent.verb == "delete":
        if src is None:
            return Recovery("finished", "the file was already deleted")
        if not src_same:
            return Recovery("undone", "kept: it changed since it was hashed")
        os.unlink(intent.path)
        return Recovery("finished", "deleted")
    target = intent.target
    if target is None:
        raise ValueError("a move needs a target")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp_name(target))  # an unfinished copy never counts
    dst = _current(target)
    if src is not None and dst is not None and (src.dev, src.ino) == (dst.dev, dst.ino):
        # Linked before the crash: the link itself moved the ctime of both names.
        src_same = not _content_changes(intent.hashed, src)
    if src is None:
        if dst is not None:
            return Recovery("finished", f"already moved to {target}")
        return Recovery("undone", "the file is gone and was not moved (removed by someone else)")
    if not src_same:
        if dst is not None and _is_our_copy(intent, dst):
            os.unlink(target)
        return Recovery("undone", "kept: it changed since it was hashed")
    if dst is not None:
        if not _is_our_copy(intent, dst):
            return Recovery("undone", f"kept: {target} is another file")
        os.unlink(intent.path)
        return Recovery("finished", f"moved to {target}")
    outcome = carry_out(intent)
    if outcome.done:
        return Recovery("finished", outcome.reason)
    return Recovery("undone", f"kept: {outcome.reason}")


def _is_our_copy(intent: Intent, dst: Fingerprint) -> bool:
    """Whether the file at the target was put there by this move: the same inode (a link),
    or a copy of the same size and mtime (the copy keeps the mtime; it was renamed into place
    only after it was complete)."""
    hashed = intent.hashed
    if (dst.dev, dst.ino) == (hashed.dev, hashed.ino):
        return True
    return dst.size == hashed.size and dst.mtime_ns == hashed.mtime_ns
