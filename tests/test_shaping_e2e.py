"""Transfer shaping against the emulator: four uploads share one byte rate, and a real
``syncd run`` starts no upload in a zero-rate window until SIGHUP lifts it."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from daemon_process import DaemonProcess, query
from pipeline_support import config_data, wait_for
from samples import write_media

from syncd.emulator import EmulatorServer
from syncd.upload.client import MaviClient
from syncd.upload.shaper import ByteShaper, Timetable


class TimedShaper(ByteShaper):
    """A shaper that notes when each grant was handed out and how big it was."""

    def __init__(self, timetable: Timetable) -> None:
        super().__init__(timetable, grant_bytes=64 * 1024)
        self.grants: list[tuple[float, int]] = []

    async def take(self, wanted: int) -> int:
        n = await super().take(wanted)
        self.grants.append((time.monotonic(), n))
        return n


async def test_four_uploads_together_keep_to_one_byte_rate_within_5_percent(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    rate = 4_000_000
    files = []
    for i in range(4):
        path = tmp_path / f"clip{i}.mp4"
        write_media(path, size=2_000_000, seed=i)
        files.append(path)
    shaper = TimedShaper(Timetable(default=rate))
    async with MaviClient(emulator.base_url, emulator.key, shaper=shaper) as client:
        results = await asyncio.gather(*(client.upload(str(p), filename=p.name) for p in files))
    assert len({r.asset_id for r in results}) == 4
    sent = sum(r.bytes_sent for r in results)
    assert sent == 8_000_000 == shaper.granted_bytes
    # From the first grant to the end of the last one's share of the budget: the rate the four
    # workers together sent at (the answers that follow are the API's time, not ours).
    first = shaper.grants[0][0]
    last_at, last_n = shaper.grants[-1]
    span_s = last_at - first + last_n / rate
    assert sent / span_s <= rate * 1.05
    assert sent / span_s >= rate * 0.95


def uploads(ledger: Path) -> int:
    return int(query(ledger, "SELECT COUNT(*) FROM attempts")[0][0]) if ledger.exists() else 0


def pending(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    return int(query(ledger, "SELECT COUNT(*) FROM contents WHERE state = 'pending'")[0][0])


async def test_a_zero_window_holds_uploads_until_sighup_lifts_it(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    root = tmp_path / "media"
    root.mkdir()
    closed_all_week = {
        "schedule": [{"days": ["daily"], "from": "00:00", "to": "24:00", "max_bytes_per_s": 0}]
    }
    data = config_data(tmp_path, emulator, [root], upload=closed_all_week)
    ledger = Path(data["ledger"]["path"])
    daemon = DaemonProcess(data, tmp_path, emulator.key)
    await daemon.start()
    try:
        write_media(root / "a.mp4", size=1_000_000, seed=7)
        await wait_for(lambda: pending(ledger) == 1, 20, what="a.mp4 hashed and pending")
        await asyncio.sleep(1.0)  # far longer than an unshaped upload of 1 MB takes here
        assert uploads(ledger) == 0
        assert emulator.requests("upload") == []

        # Lift the pause; the byte rate that replaces it bounds how fast the file goes.
        daemon.write_config(
            config_data(tmp_path, emulator, [root], upload={"max_bytes_per_s": "500k"})
        )
        lifted = time.monotonic()
        daemon.signal(signal.SIGHUP)
        await wait_for(
            lambda: query(ledger, "SELECT COUNT(*) FROM contents WHERE state = 'done'")[0][0] == 1,
            30,
            what="a.mp4 done",
        )
        # 1 MB at 500 kB/s cannot take less than about two seconds.
        assert time.monotonic() - lifted >= 1.9
        assert any(
            "max_bytes_per_s and upload.schedule are in force" in m for m in daemon.messages()
        )
        assert not any("take effect at the next restart" in m for m in daemon.messages())
    finally:
        assert await daemon.stop() == 0
