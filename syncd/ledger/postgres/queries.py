"""The fleet ledger's operator queries: what ``syncd show/ls/status/retry/forget`` and the
local HTTP endpoint read (and ``requeue``), part of its
:class:`~syncd.ledger.store.OperatorLedger` facet: the fleet's contents and attempts, this
host's paths first.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from syncd.ledger.postgres.base import (
    _ATTEMPT_COLS,
    _C_CONTENT_COLS,
    _CONTENT_COLS,
    _N_PATH,
    _P_PATH_COLS,
    _PATH_COLS,
    PgBase,
    _attempt,
    _b,
    _content,
    _path,
    _pipeline_read,
    _retry_unreachable,
    _s,
)
from syncd.ledger.records import (
    CONTENT_STATES,
    PATH_STATES,
    Attempt,
    Content,
    ContentState,
    PathRecord,
)


class PgQueries(PgBase):
    """The operator's queries over the shared ledger."""

    @_pipeline_read
    async def get_content(self, sha256: str) -> Content | None:
        """Return the content with this exact hash, or None."""
        rows = await self._read(f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = $1", sha256)
        return _content(rows[0]) if rows else None

    async def find_contents(self, key: str) -> list[Content]:
        """Return contents whose sha256 starts with ``key`` (4+ hex digits) or whose current or
        superseded asset id is ``key``."""
        key = key.strip()
        rows = await self._read(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE asset_id = $1 OR sha256 IN "
            "(SELECT sha256 FROM superseded_assets WHERE asset_id = $1)",
            key,
        )
        if not rows and len(key) >= 4 and all(ch in "0123456789abcdefABCDEF" for ch in key):
            rows = await self._read(
                f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 >= $1 AND sha256 < $2 "
                "ORDER BY sha256 LIMIT 20",
                key.lower(),
                key.lower() + "g",
            )
        return [_content(r) for r in rows]

    async def paths_of(self, sha256: str) -> list[tuple[str, PathRecord | None]]:
        """Every path, on any host, that ever held ``sha256``, with its current record."""
        rows = await self._read(
            f"SELECT h.path, {_P_PATH_COLS} FROM holdings h LEFT JOIN paths p "
            "ON p.host = h.host AND p.path = h.path WHERE h.sha256 = $1 "
            "ORDER BY h.first_seen, h.host",
            sha256,
        )
        return [(_s(r[0]), None if r[1] is None else _path(list(r)[1:])) for r in rows]

    async def hosts_of(self, sha256: str) -> list[tuple[str, str]]:
        """``(host, path)`` of every path that ever held ``sha256``, oldest first."""
        rows = await self._read(
            "SELECT host, path FROM holdings WHERE sha256 = $1 ORDER BY first_seen, host", sha256
        )
        return [(r[0], _s(r[1])) for r in rows]

    async def attempts_of(self, sha256: str) -> list[Attempt]:
        """Every upload attempt of ``sha256`` by any host, oldest first."""
        rows = await self._read(
            f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE sha256 = $1 ORDER BY id", sha256
        )
        return [_attempt(r) for r in rows]

    @_retry_unreachable
    async def requeue(self, *, states: Sequence[ContentState], sha256s: Sequence[str] = ()) -> int:
        """Operator retry: contents in ``states`` (all, or only ``sha256s``) become due now.
        Attempts and throttle counts restart from zero. Returns how many were re-queued."""
        now = self._clock()
        sql = (
            "UPDATE contents SET state = CASE WHEN asset_id IS NOT NULL AND signed_url IS NOT "
            "NULL THEN 'allocated' ELSE 'pending' END, attempts = 0, throttle_count = 0, "
            "next_attempt_at = $1, updated_at = $1, claimed_by = NULL, lease_until = NULL "
            "WHERE state = ANY($2::text[])"
        )
        args: list[Any] = [now, list(states)]
        if sha256s:
            sql += " AND sha256 = ANY($3::text[])"
            args.append(list(sha256s))
        return await self._write(sql, *args)

    async def counts(self) -> dict[str, dict[str, int]]:
        """Counts per content state and per path state (every host), plus backlog bytes."""
        contents: dict[str, int] = {s: 0 for s in CONTENT_STATES}
        for state, n in await self._read("SELECT state, COUNT(*) FROM contents GROUP BY state"):
            contents[state] = n
        paths: dict[str, int] = {s: 0 for s in PATH_STATES}
        for state, n in await self._read("SELECT state, COUNT(*) FROM paths GROUP BY state"):
            paths[state] = n
        rows = await self._read(
            "SELECT COALESCE(SUM(size), 0)::bigint FROM contents "
            "WHERE state IN ('pending', 'allocated', 'uploading')"
        )
        return {"contents": contents, "paths": paths, "backlog": {"bytes": int(rows[0][0])}}

    async def unfinished_count(self) -> int:
        """Contents a present path of this host holds that are still on their way to a final
        state (another host may be the one uploading them); parked ones are not counted."""
        rows = await self._read(
            "SELECT COUNT(*) FROM contents c WHERE c.state IN "
            "('pending', 'allocated', 'uploading', 'uploaded') "
            "AND NOT (c.state IN ('pending', 'allocated') AND c.last_error LIKE "
            "'no present path%') AND EXISTS (SELECT 1 FROM paths p WHERE p.sha256 = c.sha256 "
            "AND p.host = $1 AND p.state = 'present')",
            self.host,
        )
        return int(rows[0][0])

    async def possible_duplicates(self) -> int:
        """Total possible remote duplicates counted, fleet-wide."""
        rows = await self._read(
            "SELECT COALESCE(SUM(possible_duplicates), 0)::bigint FROM contents"
        )
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
        """Stream every known path of every host (or of ``host`` only) with its content, in
        path order, with the filters of the SQLite ledger's ``iter_assets``. Raises
        :class:`ValueError` for an unknown state."""
        unknown = [s for s in states if s not in CONTENT_STATES and s not in PATH_STATES]
        if unknown:
            raise ValueError(f"unknown state {unknown[0]!r}")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        content_states = [s for s in states if s in CONTENT_STATES]
        path_states = [s for s in states if s in PATH_STATES]
        either: list[str] = []
        if content_states:
            either.append(f"c.state = ANY({arg(content_states)}::text[])")
        if path_states:
            either.append(f"p.state = ANY({arg(path_states)}::text[])")
        if either:
            where.append("(" + " OR ".join(either) + ")")
        if root is not None:
            prefix = _b(posixpath.normpath(root)).rstrip(b"/") + b"/"
            where.append(f"p.path >= {arg(prefix)} AND p.path < {arg(prefix[:-1] + b'0')}")
        if since is not None:
            where.append(
                "GREATEST(p.first_seen, COALESCE(c.updated_at, 0), COALESCE(p.gone_at, 0)) "
                f">= {arg(since)}"
            )
        if host is not None:
            where.append(f"p.host = {arg(host)}")
        fixed = len(args)
        base = (
            f"SELECT {_P_PATH_COLS}, {_C_CONTENT_COLS}, p.host FROM paths p "
            "LEFT JOIN contents c ON c.sha256 = p.sha256 WHERE "
        )
        after: tuple[bytes, str] | None = None
        while True:
            page_args = list(args)
            keyset: list[str] = []
            if after is not None:
                keyset = [f"(p.path, p.host) > (${fixed + 1}, ${fixed + 2})"]
                page_args.extend(after)
            page_args.append(page_size)
            sql = (
                base
                + " AND ".join([*keyset, *where] or ["TRUE"])
                + f" ORDER BY p.path, p.host LIMIT ${len(page_args)}"
            )
            page = await self._read(sql, *page_args)
            if on_page is not None:
                on_page(len(page))
            for row in page:
                values = list(row)
                content = None if values[_N_PATH] is None else _content(values[_N_PATH:-1])
                yield dataclasses.replace(_path(values[:_N_PATH]), host=values[-1]), content
            if len(page) < page_size:
                return
            after = (bytes(page[-1][0]), str(page[-1][-1]))

    async def upload_activity(self, since: float) -> dict[str, dict[str, int]]:
        """Upload attempts of every host started at or after ``since``, per upload mode:
        ``{mode: {"requests": n, "ok": n, "bytes": n}}``."""
        rows = await self._read(
            "SELECT mode, COUNT(*), COUNT(*) FILTER (WHERE outcome = 'ok'), "
            "COALESCE(SUM(bytes_sent) FILTER (WHERE outcome = 'ok'), 0)::bigint "
            "FROM attempts WHERE started_at >= $1 GROUP BY mode",
            since,
        )
        return {r[0]: {"requests": r[1], "ok": r[2], "bytes": r[3]} for r in rows}

    async def oldest_waiting_content(self) -> tuple[Content, str | None] | None:
        """The backlog content recorded longest ago, with one present path holding it (this
        host's first), or None when the backlog is empty."""
        rows = await self._read(
            f"SELECT {_C_CONTENT_COLS}, (SELECT p.path FROM paths p WHERE p.sha256 = c.sha256 "
            "AND p.state = 'present' ORDER BY (p.host = $1) DESC, p.last_seen DESC LIMIT 1) "
            "FROM contents c WHERE c.state IN ('pending', 'allocated', 'uploading') "
            "ORDER BY c.created_at LIMIT 1",
            self.host,
        )
        if not rows:
            return None
        values = list(rows[0])
        path = values[-1]
        return _content(values[:-1]), None if path is None else _s(path)

    async def oldest_unsettled_path(self) -> PathRecord | None:
        """This host's path waiting to settle seen first, or None."""
        rows = await self._read(
            f"SELECT {_PATH_COLS} FROM paths WHERE host = $1 AND state = 'unsettled' "
            "ORDER BY COALESCE(open_since, first_seen) LIMIT 1",
            self.host,
        )
        return _path(rows[0]) if rows else None

    async def due_count(self, now: float) -> int:
        """How many contents (fleet-wide) are due for upload at ``now``."""
        rows = await self._read(
            "SELECT COUNT(*) FROM contents WHERE state IN ('pending', 'allocated') "
            "AND next_attempt_at <= $1",
            now,
        )
        return int(rows[0][0])

    async def superseded_of(self, sha256: str) -> list[tuple[str, str, float]]:
        """Remote assets once uploaded for ``sha256`` but not its asset, oldest first."""
        rows = await self._read(
            "SELECT asset_id, reason, at FROM superseded_assets WHERE sha256 = $1 "
            "ORDER BY at, asset_id",
            sha256,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    @_pipeline_read
    async def get_contents(self, sha256s: Sequence[str]) -> dict[str, Content]:
        """Return the contents among ``sha256s`` that the ledger knows."""
        rows = await self._read(
            f"SELECT {_CONTENT_COLS} FROM contents WHERE sha256 = ANY($1::text[])",
            list(dict.fromkeys(sha256s)),
        )
        return {c.sha256: c for c in map(_content, rows)}

    async def any_done_asset_id(self) -> str | None:
        """Return the asset id of some content that is done (for a key probe), or None."""
        rows = await self._read(
            "SELECT asset_id FROM contents WHERE state = 'done' AND asset_id IS NOT NULL LIMIT 1"
        )
        return str(rows[0][0]) if rows else None
