"""An emulator of the memories.ai MAVI v2 asset API, for tests, demos and outage rehearsals.

``create_app(settings)`` builds the aiohttp application; :class:`EmulatorServer` runs it on a
port; ``syncd emulator`` (see :mod:`syncd.emulator.main`) runs it from the command line.
"""

from __future__ import annotations

from syncd.emulator.app import STATE_KEY, create_app
from syncd.emulator.clock import Clock, FakeClock, MonotonicWallClock
from syncd.emulator.server import EmulatorServer
from syncd.emulator.settings import (
    API_BASE_PATH,
    DEMO_KEY,
    ENDPOINTS,
    THROTTLE_MSG,
    EmulatorSettings,
    uniform_rates,
)
from syncd.emulator.state import EmulatorState, RequestLogEntry
from syncd.emulator.store import AssetRecord

__all__ = [
    "API_BASE_PATH",
    "DEMO_KEY",
    "ENDPOINTS",
    "STATE_KEY",
    "THROTTLE_MSG",
    "AssetRecord",
    "Clock",
    "EmulatorServer",
    "EmulatorSettings",
    "EmulatorState",
    "FakeClock",
    "MonotonicWallClock",
    "RequestLogEntry",
    "create_app",
    "uniform_rates",
]
