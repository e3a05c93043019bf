"""A wake-up call for a loop that sleeps between rounds: the dispatcher and the poller.

:class:`Wake` is an :class:`asyncio.Event` read as "there may be work now": a round sleeps up to
a delay, or until someone calls :meth:`Wake.set`, whichever comes first.

Why not ``asyncio.wait_for(event.wait(), delay)``: on Python 3.11 ``wait_for`` returns the
inner result when the task is cancelled in the same loop turn as the event is set, swallowing
the cancellation. At shutdown that is the common case (every worker that ends sets the
dispatcher's event while the dispatcher is being cancelled), and a loop that swallowed its
cancel runs on, holding the shutdown up for ever. ``asyncio.timeout`` keeps a cancellation
from outside as a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib


class Wake:
    """An event a sleeping loop waits on with a time limit (see the module docstring)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        """Wake the sleeper now (or make its next sleep return at once)."""
        self._event.set()

    async def sleep(self, delay_s: float) -> None:
        """Wait until :meth:`set` is called or ``delay_s`` passes; a call made since the last
        sleep returned (while the round looked at the ledger, say) ends it at once. The call
        is used up either way, so the sleep after waits again.

        Returns either way; raises ``CancelledError`` when the waiting task is cancelled, even
        if the call came in the same turn of the loop.
        """
        # Not cleared before waiting: a call that came between the round's last ledger read
        # and this sleep would be lost, and the work it announced would wait a whole delay
        # (up to 30 s). An early return costs one more round at most.
        if not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._event.wait()
        self._event.clear()
