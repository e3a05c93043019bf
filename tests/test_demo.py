"""The README's demo: `syncd demo` runs the emulator and the daemon; its hints work as printed."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
from pathlib import Path

from daemon_process import query
from pipeline_support import subprocess_env, syncd_cmd, wait_for
from samples import write_media


async def test_demo_uploads_the_sample_and_a_dropped_file_and_show_finds_them(
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *syncd_cmd("demo", "--port", "0", "--http", "127.0.0.1:0"),
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    ledger = tmp_path / "demo-data" / "ledger.db"
    try:
        assert proc.stdout is not None
        banner = (await asyncio.wait_for(proc.stdout.read(2000), 30)).decode()
        assert "drop a file" in banner and "show inbox/" in banner

        def done() -> int:
            try:
                return query(ledger, "SELECT COUNT(*) FROM contents WHERE state = 'done'")[0][0]
            except sqlite3.Error:
                return 0  # not created, or not migrated yet

        await wait_for(lambda: done() >= 1, 60, what="the sample uploaded")
        write_media(tmp_path / "inbox" / "clip.mp4", size=30_000)
        await wait_for(lambda: done() >= 2, 60, what="the dropped file uploaded")
        show = await asyncio.to_thread(
            subprocess.run,
            syncd_cmd("show", "inbox/clip.mp4", "-c", "demo-data/config.yaml", "--json"),
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert show.returncode == 0, show.stderr
        doc = json.loads(show.stdout)
        assert json.dumps(doc).count("re_") >= 1 and "SUCCESS" in json.dumps(doc)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
