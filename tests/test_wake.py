"""The sleeping loops' wake-up call: woken early, timed out, and never deaf to a cancel."""

from __future__ import annotations

import asyncio

import pytest

from syncd.upload.wake import Wake


async def test_a_call_ends_the_sleep_early() -> None:
    wake = Wake()
    sleeper = asyncio.create_task(wake.sleep(30))
    await asyncio.sleep(0)
    wake.set()
    await asyncio.wait_for(sleeper, 5)


async def test_the_sleep_ends_by_itself_after_its_delay() -> None:
    await asyncio.wait_for(Wake().sleep(0.05), 5)


async def test_a_call_between_sleeps_ends_the_next_sleep_and_is_used_up() -> None:
    # The dispatcher reads the ledger, then sleeps: a content recorded (and its wake-up
    # called) between the two must not wait out the sleep's whole delay.
    wake = Wake()
    wake.set()
    await asyncio.wait_for(wake.sleep(30), 5)
    sleeper = asyncio.create_task(wake.sleep(30))
    await asyncio.sleep(0.05)
    assert not sleeper.done()  # the call was used up by the sleep it ended
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper


@pytest.mark.parametrize("turns_between", [0, 1, 2, 3])
async def test_a_cancel_in_the_same_turn_as_a_call_still_cancels(turns_between: int) -> None:
    # asyncio.wait_for on Python 3.11 swallowed this cancel: the poller, woken by an upload
    # that ended as the daemon shut down, kept polling and held the shutdown up for ever.
    wake = Wake()
    sleeper = asyncio.create_task(wake.sleep(30))
    await asyncio.sleep(0)
    wake.set()
    for _ in range(turns_between):
        await asyncio.sleep(0)
    if sleeper.cancel():
        # The sleep had not returned yet: the cancel must reach the sleeper.
        with pytest.raises(asyncio.CancelledError):
            await sleeper
    else:
        assert turns_between > 0  # woken and returned before the cancel: nothing to deliver
        await sleeper
