"""``GET /v1/events``: the daemon's event hub as Server-Sent Events.

One SSE event per state change the pipeline publishes (:mod:`syncd.events`): ``id:`` is the
hub's event id, ``event:`` its type, ``data:`` one line of JSON (paths as ``path`` text plus
``path_bytes_hex`` for names that are not UTF-8, as everywhere in the API). The stream starts
with ``retry:`` and a ``hello`` event (``last_id``, and ``complete``: false when the reader
asked to resume from a ``Last-Event-ID`` the hub no longer holds, so it must reload its view);
a comment line (``: heartbeat``) goes out after ``heartbeat_s`` without events, so proxies
and readers see a live connection. A reader that falls :data:`~syncd.events.SUBSCRIBER_QUEUE_MAX`
events behind gets a last ``dropped`` event and the end of the stream (it may reconnect with
``Last-Event-ID``); it never slows the pipeline. Shutdown ends every stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web

from syncd.events import Event, EventHub, Subscription
from syncd.ops.report import iso, path_fields

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
RETRY_MS = 2000
# How long shutdown lets streams end on their own before it cancels them (a reader that does
# not read leaves its handler stuck in a write).
CLOSE_GRACE_S = 1.0


class _Streams:
    def __init__(self, hub: EventHub | None, heartbeat_s: float) -> None:
        self.hub = hub
        self.heartbeat_s = heartbeat_s
        # Each open stream: the task running its handler, and an event set once it ended.
        self.open: dict[Subscription, tuple[asyncio.Task[Any], asyncio.Event]] = {}


_STREAMS = web.AppKey("syncd_streams", _Streams)


def event_json(event: Event) -> dict[str, Any]:
    """Given a hub event, return its JSON document: ``id``, ``type``, ``time`` (ISO-8601) and
    its fields, every path field (``path``) as text plus ``path_bytes_hex`` when needed."""
    doc: dict[str, Any] = {"id": event.id, "type": event.type, "time": iso(event.time)}
    for key, value in event.data.items():
        if key == "path" and isinstance(value, str):
            doc.update(path_fields(value))
        else:
            doc[key] = value
    return doc


def sse_frame(event_type: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One SSE frame. ``json.dumps`` escapes every control character, so ``data`` is one line
    whatever a file name holds, and no name can start a frame of its own."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event_type}\ndata: {json.dumps(data)}\n\n".encode()


async def _events(request: web.Request) -> web.StreamResponse:
    streams = request.app[_STREAMS]
    hub = streams.hub
    if hub is None:
        return web.json_response(
            {"error": "no event stream: the daemon is not running"}, status=503
        )
    headers = {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # nginx: pass each event on at once
    }
    if request.method == "HEAD":
        return web.Response(headers=headers)
    last = request.headers.get("Last-Event-ID", request.rel_url.query.get("last_event_id", ""))
    after_id = int(last) if last.isdigit() else None
    sub, complete = hub.subscribe(after_id=after_id)
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - aiohttp runs each handler in a task
    ended = asyncio.Event()
    streams.open[sub] = (task, ended)
    resp = web.StreamResponse(headers=headers)
    try:
        await resp.prepare(request)
        hello = {"last_id": hub.last_id, "complete": complete}
        await resp.write(f"retry: {RETRY_MS}\n\n".encode() + sse_frame("hello", hello))
        while True:
            try:
                event = await sub.get(timeout_s=streams.heartbeat_s)
            except StopAsyncIteration:
                break
            if event is None:
                await resp.write(b": heartbeat\n\n")
            else:
                await resp.write(sse_frame(event.type, event_json(event), event.id))
        if sub.dropped:
            log.info("an event reader fell behind and was dropped")
            await resp.write(sse_frame("dropped", {"last_id": hub.last_id}))
    except ConnectionError:
        pass  # the reader went away
    finally:
        sub.close()
        streams.open.pop(sub, None)
        ended.set()
    return resp


async def _close_streams(app: web.Application) -> None:
    """On shutdown: end every open stream, cancelling those stuck writing to a slow reader."""
    streams = app[_STREAMS]
    still_open = list(streams.open.items())
    for sub, _ in still_open:
        sub.close()
    waits = [asyncio.create_task(ended.wait()) for _, (_, ended) in still_open]
    if not waits:
        return
    await asyncio.wait(waits, timeout=CLOSE_GRACE_S)
    for (_, (task, ended)), wait in zip(still_open, waits, strict=True):
        if not ended.is_set():
            task.cancel()  # stuck in a write to a reader that does not read
        wait.cancel()
    with contextlib.suppress(Exception):
        await asyncio.gather(*waits, return_exceptions=True)


def add_routes(app: web.Application, hub: EventHub | None, heartbeat_s: float) -> None:
    """Serve ``/v1/events`` from ``hub`` on ``app`` (503 when there is none), heartbeats every
    ``heartbeat_s``, and end the streams when the app shuts down."""
    app[_STREAMS] = _Streams(hub, heartbeat_s)
    app.router.add_get("/v1/events", _events)
    app.on_shutdown.append(_close_streams)
