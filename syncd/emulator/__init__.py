"""An emulator of the memories.ai MAVI v2 asset API, for tests, demos and outage rehearsals.

``create_app(settings)`` builds the aiohttp application; :class:`EmulatorServer` runs it on a
port; ``syncd emulator`` (see :mod:`syncd.emulator.main`) runs it from the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

# Each name and the module that defines it, imported on first use: ``syncd run`` imports
# this package for the ``emulator`` command's flags (``syncd.emulator.main``), and the
# application with aiohttp's server (~15 ms and ~2 MB) is not needed for that.
_MODULES = {
    "STATE_KEY": "app",
    "create_app": "app",
    "Clock": "clock",
    "FakeClock": "clock",
    "MonotonicWallClock": "clock",
    "EmulatorServer": "server",
    "API_BASE_PATH": "settings",
    "DEMO_KEY": "settings",
    "ENDPOINTS": "settings",
    "THROTTLE_MSG": "settings",
    "EmulatorSettings": "settings",
    "uniform_rates": "settings",
    "EmulatorState": "state",
    "RequestLogEntry": "state",
    "AssetRecord": "store",
}


def __getattr__(name: str) -> object:
    """Given a public name of the package, import its module and return it."""
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
