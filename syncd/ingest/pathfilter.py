"""Which paths under a watched root are candidates: name rules only, no I/O.

A file is a candidate when neither its name nor the name of any folder between it and the root
is a temporary one (``settle.temp_patterns``), it is not a sidecar syncd writes
(``NAME.mavi.json``), nothing excludes it or a folder above it, and
(when the root has ``include`` globs) it or a folder above it is included. A non-recursive root
takes only the files directly inside it.

Glob rules (the same for ``include``, ``exclude`` and the temporary-name patterns):

- ``*`` matches any run of characters except ``/``; ``?`` one character except ``/``;
  ``[abc]``, ``[a-z]``, ``[!abc]`` a character class (never ``/``).
- A glob without ``/`` (``*.mp4``, ``Private``) matches a name at any depth.
- A glob with ``/`` is anchored at the root (``Camera/*.mov``; a leading ``/`` is allowed).
  ``**`` as a whole segment matches any number of folders (``**/raw/*.mp4``, ``Camera/**``).
- A trailing ``/`` (``Private/``) matches folders only.
- Matching is case-sensitive, like the file system (``*.[mM][pP]4`` matches both cases).

Paths are ``str`` as :mod:`os` gives them; names that are not valid UTF-8 carry surrogate
escapes (``os.fsdecode``) and are matched as they are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from syncd.config import SIDECAR_SUFFIX, WatchRoot
from syncd.display import display_path


def _class_regex(body: str) -> str:
    """Given the inside of a ``[...]`` glob class, return an equivalent regex class."""
    negate = body[:1] in ("!", "^")
    if negate:
        body = body[1:]
    items: list[str] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            low, high = body[i], body[i + 2]
            if low <= high:  # an inverted range matches nothing, like fnmatch
                items.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
        else:
            items.append(re.escape(body[i]))
            i += 1
    if negate:
        return "[^/" + "".join(items) + "]"
    return "[" + "".join(items) + "]" if items else "(?!)"


def glob_regex(pattern: str) -> str:
    """Given one glob (without the anchoring ``/`` or the folder-only trailing ``/``), return
    the regex source that matches exactly what it matches (see the module docstring)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            whole_segment = (i == 0 or pattern[i - 1] == "/") and (j == n or pattern[j] == "/")
            if j - i >= 2 and whole_segment:
                if j == n:
                    out.append(".*")  # `a/**`: everything below a
                else:
                    out.append("(?:[^/]*/)*")  # `**/`: zero or more folders
                    j += 1
            else:
                out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1  # a `]` first in the class is a literal
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))  # no closing bracket: a literal `[`
                i += 1
            else:
                out.append(_class_regex(pattern[i + 1 : j]))
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


