"""An in-process event hub: the pipeline says what changed, readers (``/v1/events``) follow.

A foundation leaf, so that every stage may publish: ``events.publish("hashed", path=...,
sha256=...)`` is a one-line hook that costs a dictionary lookup when nobody listens. The hub a
daemon publishes to is found through a context variable that :meth:`EventHub.activate` sets:
the tasks a daemon starts afterwards inherit it (asyncio copies the context into each task),
so two daemons in one process (tests) never see each other's events, and code run outside a
daemon publishes nowhere. Publish from the event loop's thread only (the hub is not locked).

Publishing never waits: each subscriber has a bounded queue, and a subscriber whose queue is
full is dropped (its iterator ends with :attr:`Subscription.dropped` set) rather than slowing
the pipeline. Event ids count up from 1 per hub; the last :data:`REPLAY_EVENTS` events are kept
so that a reader that reconnects with the last id it saw misses nothing, if it was not gone
too long. Upload progress is throttled per file (:meth:`EventHub.progress`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

# What a subscriber may fall behind by before it is dropped.
SUBSCRIBER_QUEUE_MAX: Final = 1000
# Events kept for readers that reconnect (``Last-Event-ID``).
REPLAY_EVENTS: Final = 1000
# At most one progress event per file this often (the first and the last always go out).
PROGRESS_INTERVAL_S: Final = 0.25
# Event types after which a file's upload is no longer in flight.
UPLOAD_END_TYPES: Final = frozenset({"upload_ended"})

_CURRENT: ContextVar[EventHub | None] = ContextVar("syncd_event_hub", default=None)


@dataclass(frozen=True, slots=True)
class Event:
    """One published change: its id (increasing per hub), type, wall-clock time (epoch
    seconds) and fields (JSON-ready values)."""

    id: int
    type: str
    time: float
    data: dict[str, Any]


class Subscription:
    """One reader's bounded queue; iterate it with ``async for`` (ends when the hub closes,
    the subscription is closed, or it is dropped for falling behind)."""

    def __init__(self, hub: EventHub, max_queue: int) -> None:
        self._hub = hub
        self._max = max_queue
        self._queue: collections.deque[Event] = collections.deque()
        self._ready = asyncio.Event()
        self.closed = False
        self.dropped = False  # ended because the reader fell ``max_queue`` events behind

    def _offer(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._queue) >= self._max:
            self.dropped = True
            self.close()
            return
        self._queue.append(event)
        self._ready.set()

    def close(self) -> None:
        """End the subscription (idempotent); the iterator ends after what is queued."""
        if not self.closed:
            self.closed = True
            self._hub._subscribers.discard(self)
        self._ready.set()

    async def get(self, timeout_s: float | None = None) -> Event | None:
        """Return the next event; None after ``timeout_s`` without one. Raises
        :class:`StopAsyncIteration` once the subscription has ended and its queue is empty
        (a dropped subscription ends at once: what it queued is stale by then)."""
        while True:
            if self.dropped:
                raise StopAsyncIteration
            if self._queue:
                return self._queue.popleft()
            if self.closed:
                raise StopAsyncIteration
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                return None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        event = await self.get()
        assert event is not None  # noqa: S101 - no timeout, so get() returns an event
        return event


class EventHub:
    """Fans published events out to subscribers. Given the wall clock (for event times) and
    the monotonic clock (for progress throttling)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
        replay: int = REPLAY_EVENTS,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._progress_interval_s = progress_interval_s
        self._subscribers: set[Subscription] = set()
        self._recent: collections.deque[Event] = collections.deque(maxlen=replay)
        self._next_id = 1
        self._progress_at: dict[str, float] = {}
        # The last progress of every upload in flight, by path: what a new reader starts from.
        self.uploads: dict[str, dict[str, Any]] = {}
        self.closed = False

    @property
    def last_id(self) -> int:
        """The id of the last event published (0 before the first)."""
        return self._next_id - 1

    def publish(self, type_: str, **data: Any) -> Event | None:
        """Publish one event to every subscriber; returns it (None once the hub is closed)."""
        if self.closed:
            return None
        event = Event(self._next_id, type_, self._clock(), data)
        self._next_id += 1
        self._recent.append(event)
        if type_ in UPLOAD_END_TYPES and isinstance(data.get("path"), str):
            self.uploads.pop(data["path"], None)
            self._progress_at.pop(data["path"], None)
        for sub in list(self._subscribers):
            sub._offer(event)
        return event

    def progress(self, path: str, sent_bytes: int, total_bytes: int) -> Event | None:
        """An upload of ``path`` has sent ``sent_bytes`` of ``total_bytes`` (the file's bytes).

        Published as ``upload_progress`` at most every ``progress_interval_s`` per path; the
        first report of an upload (``sent_bytes`` 0) is ``upload_started`` and the last
        (everything sent) always goes out. Returns the event, or None when throttled.
        """
        now = self._monotonic()
        first = sent_bytes == 0 or path not in self.uploads
        last = sent_bytes >= total_bytes
        state = {"path": path, "sent_bytes": sent_bytes, "total_bytes": total_bytes}
        self.uploads[path] = {**state, "started_at": self.uploads.get(path, {}).get("started_at")}
        if first:
            self.uploads[path]["started_at"] = self._clock()
        if not (first or last) and now - self._progress_at.get(path, -1e18) < (
            self._progress_interval_s
        ):
            return None
        self._progress_at[path] = now
        return self.publish("upload_started" if first else "upload_progress", **state)

    def subscribe(
        self, *, after_id: int | None = None, max_queue: int = SUBSCRIBER_QUEUE_MAX
    ) -> tuple[Subscription, bool]:
        """Return a new subscription and whether it is complete: given the last event id a
        reader saw, the events after it are queued first, if the hub still has all of them
        (False: some are lost, the reader should reload its state)."""
        sub = Subscription(self, max_queue)
        complete = True
        if after_id is not None:
            missed = [e for e in self._recent if e.id > after_id]
            oldest = self._recent[0].id if self._recent else self._next_id
            complete = after_id >= oldest - 1 and after_id <= self.last_id
            for event in missed[-max_queue:] if complete else []:
                sub._offer(event)
        if self.closed:
            sub.close()
        else:
            self._subscribers.add(sub)
        return sub, complete

    def close(self) -> None:
        """End every subscription and refuse new events (shutdown). Idempotent."""
        self.closed = True
        for sub in list(self._subscribers):
            sub.close()

    @contextlib.contextmanager
    def activate(self) -> Iterator[EventHub]:
        """Make this the hub that :func:`publish` and :func:`progress` reach, in this context
        and in the tasks created in it, until the block ends."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)


def current() -> EventHub | None:
    """The hub of this context (see :meth:`EventHub.activate`), or None."""
    return _CURRENT.get()


def publish(type_: str, **data: Any) -> None:
    """Publish to this context's hub, if there is one (the pipeline's one-line hook)."""
    hub = _CURRENT.get()
    if hub is not None:
        hub.publish(type_, **data)


def progress(path: str, sent_bytes: int, total_bytes: int) -> None:
    """Report upload progress to this context's hub, if any (see :meth:`EventHub.progress`)."""
    hub = _CURRENT.get()
    if hub is not None:
        hub.progress(path, sent_bytes, total_bytes)
