"""The hostile-input matrix: secrets and exposure.

A full run of the real daemon (a ``syncd run`` subprocess with debug JSON logs, scheduled
backups, the HTTP endpoint) with a distinctive key, through server errors that echo the key,
a 401, a wrong key, rejected and skipped files; then every place the key could leak is read
byte for byte. Plus: the ledger's file modes, what the local endpoints bind to and accept,
and ruff's security rules.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import MakeEmulator
from daemon_process import DaemonProcess, query
from pipeline_support import REPO, config_data, subprocess_env, syncd_cmd, wait_for
from samples import write_media

from syncd.config import parse_config
from syncd.emulator import EmulatorServer
from syncd.errors import EXIT_UNAVAILABLE, ApiError
from syncd.upload.client import MaviClient

# Distinctive keys: the random part is what gets looked for, whole and in halves (a key cut
# short by a length limit is still a leak).
KEY = f"sk-mavi-{secrets.token_hex(20)}"
WRONG_KEY = f"sk-mavi-{secrets.token_hex(20)}"


def needles(*keys: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key in keys:
        core = key.removeprefix("sk-mavi-")
        out[key] = key.encode()
        out[f"{key} (first half)"] = core[: len(core) // 2].encode()
        out[f"{key} (second half)"] = core[len(core) // 2 :].encode()
    return out


NEEDLES = needles(KEY, WRONG_KEY)


def leaks(data: bytes | str) -> list[str]:
    """Which of the keys (or half of one) ``data`` contains."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return [name for name, needle in NEEDLES.items() if needle in raw]


class WrappedDaemon(DaemonProcess):
    """``syncd run`` started under ``sh -c 'umask 000; exec ...'``: the files it creates get
    their modes from syncd alone, not from a kind umask."""

    wrapper = ("sh", "-c", 'umask 000; exec "$@"', "sh")


