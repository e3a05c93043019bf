"""Shared fixtures: the MAVI v2 emulator, running over real HTTP on 127.0.0.1, port 0.

``emulator`` is a started :class:`~syncd.emulator.EmulatorServer` with rate limits off and
short processing delays; it offers ``base_url``, ``root_url``, ``control_url``, ``key``,
``state`` and shortcuts (``update_settings``, ``add_faults``, ``clear_faults``, ``requests``,
``assets``). ``make_emulator(**settings)`` starts more, with any settings (and ``clock=``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from pg_support import PgServer, pg_server
from redis_support import RedisServer, redis_server

from syncd.emulator import EmulatorServer, EmulatorSettings, uniform_rates
from syncd.emulator.clock import Clock

# Fixture defaults differ from the emulator's own: no rate limits (most tests are not about
# them) and quick processing, but still a real WAITING -> UPLOADING -> SUCCESS walk.
EMULATOR_TEST_DEFAULTS: dict[str, Any] = {
    "rates": uniform_rates(0),
    "waiting_s": 0.05,
    "uploading_s": 0.05,
    "seed": 20240101,
}

MakeEmulator = Callable[..., Awaitable[EmulatorServer]]


@pytest.fixture
async def make_emulator() -> AsyncIterator[MakeEmulator]:
    """Factory: ``await make_emulator(clock=None, **settings)`` returns a started emulator.

    Settings not given take ``EMULATOR_TEST_DEFAULTS``, then the emulator's defaults. Every
    emulator started is closed at teardown (closing one earlier, e.g. to restart it on the
    same ``data_dir``, is fine).
    """
    servers: list[EmulatorServer] = []

    async def make(*, clock: Clock | None = None, **settings: Any) -> EmulatorServer:
        server = EmulatorServer(
            EmulatorSettings(**{**EMULATOR_TEST_DEFAULTS, **settings}), clock=clock
        )
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def emulator(make_emulator: MakeEmulator) -> EmulatorServer:
    """A running emulator with the test defaults (demo key, no rate limits)."""
    return await make_emulator()


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session, closed at teardown."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A private PostgreSQL server for the whole session (see ``tests/pg_support.py``)."""
    with pg_server() as server:
        yield server


@pytest.fixture
async def pg_url(postgres: PgServer) -> str:
    """The URL of a fresh, empty database on the session's private PostgreSQL server."""
    name = postgres.new_database_name()
    conn = await asyncpg.connect(postgres.url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return postgres.url(name)


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    """A private Redis server for the whole session (see ``tests/redis_support.py``)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """The URL of the session's private Redis server, emptied for this test."""
    redis_session.flush()
    return redis_session.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private Redis server of this test's own, which the test may stop and start."""
    with redis_server() as server:
        yield server
