"""The private PostgreSQL server of the test suite: started for the session, one database per
test, never the machine's server."""

from __future__ import annotations

import asyncpg
from pg_support import PgServer


async def test_each_test_gets_its_own_empty_database(postgres: PgServer, pg_url: str) -> None:
    assert postgres.port != 5432
    conn = await asyncpg.connect(pg_url)
    try:
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        await conn.execute("CREATE TABLE mine (x int)")
        user = await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()
    assert tables == 0
    assert user == "syncd"


async def test_a_second_test_does_not_see_the_first_ones_tables(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    assert tables == 0
