"""The SQLite ledger's operator queries: what ``syncd show/ls/status/retry/forget`` and the
local HTTP endpoint read (and the operator's one write, ``requeue``), part of its
:class:`~syncd.ledger.store.OperatorLedger` facet. Each one is bounded: listings page by keyset
(never OFFSET, never a whole table in memory), one query per page on the read connection, so a
daemon's writes carry on between and during pages.
"""

from __future__ import annotations

import posixpath
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from syncd.ledger.records import (
    CONTENT_STATES,
    PATH_STATES,
    Attempt,
    Content,
    ContentState,
    PathRecord,
)
from syncd.ledger.sqlite.base import (
    _ATTEMPT_COLS,
    _CONTENT_COLS,
    _IN_CHUNK,
    _PATH_COLS,
    LedgerBase,
    _attempt,
    _b,
    _content,
    _path,
    _retry_stalled,
    _s,
)


class Queries(LedgerBase):
    """The operator's queries over contents, paths and attempts."""

    async def get_content(self, sha256: str) -> Content | None:
        """Return the content with this exact hash, or None."""
        rows = await self._read(f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = ?", (sha256,))
        return _content(rows[0]) if rows else None

    async def find_contents(self, key: str) -> list[Content]:
        """Return contents whose sha256 starts with ``key`` (4+ hex digits) or whose current or
        superseded asset id is ``key``."""
        key = key.strip()
        rows = await self._read(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE asset_id = ? OR sha256 IN "
            "(SELECT sha256 FROM superseded_assets WHERE asset_id = ?)",
            (key, key),
        )
        if not rows and len(key) >= 4 and all(ch in "0123456789abcdefABCDEF" for ch in key):
            rows = await self._read(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 >= ? AND sha256 < ? LIMIT 20",
                (key.lower(), key.lower() + "g"),
            )
        return [_content(r) for r in rows]

    async def paths_of(self, sha256: str) -> list[tuple[str, PathRecord | None]]:
        """Every path that ever held ``sha256``, with its current record (None if forgotten)."""
        rows = await self._read(
            "SELECT h.path, " + ", ".join(f"p.{c.strip()}" for c in _PATH_COLS.split(",")) + " "
            "FROM holdings h LEFT JOIN paths p ON p.path = h.path "
            "WHERE h.sha256 = ? ORDER BY h.first_seen",
            (sha256,),
        )
        return [(_s(r[0]), None if r[1] is None else _path(r[1:])) for r in rows]

    async def attempts_of(self, sha256: str) -> list[Attempt]:
        """Every upload attempt of ``sha256``, oldest first."""
        rows = await self._read(
            f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE sha256 = ? ORDER BY id", (sha256,)
        )
        return [_attempt(r) for r in rows]

    @_retry_stalled
    async def requeue(self, *, states: Sequence[ContentState], sha256s: Sequence[str] = ()) -> int:
        """Operator retry: contents in ``states`` (all, or only ``sha256s``) become due now.

        Attempts and throttle counts restart from zero. Returns how many were re-queued.
        """
        now = self._clock()
        marks = ",".join("?" * len(states))
        sql = (
            "UPDATE contents SET state = CASE WHEN asset_id IS NOT NULL AND signed_url IS NOT "
            "NULL THEN 'allocated' ELSE 'pending' END, attempts = 0, throttle_count = 0, "
            f"next_attempt_at = ?, updated_at = ? WHERE state IN ({marks})"
        )
        params: list[Any] = [now, now, *states]
        if sha256s:
            sql += f" AND sha256 IN ({','.join('?' * len(sha256s))})"
            params.extend(sha256s)
        return await self._write(sql, params)

    async def counts(self) -> dict[str, dict[str, int]]:
        """Counts per content state and per path state, plus backlog bytes."""
        contents: dict[str, int] = {s: 0 for s in CONTENT_STATES}
        for state, n in await self._read("SELECT state, COUNT(*) FROM contents GROUP BY state"):
            contents[state] = n
        paths: dict[str, int] = {s: 0 for s in PATH_STATES}
        for state, n in await self._read("SELECT state, COUNT(*) FROM paths GROUP BY state"):
            paths[state] = n
        rows = await self._read(
            "SELECT COALESCE(SUM(size), 0) FROM contents "
            "WHERE state IN ('pending', 'allocated', 'uploading')"
        )
        return {"contents": contents, "paths": paths, "backlog": {"bytes": rows[0][0]}}

    async def unfinished_count(self) -> int:
        """Contents still on their way to a final state (``sync --once`` waits for these).

        A content parked because no present path holds it any more is not counted: nothing can
        upload it until its bytes appear again.
        """
        rows = await self._read(
            "SELECT COUNT(*) FROM contents WHERE state IN "
            "('pending', 'allocated', 'uploading', 'uploaded') "
            "AND NOT (state IN ('pending', 'allocated') AND last_error LIKE 'no present path%')"
        )
        return int(rows[0][0])

    async def possible_duplicates(self) -> int:
        """Total possible remote duplicates counted by recovery."""
        rows = await self._read("SELECT COALESCE(SUM(possible_duplicates), 0) FROM contents")
        return int(rows[0][0])

    async def iter_assets(
        self,
        *,
        states: Sequence[str] = (),
        root: str | None = None,
        since: float | None = None,
        page_size: int = 1000,
        on_page: Callable[[int], None] | None = None,
        host: str | None = None,
    ) -> AsyncGenerator[tuple[PathRecord, Content | None], None]:
        """Stream every known path with its content (None when it holds none), in path order.

        Given optional filters: ``states`` (content states such as ``failed`` and path states
        such as ``skipped``, mixed freely; a row matches either), ``root`` (a folder: only paths
        below it) and ``since`` (epoch seconds: only rows first seen, changed or gone since
        then). Fetches ``page_size`` rows per query, calling ``on_page(rows)`` after each one.
        Raises :class:`ValueError` for an unknown state or for any ``host`` (a SQLite ledger
        holds one host's paths: there is nothing to filter by), :class:`LedgerError` on SQLite
        errors.
        """
        if host is not None:
            raise ValueError(f"host {host!r}: a SQLite ledger holds this host's paths only")
        unknown = [s for s in states if s not in CONTENT_STATES and s not in PATH_STATES]
        if unknown:
            raise ValueError(f"unknown state {unknown[0]!r}")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        where: list[str] = []
        params: list[Any] = []
        content_states = [s for s in states if s in CONTENT_STATES]
        path_states = [s for s in states if s in PATH_STATES]
        either: list[str] = []
        if content_states:
            either.append(f"c.state IN ({','.join('?' * len(content_states))})")
            params.extend(content_states)
        if path_states:
            either.append(f"p.state IN ({','.join('?' * len(path_states))})")
            params.extend(path_states)
        if either:
            where.append("(" + " OR ".join(either) + ")")
        upper: bytes | None = None
        after: bytes | None = None
        if root is not None:
            prefix = _b(posixpath.normpath(root)).rstrip(b"/") + b"/"
            # Everything under `prefix` sorts between it and the same bytes with the final
            # "/" (0x2f) raised to "0" (0x30): a range the primary key answers directly.
            upper = prefix[:-1] + b"0"
            where.append("p.path >= ? AND p.path < ?")
            params.extend([prefix, upper])
        if since is not None:
            where.append(
                "MAX(p.first_seen, COALESCE(c.updated_at, 0), COALESCE(p.gone_at, 0)) >= ?"
            )
            params.append(since)
        content_cols = ", ".join("c." + c for c in Content.__slots__)
        path_cols = ", ".join("p." + c.strip() for c in _PATH_COLS.split(","))
        base = (
            f"SELECT {path_cols}, {content_cols} FROM paths p "
            "LEFT JOIN contents c ON c.sha256 = p.sha256 WHERE "
        )
        n_path = len(_PATH_COLS.split(","))
        while True:
            keyset = ["p.path > ?"] if after is not None else []
            sql = base + " AND ".join([*keyset, *where] or ["1"]) + " ORDER BY p.path LIMIT ?"
            page = await self._read(
                sql, [*([after] if after is not None else []), *params, page_size]
            )
            if on_page is not None:
                on_page(len(page))
            for row in page:
                content = None if row[n_path] is None else _content(row[n_path:])
                yield _path(row[:n_path]), content
            if len(page) < page_size:
                return
            after = bytes(page[-1][0])

    async def upload_activity(self, since: float) -> dict[str, dict[str, int]]:
        """Upload attempts started at or after ``since`` (epoch seconds), per upload mode.

        Returns ``{mode: {"requests": n, "ok": n, "bytes": n}}``: attempts started (each one
        began with a request to its endpoint), those that got an asset id, and their bytes.
        """
        rows = await self._read(
            "SELECT mode, COUNT(*), COALESCE(SUM(outcome = 'ok'), 0), "
            "COALESCE(SUM(CASE WHEN outcome = 'ok' THEN bytes_sent END), 0) "
            "FROM attempts WHERE started_at >= ? GROUP BY mode",
            (since,),
        )
        return {r[0]: {"requests": r[1], "ok": r[2], "bytes": r[3]} for r in rows}

    async def oldest_waiting_content(self) -> tuple[Content, str | None] | None:
        """The backlog content (pending, allocated or uploading) recorded longest ago, with one
        present path that holds it (None if none does); None when the backlog is empty."""
        rows = await self._read(
            f"SELECT {', '.join('c.' + c for c in Content.__slots__)}, "
            "(SELECT p.path FROM paths p WHERE p.sha256 = c.sha256 AND p.state = 'present' "
            " ORDER BY p.last_seen DESC LIMIT 1) FROM contents c "
            "WHERE c.state IN ('pending', 'allocated', 'uploading') "
            "ORDER BY c.created_at LIMIT 1"
        )
        if not rows:
            return None
        path = rows[0][-1]
        return _content(rows[0][:-1]), None if path is None else _s(path)

    async def oldest_unsettled_path(self) -> PathRecord | None:
        """The path waiting to settle (state ``unsettled``) seen first, or None."""
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE state = 'unsettled' "
            "ORDER BY COALESCE(open_since, first_seen) LIMIT 1"
        )
        return _path(rows[0]) if rows else None

    async def due_count(self, now: float) -> int:
        """How many contents are due for upload at ``now`` (epoch seconds)."""
        rows = await self._read(
            "SELECT COUNT(*) FROM contents WHERE state IN ('pending', 'allocated') "
            "AND next_attempt_at <= ?",
            (now,),
        )
        return int(rows[0][0])

    async def superseded_of(self, sha256: str) -> list[tuple[str, str, float]]:
        """Remote assets once uploaded for ``sha256`` but not its asset (wrong bytes, remote
        FAILED): ``(asset_id, reason, at)``, oldest first."""
        rows = await self._read(
            "SELECT asset_id, reason, at FROM superseded_assets WHERE sha256 = ? ORDER BY at",
            (sha256,),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def get_contents(self, sha256s: Sequence[str]) -> dict[str, Content]:
        """Return the contents among ``sha256s`` that the ledger knows (one query per 900)."""
        found: dict[str, Content] = {}
        unique = list(dict.fromkeys(sha256s))
        for i in range(0, len(unique), _IN_CHUNK):
            chunk = unique[i : i + _IN_CHUNK]
            rows = await self._read(
                f"SELECT {_CONTENT_COLS} FROM contents "
                f"WHERE sha256 IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for row in rows:
                content = _content(row)
                found[content.sha256] = content
        return found

    async def any_done_asset_id(self) -> str | None:
        """Return the asset id of some content that is done (for a key probe), or None."""
        rows = await self._read(
            "SELECT asset_id FROM contents WHERE state = 'done' AND asset_id IS NOT NULL LIMIT 1"
        )
        return str(rows[0][0]) if rows else None
