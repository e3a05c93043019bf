"""Transfer shaping: byte rates as text, the weekly timetable, one budget for all workers."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from syncd.config import parse_config
from syncd.units import parse_byte_rate, parse_clock_time, parse_days
from syncd.upload.shaper import ByteShaper, Timetable, Window, timetable_from

MB = 10**6


class FakeClock:
    """Monotonic seconds from 0, a wall clock that starts at a given local time, and a sleep
    that moves time on to the moment the sleeper asked for."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = 0.0
        self.epoch0 = start.timestamp()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.epoch0 + self.now

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        self.now = max(self.now, self.now + delay_s)
        await asyncio.sleep(0)


def shaper_on(clock: FakeClock, table: Timetable, grant_bytes: int = 64 * 1024) -> ByteShaper:
    return ByteShaper(
        table,
        grant_bytes=grant_bytes,
        monotonic=clock.monotonic,
        wall=clock.wall,
        sleep=clock.sleep,
    )


# A Wednesday, so "weekdays" and "mon-fri" hold.
WEDNESDAY_NOON = dt.datetime(2026, 12, 2, 12, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50M", 50 * MB),
        ("500k", 500_000),
        ("1.5G", 1_500_000_000),
        ("8MiB", 8 * 1024 * 1024),
        ("20MB/s", 20 * MB),
        ("64 KiB", 64 * 1024),
        ("1000", 1000),
        (0, 0),
        (12345, 12345),
    ],
)
def test_byte_rates_are_read_as_decimal_or_binary_units(text: int | str, expected: int) -> None:
    assert parse_byte_rate(text) == expected


