"""The SQLite ledger's connections: each owned by one thread that runs whole Python functions
as transactions, grouping the writes queued together under one COMMIT (``docs/ledger.md``,
"Group commit").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from syncd.errors import LedgerError
from syncd.ledger.migrations import migrate

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(slots=True)
class _Call:
    """One function queued for a connection's thread, and where its outcome goes."""

    fn: Callable[[sqlite3.Connection], Any]
    grouped: bool  # a write transaction that may share one SQLite transaction with others
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    ok: bool = False
    value: Any = None


class _Connection:
    """One ``sqlite3`` connection owned by one thread that runs the functions queued to it.

    Each queued function is given the connection and runs on that thread as a whole, so a
    transaction costs one round trip through the event loop however many statements it has.
    The thread takes everything queued since its last turn at once: consecutive *grouped*
    calls (write transactions) run inside one ``BEGIN IMMEDIATE ... COMMIT``, each in its own
    SAVEPOINT so a function that raises rolls back only its own work (group commit); the others
    run alone, outside any transaction. Every outcome of a turn is handed back to the event
    loop in one ``call_soon_threadsafe``, after the COMMIT: a caller never sees its write
    before it is durable, and never sees a failed group's work as done.
    """

    def __init__(self, conn: sqlite3.Connection, name: str) -> None:
        self.conn = conn
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[sqlite3.Connection], _T], *, grouped: bool = False) -> _T:
        """Run ``fn(connection)`` on the connection's thread; return what it returns.

        ``grouped`` marks a write transaction: it runs inside a transaction shared with the
        other write transactions queued meanwhile and returns only after that COMMIT. Raises
        what ``fn`` raised, or the ``sqlite3.Error`` that made the shared transaction fail. A
        cancelled caller's function may still run (whole, or not at all).
        """
        if self._closed:
            raise LedgerError("internal error: the ledger is closed")
        loop = asyncio.get_running_loop()
        call = _Call(fn, grouped, loop, loop.create_future())
        self._queue.put(call)
        return await call.future  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    async def close(self) -> None:
        """Run what is queued, close the connection and end the thread."""
        if self._closed:
            return
        await self.call(lambda conn: conn.close())
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            calls = [first]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                calls.append(more)
            i = 0
            while i < len(calls):
                if calls[i].grouped:
                    j = i
                    while j < len(calls) and calls[j].grouped:
                        j += 1
                    self._run_group(calls[i:j])
                    i = j
                else:
                    self._run_alone(calls[i])
                    i += 1
            self._hand_back(calls)
            if stop:
                return

    def _run_alone(self, call: _Call) -> None:
        try:
            call.value, call.ok = call.fn(self.conn), True
        except BaseException as exc:  # handed to the caller, whatever it is
            call.value, call.ok = exc, False

    def _run_group(self, calls: list[_Call]) -> None:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for call in calls:
                conn.execute("SAVEPOINT call")
                try:
                    call.value, call.ok = call.fn(conn), True
                except BaseException as exc:
                    if not conn.in_transaction:
                        raise  # SQLite rolled the whole transaction back (disk full, I/O)
                    call.value, call.ok = exc, False
                    conn.execute("ROLLBACK TO call")
                conn.execute("RELEASE call")
            conn.execute("COMMIT")
        except BaseException as exc:
            # Nothing of this group was committed: every caller gets the error (a stall is
            # retried by each one), whatever its own function returned.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for call in calls:
                call.value, call.ok = exc, False

    def _hand_back(self, calls: list[_Call]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        for call in calls:
            by_loop.setdefault(call.loop, []).append(call)
        for loop, mine in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, mine)


def _resolve(calls: list[_Call]) -> None:
    for call in calls:
        if call.future.done():
            continue  # the caller was cancelled
        if call.ok:
            call.future.set_result(call.value)
        else:
            call.future.set_exception(call.value)


def _connect(target: str, uri: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, *, now: float) -> None:
    """Set the writer connection up (WAL, durability, foreign keys) and migrate the schema."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn, now)


def _fetch(sql: str, params: Sequence[Any]) -> Callable[[sqlite3.Connection], list[Any]]:
    def run(conn: sqlite3.Connection) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    return run


def _uri_path(path: str) -> str:
    return quote(os.path.abspath(path))
