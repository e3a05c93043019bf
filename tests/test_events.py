"""The event hub: fan-out, bounded queues that drop slow readers, replay, progress throttling."""

from __future__ import annotations

import asyncio

import pytest

from syncd import events
from syncd.events import EventHub


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = EventHub()
    a, _ = hub.subscribe()
    b, _ = hub.subscribe()
    hub.publish("hashed", path="/m/a.mp4", sha256="ab" * 32)
    hub.publish("upload_ended", path="/m/a.mp4")
    for sub in (a, b):
        got = [await sub.get(), await sub.get()]
        assert [(e.id, e.type) for e in got if e] == [(1, "hashed"), (2, "upload_ended")]
    assert await a.get(timeout_s=0.01) is None  # nothing more: a timeout, not an end


async def test_a_slow_reader_is_dropped_and_never_blocks_publishing() -> None:
    hub = EventHub()
    slow, _ = hub.subscribe(max_queue=3)
    fast, _ = hub.subscribe(max_queue=100)
    for n in range(10):
        hub.publish("settling", n=n)  # synchronous: returns at once whatever the readers do
    assert slow.dropped and slow.closed
    with pytest.raises(StopAsyncIteration):
        await slow.get()
    assert [(await fast.get()).data["n"] for _ in range(10)] == list(range(10))  # type: ignore[union-attr]
    assert not fast.dropped


async def test_close_ends_every_reader_that_waits() -> None:
    hub = EventHub()
    sub, _ = hub.subscribe()
    reader = asyncio.create_task(anext(sub))
    await asyncio.sleep(0)
    hub.close()
    with pytest.raises(StopAsyncIteration):
        await reader
    assert hub.publish("hashed") is None
    late, _ = hub.subscribe()
    with pytest.raises(StopAsyncIteration):
        await late.get()


async def test_a_reader_that_reconnects_gets_what_it_missed_or_is_told_it_lost_some() -> None:
    hub = EventHub(replay=5)
    for n in range(3):
        hub.publish("hashed", n=n)
    sub, complete = hub.subscribe(after_id=1)
    assert complete
    assert [(await sub.get()).id for _ in range(2)] == [2, 3]  # type: ignore[union-attr]
    for n in range(10):
        hub.publish("hashed", n=n)
    _, complete = hub.subscribe(after_id=2)  # events 3..8 are no longer kept
    assert not complete
    _, complete = hub.subscribe(after_id=999)  # ids from another run of the daemon
    assert not complete
    _, complete = hub.subscribe(after_id=hub.last_id)
    assert complete


def test_progress_is_throttled_per_file_but_first_and_last_go_out() -> None:
    mono = Clock()
    hub = EventHub(monotonic=mono, progress_interval_s=0.25)
    sub, _ = hub.subscribe()
    sent = [hub.progress("/m/a.mp4", 0, 100)]
    for n in range(1, 10):
        mono.now += 0.1
        sent.append(hub.progress("/m/a.mp4", n * 10, 100))
        sent.append(hub.progress("/m/b.mp4", n, 100))
    sent.append(hub.progress("/m/a.mp4", 100, 100))
    a = [e for e in sent if e is not None and e.data["path"] == "/m/a.mp4"]
    assert a[0].type == "upload_started" and a[-1].type == "upload_progress"
    assert a[-1].data["sent_bytes"] == 100
    assert 4 <= len(a) <= 6  # 0.9 s of reports every 0.1 s: about 4 a second, not 11
    assert hub.uploads["/m/a.mp4"]["sent_bytes"] == 100
    hub.publish("upload_ended", path="/m/a.mp4")
    assert "/m/a.mp4" not in hub.uploads and "/m/b.mp4" in hub.uploads
    assert sub.closed is False


async def test_module_hooks_reach_the_active_hub_and_its_tasks_only() -> None:
    events.publish("hashed")  # no hub: nothing happens, nothing fails
    hub = EventHub()
    sub, _ = hub.subscribe()
    with hub.activate():
        assert events.current() is hub

        async def in_a_task() -> None:
            events.publish("settling", path="/m/x.mp4")
            events.progress("/m/x.mp4", 0, 10)

        task = asyncio.create_task(in_a_task())
    await task
    events.publish("hashed")  # after the block: not this hub's
    assert events.current() is None
    got = [await sub.get(timeout_s=1), await sub.get(timeout_s=1)]
    assert [e.type for e in got if e] == ["settling", "upload_started"]
    assert await sub.get(timeout_s=0.01) is None