@pytest.mark.parametrize("bad", ["fast", "50X", "-5M", "1.5", "Ki", "0.0001k", "5 M B s", "1e6"])
def test_a_byte_rate_that_is_not_one_is_refused_with_a_one_line_message(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_byte_rate(bad)
    assert "\n" not in str(info.value)


def test_negative_and_boolean_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_byte_rate(-1)
    with pytest.raises(ValueError):
        parse_byte_rate(True)


def test_day_names_ranges_and_aliases_name_weekdays() -> None:
    assert parse_days(["mon-fri"]) == frozenset(range(5))
    assert parse_days(["weekend"]) == frozenset({5, 6})
    assert parse_days(["fri-mon"]) == frozenset({4, 5, 6, 0})
    assert parse_days(["Tuesday", "thu"]) == frozenset({1, 3})
    assert parse_days(["daily"]) == frozenset(range(7))
    with pytest.raises(ValueError, match="day names"):
        parse_days(["someday"])


def test_clock_times_run_from_midnight_to_24_00() -> None:
    assert parse_clock_time("00:00") == 0
    assert parse_clock_time("7:30") == 450
    assert parse_clock_time("24:00") == 1440
    for bad in ("24:01", "12:60", "noon", "1230"):
        with pytest.raises(ValueError, match="HH:MM"):
            parse_clock_time(bad)


def test_the_first_window_that_covers_a_moment_sets_its_limit() -> None:
    table = Timetable(
        default=50 * MB,
        windows=(
            Window(frozenset(range(5)), 9 * 60, 17 * 60, 0),
            Window(frozenset(range(7)), 8 * 60, 20 * 60, 5 * MB),
        ),
    )
    assert table.rate_at(WEDNESDAY_NOON) == 0
    assert table.rate_at(WEDNESDAY_NOON.replace(hour=8)) == 5 * MB
    assert table.rate_at(WEDNESDAY_NOON.replace(hour=17)) == 5 * MB
    assert table.rate_at(WEDNESDAY_NOON.replace(hour=21)) == 50 * MB
    saturday_noon = WEDNESDAY_NOON + dt.timedelta(days=3)
    assert table.rate_at(saturday_noon) == 5 * MB


def test_a_window_past_midnight_belongs_to_the_day_it_starts() -> None:
    # Friday 22:00 to 06:00 only.
    table = Timetable(default=None, windows=(Window(frozenset({4}), 22 * 60, 6 * 60, MB),))
    friday = WEDNESDAY_NOON + dt.timedelta(days=2)
    assert table.rate_at(friday.replace(hour=23)) == MB
    assert table.rate_at((friday + dt.timedelta(days=1)).replace(hour=5, minute=59)) == MB
    assert table.rate_at((friday + dt.timedelta(days=1)).replace(hour=6)) is None
    assert table.rate_at(friday.replace(hour=5)) is None  # Thursday night is not in it


def test_the_next_change_is_the_first_edge_where_the_limit_differs() -> None:
    table = Timetable(
        default=None,
        windows=(
            Window(frozenset(range(5)), 9 * 60, 12 * 60, 0),
            Window(frozenset(range(5)), 12 * 60, 17 * 60, 0),
        ),
    )
    # 09:00-12:00 and 12:00-17:00 both pause: noon is no change.
    assert table.next_change(WEDNESDAY_NOON.replace(hour=10)) == WEDNESDAY_NOON.replace(hour=17)
    assert Timetable(default=MB).next_change(WEDNESDAY_NOON) is None


async def test_four_workers_share_one_byte_rate() -> None:
    clock = FakeClock(WEDNESDAY_NOON)
    shaper = shaper_on(clock, Timetable(default=20 * MB))
    sent: list[tuple[float, int]] = []

    async def worker(total: int) -> None:
        left = total
        while left:
            n = await shaper.take(left)
            sent.append((clock.now, n))
            left -= n

    await asyncio.gather(*(worker(5 * MB) for _ in range(4)))
    assert sum(n for _, n in sent) == 20 * MB
    # 20 MB at 20 MB/s: the last grant starts less than one grant's time before 1 s.
    assert 1.0 - 64 * 1024 / (20 * MB) <= clock.now < 1.0
    # Over every quarter second the four together stay within 5 % of the rate.
    for quarter in range(4):
        got = sum(n for t, n in sent if quarter * 0.25 <= t < (quarter + 1) * 0.25)
        assert got == pytest.approx(5 * MB, rel=0.05)


async def test_idle_time_leaves_no_credit_for_a_burst() -> None:
    clock = FakeClock(WEDNESDAY_NOON)
    shaper = shaper_on(clock, Timetable(default=MB), grant_bytes=10_000)
    await shaper.take(10_000)
    clock.now += 60.0  # a minute with nothing to send
    start = clock.now
    grants: list[tuple[float, int]] = []
    while clock.now - start < 0.2:
        n = await shaper.take(10**9)
        grants.append((clock.now - start, n))
    got = sum(n for t, n in grants if t < 0.1)
    # 0.1 s at 1 MB/s is 100 kB; one grant more at most, never a minute's worth.
    assert got <= 100_000 + 10_000


async def test_no_request_burst_when_a_paused_window_opens() -> None:
    clock = FakeClock(WEDNESDAY_NOON.replace(hour=8, minute=59, second=59))
    table = Timetable(default=MB, windows=(Window(frozenset(range(7)), 0, 9 * 60, 0),))
    shaper = shaper_on(clock, table, grant_bytes=10_000)
    grants: list[tuple[float, int]] = []

    async def worker() -> None:
        await shaper.wait_open()
        for _ in range(20):
            n = await shaper.take(10_000)
            grants.append((clock.now, n))

    await asyncio.gather(*(worker() for _ in range(4)))
    opened = 1.0  # 09:00 is one second after the start
    assert min(t for t, _ in grants) >= opened
    first_tenth = sum(n for t, n in grants if t < opened + 0.1)
    assert first_tenth <= 100_000 + 10_000


async def test_a_body_under_way_when_a_pause_begins_finishes_at_the_rate_before() -> None:
    clock = FakeClock(WEDNESDAY_NOON.replace(hour=8, minute=59, second=59))
    table = Timetable(
        default=None,
        windows=(
            Window(frozenset(range(7)), 0, 9 * 60, MB),
            Window(frozenset(range(7)), 9 * 60, 10 * 60, 0),
        ),
    )
    shaper = shaper_on(clock, table, grant_bytes=10_000)
    sent = 0
    while sent < 2 * MB:  # two seconds at 1 MB/s: the pause begins half way
        sent += await shaper.take(2 * MB - sent)
    assert 1.9 < clock.now < 2.0
    assert shaper.paused_for_s() is not None  # a new upload would wait


async def test_a_new_timetable_wakes_an_upload_held_by_a_pause() -> None:
    shaper = ByteShaper(Timetable(default=0))
    waiter = asyncio.create_task(shaper.wait_open())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    shaper.update(Timetable(default=None))
    await asyncio.wait_for(waiter, timeout=5)
    assert await shaper.take(1000) == 1000


async def test_without_a_limit_a_grant_is_immediate_and_at_most_one_grant() -> None:
    clock = FakeClock(WEDNESDAY_NOON)
    shaper = shaper_on(clock, Timetable(default=None), grant_bytes=4096)
    assert await shaper.take(10**9) == 4096
    assert await shaper.take(100) == 100
    assert clock.sleeps == []
    with pytest.raises(ValueError):
        await shaper.take(0)


async def test_a_slow_limit_moves_in_grants_of_a_twentieth_of_a_second() -> None:
    clock = FakeClock(WEDNESDAY_NOON)
    shaper = shaper_on(clock, Timetable(default=1000))
    assert await shaper.take(10**6) == 50


def test_the_configured_timetable_is_the_one_the_shaper_follows() -> None:
    cfg = parse_config(
        {
            "upload": {
                "max_bytes_per_s": "50M",
                "schedule": [
                    {"days": ["weekdays"], "from": "9:00", "to": "17:00", "max_bytes_per_s": 0}
                ],
            }
        },
        "test",
    )
    table = timetable_from(cfg.upload)
    assert table.rate_at(WEDNESDAY_NOON) == 0
    assert table.rate_at(WEDNESDAY_NOON.replace(hour=18)) == 50 * MB
    assert timetable_from(parse_config({}, "test").upload) == Timetable(default=None)
