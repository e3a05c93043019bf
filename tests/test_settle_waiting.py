"""What the settler says about the files it holds back (the dashboard's settling list)."""

from __future__ import annotations

import time

from syncd.fingerprint import Fingerprint
from syncd.ingest.settle import Settled, Settler
from syncd.ingest.watcher import FsEvent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _settled(_: Settled) -> None:
    pass


async def _unsettled(_path: str, _root: str, _reason: str) -> None:
    pass


async def test_each_waiting_file_says_why_longest_waiting_first() -> None:
    clock = Clock()
    settler = Settler(
        quiet_s=3, max_wait_s=600, on_settled=_settled, on_unsettled=_unsettled, clock=clock
    )
    settler.event(FsEvent("created", "/m/a.mp4", "/m"))
    clock.now += 2
    settler.event(FsEvent("created", "/m/b.mp4", "/m"))
    settler.event(FsEvent("opened", "/m/b.mp4", "/m"))
    settler.event(FsEvent("modified", "/m/b.mp4", "/m"))
    old = Fingerprint(1, 3, 10, int((time.time() - 3600) * 1e9), 1)
    clock.now += 1
    await settler.offer("/m/c.mp4", "/m", old)
    total, page = settler.waiting(10)
    assert total == 3
    assert [w.path for w in page] == ["/m/a.mp4", "/m/b.mp4", "/m/c.mp4"]
    a, b, c = page
    assert a.why == "changed 3 s ago; complete after 3 s without changes"
    assert (b.writing, b.why) == ("yes", "open for writing; waiting for it to be closed")
    assert c.why == "found by a scan; checking that it is not changing"
    assert a.since < b.since < c.since <= time.time()
    total, rest = settler.waiting(1, offset=2)
    assert (total, [(w.path, w.why) for w in rest]) == (3, [(c.path, c.why)])
    settler.event(FsEvent("closed_write", "/m/b.mp4", "/m"))
    assert settler.waiting(1, offset=1)[1][0].writing == "no"
