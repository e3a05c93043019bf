"""The dashboard's side of the local endpoint: what the running daemon shows beyond the ledger.

:class:`DaemonView` is what the daemon hands the endpoint: its event hub (``/v1/events``).
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.events import EventHub


@dataclass(frozen=True)
class DaemonView:
    """The running daemon's live state, as the endpoint may read it: ``hub`` is the event hub
    the pipeline publishes to."""

    hub: EventHub
