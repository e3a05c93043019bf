"""The fleet ledger's dashboard pages (its :class:`~syncd.ledger.store.DashboardLedger` facet):
the fleet's uploads and problem contents, this host's paths, one bounded query per page.
"""

from __future__ import annotations

from collections.abc import Sequence

from syncd.ledger.postgres.base import (
    _C_CONTENT_COLS,
    _PATH_COLS,
    PgBase,
    _attempt,
    _b,
    _content,
    _path,
    _s,
)
from syncd.ledger.records import Attempt, Content, PathRecord


class PgPages(PgBase):
    """The dashboard's lists: recent uploads, problem contents and paths, a path search."""

    async def recent_uploads(
        self, limit: int, before_id: int | None = None
    ) -> list[tuple[Attempt, Content | None]]:
        """The last ``limit`` successful upload attempts of every host (newest first), each
        with its content, before attempt ``before_id`` when given (the next page)."""
        rows = await self._read(
            f"SELECT {', '.join('a.' + c for c in Attempt.__slots__)}, {_C_CONTENT_COLS} "
            "FROM attempts a LEFT JOIN contents c ON c.sha256 = a.sha256 "
            "WHERE a.outcome = 'ok' AND a.id < $1 ORDER BY a.id DESC LIMIT $2",
            before_id if before_id is not None else 1 << 62,
            limit,
        )
        n = len(Attempt.__slots__)
        found: list[tuple[Attempt, Content | None]] = []
        for row in rows:
            values = list(row)
            content = None if values[n] is None else _content(values[n:])
            found.append((_attempt(values[:n]), content))
        return found

    async def problem_contents(
        self, limit: int, after: tuple[float, str] | None = None
    ) -> list[tuple[Content, str | None]]:
        """Failed and rejected contents, the most recently changed first, each with one path
        that holds it (this host's present one first); ``after`` is the last ``(updated_at,
        sha256)`` of the previous page."""
        keyset = "AND (c.updated_at, c.sha256) < ($3, $4) " if after is not None else ""
        rows = await self._read(
            f"SELECT {_C_CONTENT_COLS}, (SELECT p.path FROM paths p WHERE p.sha256 = c.sha256 "
            "ORDER BY (p.state = 'present') DESC, (p.host = $1) DESC, p.last_seen DESC "
            "LIMIT 1) FROM contents c "
            f"WHERE c.state IN ('failed', 'rejected') {keyset}"
            "ORDER BY c.updated_at DESC, c.sha256 DESC LIMIT $2",
            self.host,
            limit,
            *(after or ()),
        )
        found: list[tuple[Content, str | None]] = []
        for row in rows:
            values = list(row)
            found.append((_content(values[:-1]), None if values[-1] is None else _s(values[-1])))
        return found

    async def problem_paths(
        self, roots: Sequence[str], limit: int, after: str | None = None
    ) -> list[PathRecord]:
        """This host's paths under the given roots in state ``error`` or ``unsettled``, in
        path order after ``after``."""
        if not roots:
            return []
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND root = ANY($2::text[]) "
            "AND state IN ('error', 'unsettled') AND path > $3 ORDER BY path LIMIT $4",
            self.host,
            list(roots),
            _b(after) if after is not None else b"",
            limit,
        )
        return [_path(r) for r in rows]

    async def find_paths(self, part: str, limit: int) -> list[PathRecord]:
        """Up to ``limit`` of this host's paths that start with ``part`` (when it is absolute:
        a range of the primary key) or else contain it anywhere, in path order."""
        needle = _b(part)
        if part.startswith("/"):
            upper = needle[:-1] + bytes([needle[-1] + 1]) if needle[-1] < 255 else needle + b"\xff"
            rows = await self._read(
                f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND path >= $2 AND path < $3 "
                "ORDER BY path LIMIT $4",
                self.host,
                needle,
                upper,
                limit,
            )
        else:
            rows = await self._read(
                f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND position($2 in path) > 0 "
                "ORDER BY path LIMIT $3",
                self.host,
                needle,
                limit,
            )
        return [_path(r) for r in rows]