class _Globs:
    """A compiled list of globs, split by kind so that each check is one regex match."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(p for p in patterns if p.strip("/"))
        name_any: list[str] = []
        name_dir: list[str] = []
        rel_any: list[str] = []
        rel_dir: list[str] = []
        self._compiled: list[tuple[str, re.Pattern[str], bool, bool]] = []
        for pattern in self.patterns:
            dir_only = pattern.endswith("/")
            body = pattern.rstrip("/")
            anchored = "/" in body
            body = body.lstrip("/")
            source = glob_regex(body)
            if anchored:
                (rel_dir if dir_only else rel_any).append(source)
            else:
                (name_dir if dir_only else name_any).append(source)
            self._compiled.append((pattern, re.compile(source), anchored, dir_only))
        self.name_any = _alternation(name_any)
        self.name_dir = _alternation(name_dir)
        self.rel_any = _alternation(rel_any)
        self.rel_dir = _alternation(rel_dir)
        self.empty = not self.patterns

    def matches(self, rel: str, name: str, is_dir: bool) -> bool:
        """Given a path relative to the root and its last component, return whether a glob
        matches it."""
        if self.name_any is not None and self.name_any.fullmatch(name):
            return True
        if self.rel_any is not None and self.rel_any.fullmatch(rel):
            return True
        if is_dir:
            if self.name_dir is not None and self.name_dir.fullmatch(name):
                return True
            if self.rel_dir is not None and self.rel_dir.fullmatch(rel):
                return True
        return False

    def which(self, rel: str, name: str, is_dir: bool) -> str | None:
        """Return the first glob (as written) that matches, or ``None``."""
        for pattern, regex, anchored, dir_only in self._compiled:
            if dir_only and not is_dir:
                continue
            if regex.fullmatch(rel if anchored else name):
                return pattern
        return None


def _alternation(sources: list[str]) -> re.Pattern[str] | None:
    if not sources:
        return None
    return re.compile("|".join(f"(?:{s})" for s in sources), re.DOTALL)


class PathFilter:
    """The name rules of one watched root.

    Given the root and the temporary-name patterns (``settle.temp_patterns``). Every method
    takes absolute paths as ``str`` and does no I/O: it cannot tell a file from a folder, so
    callers say which they hold by calling the file or the folder method.
    """

    def __init__(self, root: WatchRoot, temp_patterns: Sequence[str]) -> None:
        self.root = root
        self.root_path = os.path.normpath(root.path)
        self._prefix = self.root_path.rstrip("/") + "/"
        self.recursive = root.recursive
        # Temporary-name patterns are names, never anchored paths.
        self._temp = _Globs(tuple(p.strip("/") for p in temp_patterns))
        self._temp_name = self._temp.name_any
        self._exclude = _Globs(root.exclude)
        self._include = _Globs(root.include)
        # Every name a file may not have whatever folder it is in (a temporary name, a
        # sidecar), as one regex: a folder's names are checked with one C-level pass.
        sidecar = ".*" + re.escape(SIDECAR_SUFFIX)
        temp = self._temp_name
        self._rejected_name = re.compile(
            sidecar if temp is None else f"(?:{temp.pattern})|(?:{sidecar})", re.DOTALL
        )

    # -- public API --------------------------------------------------------------------------

    def accepts(self, path: str) -> bool:
        """Given an absolute file path, return whether it is a candidate under this root."""
        return self.reason(path) is None

    def reason(self, path: str) -> str | None:
        """Given an absolute file path, return why it is not a candidate (one line), or
        ``None`` when it is."""
        rel = self.relative(path)
        if rel is None:
            return f"outside the root {display_path(self.root_path)}"
        if rel == "":
            return "is the root itself"
        parent_rel, _, name = rel.rpartition("/")
        if parent_rel:
            if not self.recursive:
                return "in a sub-folder of a non-recursive root"
            why, included = self.folder_verdict(parent_rel)
            if why is not None:
                return why
        else:
            included = self._include.empty
        return self.file_verdict(rel, name, included)

    def accepts_dir(self, path: str) -> bool:
        """Given an absolute folder path, return whether files below it can be candidates."""
        return self.reason_dir(path) is None

    def reason_dir(self, path: str) -> str | None:
        """Given an absolute folder path, return why nothing below it is a candidate, or
        ``None``. The root itself is always accepted."""
        rel = self.relative(path)
        if rel is None:
            return f"outside the root {display_path(self.root_path)}"
        if rel == "":
            return None
        if not self.recursive:
            return "a sub-folder of a non-recursive root"
        why, _ = self.folder_verdict(rel)
        return why

    def relative(self, path: str) -> str | None:
        """Given an absolute path, return it relative to the root (``""`` for the root
        itself), or ``None`` when it is not under the root. Pure string work: ``..`` and
        doubled slashes are normalised, symlinks are not resolved."""
        path = os.path.normpath(path)
        if path == self.root_path:
            return ""
        if path.startswith(self._prefix):
            return path[len(self._prefix) :]
        return None

    # -- the scanner's fast path -------------------------------------------------------------

    def file_verdict(self, rel: str, name: str, included: bool) -> str | None:
        """Given a file's path relative to the root, its name, and whether a folder above it
        is already included (or there are no include globs), return why it is not a
        candidate, or ``None``. Folders above it must have been accepted by
        :meth:`dir_verdict`."""
        temp = self._temp_name
        if temp is not None and temp.fullmatch(name):
            return f"temporary name (matches {self._temp.which(name, name, False)!r})"
        if name.endswith(SIDECAR_SUFFIX):
            return f"a sidecar file syncd writes (*{SIDECAR_SUFFIX})"
        exclude = self._exclude
        if not exclude.empty and exclude.matches(rel, name, False):
            return f"excluded by {exclude.which(rel, name, False)!r}"
        if not included and not self._include.matches(rel, name, False):
            globs = ", ".join(repr(p) for p in self._include.patterns)
            return f"not matched by any include glob ({globs})"
        return None

    def all_files_accepted(self, rel_prefix: str, names: Sequence[str], included: bool) -> bool:
        """Given the path relative to the root of a folder the caller accepted (with a
        trailing slash, ``""`` for the root), names of files in it and whether the folder is
        included, return whether :meth:`file_verdict` accepts every one. Without exclude
        globs, in an included folder, only the name rules apply: one regex pass over the
        names, no Python per name."""
        if self._exclude.empty and included:
            return not any(map(self._rejected_name.fullmatch, names))
        verdict = self.file_verdict
        return all(verdict(rel_prefix + name, name, included) is None for name in names)

    def dir_verdict(self, rel: str, name: str, included: bool) -> tuple[str | None, bool]:
        """Given a sub-folder's path relative to the root, its name and whether its parent is
        included, return ``(why it is pruned or None, whether it is included)``. Recursion
        is the caller's business (see :attr:`recursive`)."""
        temp = self._temp_name
        if temp is not None and temp.fullmatch(name):
            which = self._temp.which(name, name, True)
            return f"in folder {display_path(rel)} (temporary name, matches {which!r})", False
        exclude = self._exclude
        if not exclude.empty and exclude.matches(rel, name, True):
            which = exclude.which(rel, name, True)
            return f"in folder {display_path(rel)} (excluded by {which!r})", False
        return None, included or self._include.matches(rel, name, True)

    @property
    def include_all(self) -> bool:
        """Whether there are no include globs (so every folder counts as included)."""
        return self._include.empty

    def folder_verdict(self, dir_rel: str) -> tuple[str | None, bool]:
        """Given a sub-folder's path relative to the root, return ``(why it is pruned or None,
        whether it is included)``, looking at it and at every folder above it. Recursion is
        the caller's business."""
        included = self._include.empty
        parts = dir_rel.split("/")
        for depth in range(len(parts)):
            why, included = self.dir_verdict("/".join(parts[: depth + 1]), parts[depth], included)
            if why is not None:
                return why, False
        return None, included