def listening(pid: int) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """Every TCP socket process ``pid`` listens on: (address, port), from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    out: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.append((ipaddress.ip_address(raw), int(port_hex, 16)))
    return out


def run_cli(*args: str, key: str | None = KEY, **env: str) -> subprocess.CompletedProcess[str]:
    extra = {"MAVI_API_KEY": key} if key is not None else {}
    return subprocess.run(
        syncd_cmd(*args),
        env=subprocess_env(**extra, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_the_key_is_nowhere_after_a_full_run(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    emulator = await make_emulator(keys={KEY: "acct"}, reject_filenames=["refused.mp4"])
    root = tmp_path / "media"
    root.mkdir()
    for i in range(3):
        write_media(root / f"clip{i}.mp4", seed=i)
    write_media(root / "refused.mp4", seed=9)
    (root / "notes.mp4").write_text("not a video\n")
    # A hostile or broken server (or proxy) repeating the key back in its error messages.
    emulator.add_faults(
        {"endpoint": "upload", "count": 1, "status": 500, "msg": f"bad Authorization: {KEY}"},
        {"endpoint": "upload", "count": 1, "status": 401, "msg": f"Unauthorized key {KEY}"},
        {"endpoint": "upload", "count": 1, "reset": True},
        {"endpoint": "metadata", "count": 2, "status": 502, "msg": f"upstream saw {KEY}"},
    )
    state = tmp_path / "state"
    backups = tmp_path / "backups"
    data = config_data(
        tmp_path,
        emulator,
        [root],
        http={"listen": "127.0.0.1:0"},
        ledger={"backup_dir": str(backups), "backup_interval_s": 1, "backup_keep": 2},
        upload={"reject_after": 1, "workers": 1},
    )
    seen: dict[str, bytes] = {}
    daemon = WrappedDaemon(data, tmp_path, KEY)
    await daemon.start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid

        def counts() -> dict[str, int]:
            rows = query(state / "ledger.db", "SELECT state, count(*) FROM contents GROUP BY 1")
            return {s: int(n) for s, n in rows}

        await wait_for(lambda: counts() == {"done": 3, "rejected": 1}, 60, what="all files settled")
        await wait_for(lambda: backups.exists() and any(backups.iterdir()), 30, what="backup")
        # What anyone on the machine can see of the process: its arguments and names.
        seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes()
        seen["comm"] = Path(f"/proc/{pid}/comm").read_bytes()
        for task in Path(f"/proc/{pid}/task").iterdir():
            seen[f"thread {task.name}"] = (task / "comm").read_bytes()
        # The environment is where the key came from: it is there (readable by the same user
        # and root only), which also shows this test can see a key where there is one.
        assert KEY.encode() in Path(f"/proc/{pid}/environ").read_bytes()
        # The local HTTP endpoint: loopback only, read only, and no key in anything it says.
        (address,) = listening(pid)
        assert address[0].is_loopback
        base = f"http://127.0.0.1:{address[1]}"
        async with aiohttp.ClientSession() as http:
            for route in ("/healthz", "/readyz", "/metrics", "/v1/assets?path=" + str(root)):
                async with http.get(base + route) as resp:
                    seen[f"GET {route}"] = await resp.read()
            async with http.get(f"{base}/v1/assets", params={"path": str(root / "clip0.mp4")}) as r:
                assert r.status == 200
                seen["GET /v1/assets clip0"] = await r.read()
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                for route in ("/healthz", "/metrics", "/v1/assets", "/v1/assets/x", "/"):
                    async with http.request(method, base + route, data=b"{}") as resp:
                        assert resp.status in (404, 405), (method, route, resp.status)
        assert b"syncd_" in seen["GET /metrics"]
        # Files syncd creates hold what it knows: private to its user, whatever the umask.
        assert mode(state) == 0o700
        for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm", "ledger.db.lock"):
            if (state / name).exists():
                assert mode(state / name) == 0o600, name
        assert mode(backups) == 0o700
        assert all(mode(b) == 0o600 for b in backups.iterdir())
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.tail()

    # The same ledger and config with a key the API refuses: 401s, a pause, probes.
    write_media(root / "later.mp4", seed=20)
    refused = WrappedDaemon(data, tmp_path, WRONG_KEY)
    await refused.start()
    try:
        await wait_for(
            lambda: any("refused the key" in m for m in refused.messages()), 30, what="401"
        )
        await asyncio.sleep(1.5)  # a probe or two
        assert refused.proc is not None
        seen["cmdline (wrong key)"] = Path(f"/proc/{refused.proc.pid}/cmdline").read_bytes()
    finally:
        assert await refused.stop() == 0
    once = await asyncio.to_thread(
        run_cli, "sync", "--once", "-c", str(daemon.cfg_file), key=WRONG_KEY
    )
    assert once.returncode == EXIT_UNAVAILABLE, once.stderr[-2000:]
    seen["sync --once (wrong key)"] = (once.stdout + once.stderr).encode()

    # The operator commands, with the key in the environment as the daemon had it.
    cfg = str(daemon.cfg_file)
    for args in (
        ("config", "check", cfg),
        ("config", "check", "--json", cfg),
        ("status", "-c", cfg),
        ("status", "--json", "-c", cfg),
        ("show", str(root / "clip0.mp4"), "-c", cfg),
        ("ls", "-c", cfg),
        ("doctor", "-c", cfg),
    ):
        result = await asyncio.to_thread(run_cli, *args)
        assert "Traceback" not in result.stderr, args
        seen[" ".join(a for a in args if not a.startswith("/"))] = (
            result.stdout + result.stderr
        ).encode()
    # The key from a file (group-readable, which syncd warns about) instead of the env.
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    with_file = dict(data, api={**data["api"], "key_file": str(key_file)})
    file_cfg = tmp_path / "with-key-file.yaml"
    file_cfg.write_text(yaml.safe_dump(with_file))
    result = await asyncio.to_thread(run_cli, "config", "check", str(file_cfg), key=None)
    assert result.returncode == 0 and "never shown" in result.stdout, result.stdout[:300]
    seen["config check (key file)"] = (result.stdout + result.stderr).encode()

    # Everything on disk: the log of every run, the ledger and its journals, the backups.
    seen["daemon log"] = daemon.log_path.read_bytes()
    for path in [*state.iterdir(), *backups.iterdir()]:
        seen[str(path.relative_to(tmp_path))] = path.read_bytes()
    assert any("Unauthorized" in m or "refused the key" in m for m in daemon.messages())
    assert len(seen) > 20, sorted(seen)
    # The server did send the key back: the client masked it before anything logged it.
    assert b"<key>" in seen["daemon log"]
    found = {where: hits for where, data_ in seen.items() if (hits := leaks(data_))}
    assert found == {}


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 409, 415, 429, 500, 502, 503])
async def test_api_errors_never_carry_the_key(
    tmp_path: Path, make_emulator: MakeEmulator, status: int
) -> None:
    """Whatever the server puts in an error message, including the key itself, the
    exception the client raises (its text, its repr, its args) does not hold the key."""
    emulator = await make_emulator(keys={KEY: "acct"})
    media = tmp_path / "clip.mp4"
    write_media(media)
    msg = f"rejected Authorization {KEY} for account acct"
    errors: list[ApiError] = []
    async with MaviClient(emulator.base_url, KEY) as client:
        for endpoint in ("upload", "signed_url", "metadata", "delete"):
            emulator.add_faults({"endpoint": endpoint, "count": 1, "status": status, "msg": msg})
        calls: list[Any] = [
            client.upload(str(media), filename=media.name),
            client.allocate_signed_url(media.name),
            client.metadata("re_123456789012345678"),
            client.delete("re_123456789012345678"),
        ]
        for call in calls:
            with pytest.raises(ApiError) as info:
                await call
            errors.append(info.value)
        assert KEY not in repr(client)
    assert len(errors) == 4
    for exc in errors:
        assert exc.status == status
        assert leaks(str(exc)) == [] and leaks(repr(exc)) == [] and leaks(repr(exc.args)) == []
    # The server did say it: the client masked it.
    assert any("<key>" in str(exc) for exc in errors)


async def test_local_endpoints_bind_to_loopback_by_default(tmp_path: Path) -> None:
    """The daemon's endpoint defaults to 127.0.0.1; the emulator (its CLI and its class)
    binds 127.0.0.1 unless told otherwise: checked on the running emulator's sockets."""
    assert parse_config({}, "defaults").http.listen == "127.0.0.1:9477"
    assert EmulatorServer().host == "127.0.0.1"
    port_file = tmp_path / "port"
    proc = await asyncio.create_subprocess_exec(
        *syncd_cmd("emulator", "--port", "0", "--port-file", str(port_file)),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 30)
        port = int(port_file.read_text())
        sockets = listening(proc.pid)
        assert sockets and all(addr.is_loopback for addr, _ in sockets), sockets
        assert port in {p for _, p in sockets}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


def test_ruff_security_rules_pass() -> None:
    """ruff's bandit rules (``S``) over the package and the tests, with the project's
    per-file exceptions (tests may assert, run subprocesses and use /tmp)."""
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run(
        [str(ruff), "check", "--select", "S", "--output-format", "concise", "syncd", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_secret_shaped_literal_in_the_package() -> None:
    """No ``sk-`` key other than the emulator's public demo key is written in the code."""
    pattern = re.compile(r"sk-[A-Za-z0-9_-]{8,}")
    found = {}
    for path in (REPO / "syncd").rglob("*.py"):
        hits = set(pattern.findall(path.read_text(encoding="utf-8")))
        hits.discard("sk-mavi-demo-0000000000000000")
        if hits:
            found[str(path.relative_to(REPO))] = sorted(hits)
    assert found == {}
