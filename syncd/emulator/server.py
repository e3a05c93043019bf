"""Run the emulator on a TCP port: for the CLI, the test fixtures and the demo."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

from syncd.emulator.app import CONTROL_PREFIX, STATE_KEY, create_app
from syncd.emulator.clock import Clock
from syncd.emulator.settings import API_BASE_PATH, EmulatorSettings
from syncd.emulator.state import EmulatorState, RequestLogEntry
from syncd.emulator.store import AssetRecord

# A hung request wakes up at shutdown; this only bounds handlers stuck elsewhere.
SHUTDOWN_TIMEOUT_S = 5.0


class EmulatorServer:
    """The emulator app bound to ``host:port`` (port 0: any free port).

    Given the settings, an optional clock, the host and the port. Use ``async with`` (or
    :meth:`start` and :meth:`close`). After start, ``port``, ``root_url``, ``base_url``,
    ``key`` and ``state`` describe the running emulator.
    """

    def __init__(
        self,
        settings: EmulatorSettings | None = None,
        *,
        clock: Clock | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.app = create_app(settings, clock=clock)
        self.host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def state(self) -> EmulatorState:
        """The live state of the running emulator."""
        return self.app[STATE_KEY]

    @property
    def settings(self) -> EmulatorSettings:
        """The settings in force now."""
        return self.state.settings

    @property
    def key(self) -> str:
        """An API key the emulator accepts (the first one configured)."""
        return next(iter(self.settings.keys))

    @property
    def root_url(self) -> str:
        """``http://HOST:PORT`` of the running emulator."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL: ``http://HOST:PORT/serve/api/v2``."""
        return self.root_url + API_BASE_PATH

    @property
    def control_url(self) -> str:
        """The inspection/control base URL: ``http://HOST:PORT/_emulator``."""
        return self.root_url + CONTROL_PREFIX

    async def start(self) -> None:
        """Open the data directory and bind; raises OSError (port in use, bad data dir)."""
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S, handle_signals=False
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop accepting, drop hung requests, close the data directory; safe to call twice."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # Shortcuts for tests and demos: the same effects as the control endpoints, without HTTP.

    def update_settings(self, **changes: Any) -> EmulatorSettings:
        """Change settings while running (see ``EmulatorState.update_settings``)."""
        return self.state.update_settings(**changes)

    def add_faults(self, *specs: Mapping[str, Any]) -> None:
        """Apply control objects as ``POST /_emulator/faults`` would; raises ValueError."""
        for spec in specs:
            self.state.faults.copy().apply(spec, self.state.clock())
        for spec in specs:
            self.state.faults.apply(spec, self.state.clock())

    def clear_faults(self) -> None:
        """Remove every scripted fault, as ``DELETE /_emulator/faults`` would."""
        self.state.faults.clear()

    def requests(self, endpoint: str | None = None) -> list[RequestLogEntry]:
        """Return the request log, oldest first, optionally only one endpoint's entries."""
        return [e for e in self.state.requests if endpoint is None or e.endpoint == endpoint]

    def assets(self) -> list[AssetRecord]:
        """Return every live asset record, oldest first."""
        return list(self.state.assets.values())

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
