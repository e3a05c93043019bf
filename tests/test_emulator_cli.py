"""``syncd emulator`` as a process: flags, the start line, the port file, signals, errors."""

from __future__ import annotations

import argparse
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from samples import media_bytes
from test_emulator_support import call, file_form, wait_until

from syncd.emulator import DEMO_KEY
from syncd.emulator.main import add_arguments, settings_from_args
from syncd.errors import EXIT_CONFIG, ConfigError

START_LINE = re.compile(
    r"^syncd emulator listening on http://127\.0\.0\.1:(\d+)/serve/api/v2 \((.+)\)$"
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Processes appended here are killed at teardown if a test left them running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def start(procs: list[subprocess.Popen[str]], port_file: Path, *flags: str) -> None:
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "syncd.emulator",
                "--port=0",
                f"--port-file={port_file}",
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )


async def upload_status(session: aiohttp.ClientSession, port: int, key: str) -> int:
    status, _ = await call(
        session,
        "POST",
        f"http://127.0.0.1:{port}/serve/api/v2/upload",
        data=file_form(media_bytes("mp4"), "a.mp4"),
        headers={"Authorization": key},
    )
    return status


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_runs_with_the_demo_key_until_a_signal(
    spawn: list[subprocess.Popen[str]], tmp_path: Path, signum: signal.Signals
) -> None:
    port_file = tmp_path / "port"
    start(spawn, port_file, "--rate-limit=0")
    await wait_until(port_file.exists, what="the port file")
    port = int(port_file.read_text())
    async with aiohttp.ClientSession() as session:
        assert await upload_status(session, port, DEMO_KEY) == 200
        assert await upload_status(session, port, "sk-mavi-nope") == 401
    proc = spawn[0]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    match = START_LINE.match(out.strip())
    assert match, out
    assert int(match.group(1)) == port
    assert match.group(2) == f"key: {DEMO_KEY}"
    assert "Traceback" not in err
    assert not port_file.exists()


async def test_keys_and_accounts_from_flags_and_a_file(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("bob:sk-mavi-test-bob-33333333\n\n")
    port_file = tmp_path / "port"
    start(
        spawn,
        port_file,
        "--key=alice:sk-mavi-test-alice-1111111",
        "--key",
        "sk-mavi-test-plain-22222222",
        f"--keys-file={keys_file}",
        "--rate-limit=0",
    )
    await wait_until(port_file.exists, what="the port file")
    port = int(port_file.read_text())
    async with aiohttp.ClientSession() as session:
        assert await upload_status(session, port, DEMO_KEY) == 401
        for key in ("sk-mavi-test-alice-1111111", "sk-mavi-test-plain-22222222"):
            assert await upload_status(session, port, key) == 200
        assert await upload_status(session, port, "sk-mavi-test-bob-33333333") == 200
        _, log = await call(session, "GET", f"http://127.0.0.1:{port}/_emulator/requests")
    accounts = [r["account"] for r in log["requests"] if r["endpoint"] == "upload"]
    assert accounts == [None, "alice", "default", "bob"]
    spawn[0].terminate()
    out, _ = spawn[0].communicate(timeout=30)
    assert spawn[0].returncode == 0
    assert "(3 keys configured)" in out
    assert "sk-mavi-test" not in out


def test_bad_flags_exit_with_one_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "syncd.emulator", "--port=0", "--rate", "nowhere=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_CONFIG
    assert "--rate: expected ENDPOINT=PER_S" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_port_in_use_is_one_line_and_exit_69() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "syncd.emulator", f"--port={port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 69
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], lines


def test_flags_map_onto_settings() -> None:
    settings = settings_from_args(
        parse(
            "--rate-limit=2",
            "--rate=metadata=0",
            "--rate",
            "signed-url=0.5",
            "--throttle-status=429",
            "--any-format",
            "--max-video-bytes=3G",
            "--max-image-bytes=20MiB",
            "--waiting-s=0",
            "--uploading-s=0.5",
            "--fail-fraction=0.25",
            "--seed=9",
            "--error-rate=0.1",
            "--reset-rate=0.2",
            "--hang-rate=0.3",
            "--latency-rate=0.4",
            "--latency-s=2",
            "--credits=5",
            "--reject-filename=bad.mp4",
            "--public-url=http://emu.test:1",
            "--rate-algorithm=fixed_window",
        )
    )
    assert dict(settings.rates) == {
        "upload": 2.0,
        "metadata": 0.0,
        "signed_url": 0.5,
        "download": 2.0,
        "delete": 2.0,
    }
    assert settings.keys == {DEMO_KEY: "demo"}
    assert settings.throttle_status == 429 and not settings.check_formats
    assert settings.max_video_bytes == 3 << 30 and settings.max_image_bytes == 20 << 20
    assert settings.max_audio_bytes is None
    assert (settings.waiting_s, settings.uploading_s, settings.fail_fraction) == (0, 0.5, 0.25)
    assert (settings.seed, settings.error_rate, settings.reset_rate) == (9, 0.1, 0.2)
    assert (settings.hang_rate, settings.latency_rate, settings.latency_s) == (0.3, 0.4, 2.0)
    assert settings.credits == 5 and settings.reject_filenames == {"bad.mp4"}
    assert settings.public_url == "http://emu.test:1"
    assert settings.rate_algorithm == "fixed_window"
    defaults = settings_from_args(parse())
    assert dict(defaults.rates) == dict.fromkeys(defaults.rates, 1.0)
    assert defaults.data_dir is None and defaults.check_formats


def test_invalid_settings_are_all_reported() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_args(parse("--rate=upload=x", "--key=:"))
    assert len(info.value.problems) == 2
    with pytest.raises(ConfigError) as info:
        settings_from_args(parse("--signed-url-ttl-s=0", "--error-status=200"))
    assert len(info.value.problems) == 2
    with pytest.raises(SystemExit):
        parse("--fail-fraction=1.5")
    with pytest.raises(SystemExit):
        parse("--max-video-bytes=lots")
