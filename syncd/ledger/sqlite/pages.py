"""The SQLite ledger's dashboard pages (its :class:`~syncd.ledger.store.DashboardLedger`
facet): the local endpoint's lists, one bounded query per page, each answered from an index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from syncd.ledger.records import Attempt, Content, PathRecord
from syncd.ledger.sqlite.base import _PATH_COLS, LedgerBase, _attempt, _b, _content, _path, _s


class Pages(LedgerBase):
    """The dashboard's lists: recent uploads, problem contents and paths, a path search."""

    async def recent_uploads(
        self, limit: int, before_id: int | None = None
    ) -> list[tuple[Attempt, Content | None]]:
        """The last ``limit`` successful upload attempts (newest first), each with its content,
        before attempt ``before_id`` when given (the next page). Walks the attempts' primary
        key backwards: cheap however long the history is, while uploads succeed."""
        rows = await self._read(
            f"SELECT {', '.join('a.' + c for c in Attempt.__slots__)}, "
            f"{', '.join('c.' + c for c in Content.__slots__)} FROM attempts a "
            "LEFT JOIN contents c ON c.sha256 = a.sha256 "
            "WHERE a.outcome = 'ok' AND a.id < ? ORDER BY a.id DESC LIMIT ?",
            (before_id if before_id is not None else 1 << 62, limit),
        )
        n = len(Attempt.__slots__)
        return [(_attempt(r[:n]), None if r[n] is None else _content(r[n:])) for r in rows]

    async def problem_contents(
        self, limit: int, after: tuple[float, str] | None = None
    ) -> list[tuple[Content, str | None]]:
        """Failed and rejected contents, the most recently changed first, each with one path
        that holds it (a present one if any); ``after`` is the last ``(updated_at, sha256)``
        of the previous page. Found through the state index; only problem rows are sorted."""
        keyset = "AND (c.updated_at, c.sha256) < (?, ?) " if after is not None else ""
        rows = await self._read(
            f"SELECT {', '.join('c.' + c for c in Content.__slots__)}, "
            "(SELECT p.path FROM paths p WHERE p.sha256 = c.sha256 "
            " ORDER BY p.state = 'present' DESC, p.last_seen DESC LIMIT 1) FROM contents c "
            f"WHERE c.state IN ('failed', 'rejected') {keyset}"
            "ORDER BY c.updated_at DESC, c.sha256 DESC LIMIT ?",
            (*(after or ()), limit),
        )
        return [(_content(r[:-1]), None if r[-1] is None else _s(r[-1])) for r in rows]

    async def problem_paths(
        self, roots: Sequence[str], limit: int, after: str | None = None
    ) -> list[PathRecord]:
        """Paths under the given roots (their configured paths) that could not be read or
        never settled (states ``error``, ``unsettled``), in path order after ``after``."""
        if not roots:
            return []
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE root IN ({','.join('?' * len(roots))}) "
            "AND state IN ('error', 'unsettled') AND path > ? ORDER BY path LIMIT ?",
            (*roots, _b(after) if after is not None else b"", limit),
        )
        return [_path(r) for r in rows]

    async def find_paths(self, part: str, limit: int) -> list[PathRecord]:
        """Up to ``limit`` paths that start with ``part`` (when it is absolute: a range of the
        primary key) or else contain it anywhere (a scan in path order, stopped at ``limit``
        matches), in path order."""
        needle = _b(part)
        if part.startswith("/"):
            upper = needle[:-1] + bytes([needle[-1] + 1]) if needle[-1] < 255 else needle + b"\xff"
            sql = f"SELECT {_PATH_COLS} FROM paths WHERE path >= ? AND path < ? "
            params: tuple[Any, ...] = (needle, upper)
        else:
            sql = f"SELECT {_PATH_COLS} FROM paths WHERE instr(path, ?) > 0 "
            params = (needle,)
        rows = await self._read(sql + "ORDER BY path LIMIT ?", (*params, limit))
        return [_path(r) for r in rows]
