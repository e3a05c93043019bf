"""The sd_notify client against real datagram sockets standing in for systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.notify import Notifier, watchdog_loop

DEADLINE_S = 30.0


def _bound_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket file in tmp_path, as systemd binds it; yields it and NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    sock = _bound_socket(path)
    sock.settimeout(DEADLINE_S)
    try:
        yield sock, path
    finally:
        sock.close()


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_disabled_without_notify_socket() -> None:
    with Notifier.from_env({"WATCHDOG_USEC": "1000000"}) as n:
        assert not n.enabled
        assert n.watchdog_interval_s is None
        assert n.send("READY=1") is False
        n.ready("up")
        n.status("x")
        n.reloading()
        n.stopping()
        n.watchdog()


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234", ""])
def test_unsupported_address_disables(value: str) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": value}) as n:
        assert not n.enabled
        n.ready()


def test_messages_on_a_path_socket(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as n:
        assert n.enabled
        n.ready("watching 2 folders")
        assert _recv(sock) == ["READY=1", "STATUS=watching 2 folders"]
        n.status("3 pending,\n1 uploading")
        assert _recv(sock) == ["STATUS=3 pending, 1 uploading"]
        n.stopping()
        assert _recv(sock) == ["STOPPING=1"]
        n.extend_timeout(1.5)
        assert _recv(sock) == ["EXTEND_TIMEOUT_USEC=1500000"]
        n.ready()
        assert _recv(sock) == ["READY=1"]


def test_unchanged_status_is_not_resent(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as n:
        n.ready("idle")
        n.status("idle")
        n.status("busy")
        n.status("busy")
        n.status("idle")
        sock.setblocking(False)
        received: list[str] = []
        while True:
            try:
                received.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
        assert received == ["READY=1\nSTATUS=idle", "STATUS=busy", "STATUS=idle"]


def test_reloading_carries_the_monotonic_clock(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as n:
        before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        n.reloading()
        after_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields = _recv(sock)
    assert fields[0] == "RELOADING=1"
    key, _, value = fields[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before_usec <= int(value) <= after_usec


def test_abstract_namespace_socket() -> None:
    name = f"syncd-test-{uuid.uuid4().hex}"
    sock = _bound_socket("\0" + name)
    sock.settimeout(DEADLINE_S)
    try:
        with Notifier.from_env({"NOTIFY_SOCKET": "@" + name}) as n:
            assert n.enabled
            n.ready("abstract")
            assert _recv(sock) == ["READY=1", "STATUS=abstract"]
            assert "@" + name in repr(n)
    finally:
        sock.close()


def test_send_failures_never_raise_and_log_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="syncd.notify")
    path = str(tmp_path / "gone.sock")
    # Bound then closed: the file stays, nobody listens (ECONNREFUSED), as after a crash.
    _bound_socket(path).close()
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as n:
        assert n.send("READY=1") is False
        n.status("a")
        n.stopping()
    os.unlink(path)
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as n:
        n.ready()  # ENOENT this time
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 2  # one per notifier
    assert all(r.levelno == logging.DEBUG for r in failures)


def test_full_receive_queue_drops_instead_of_blocking(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as n:
        # A manager that never reads: keep sending until the kernel refuses (EAGAIN). A
        # blocking socket would hang here and the per-test timeout would fail the test.
        sent = 0
        while n.send(f"STATUS={sent}"):
            sent += 1
            assert sent < 1_000_000, "the receive queue never filled"
        assert sent > 0
        n.stopping()  # dropped, silently
        assert sock.recv(4096) == b"STATUS=0"


def test_close_is_idempotent(manager: tuple[socket.socket, str]) -> None:
    _sock, path = manager
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    n.close()
    n.close()
    assert not n.enabled
    n.ready()


@pytest.mark.parametrize(
    ("usec", "pid", "expected_s"),
    [
        ("2000000", None, 1.0),
        ("2000000", "self", 1.0),
        ("2000000", "other", None),
        ("2000000", "not-a-pid", None),
        ("0", None, None),
        ("soon", None, None),
        (None, "self", None),
    ],
)
def test_watchdog_interval_and_pid_rule(
    manager: tuple[socket.socket, str], usec: str | None, pid: str | None, expected_s: float | None
) -> None:
    _sock, path = manager
    env = {"NOTIFY_SOCKET": path}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid == "self":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    elif pid is not None:
        env["WATCHDOG_PID"] = pid
    with Notifier.from_env(env) as n:
        assert n.watchdog_interval_s == expected_s


async def test_watchdog_loop_pings_from_the_event_loop(
    manager: tuple[socket.socket, str],
) -> None:
    sock, path = manager
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
    with Notifier.from_env(env) as n:
        assert n.watchdog_interval_s == 0.05
        task = asyncio.create_task(watchdog_loop(n))
        try:
            pings: list[bytes] = []
            async with asyncio.timeout(DEADLINE_S):
                while len(pings) < 3:
                    pings.append(await loop.sock_recv(sock, 4096))
            assert pings == [b"WATCHDOG=1"] * 3
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_a_blocked_loop_sends_no_pings(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager
    sock.setblocking(False)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}
    with Notifier.from_env(env) as n:
        task = asyncio.create_task(watchdog_loop(n))
        try:
            await asyncio.sleep(0)  # the first ping
            # Block the loop well past several intervals; a loop that pinged from a thread
            # would keep pinging through this.
            time.sleep(0.3)
            pings = 0
            while True:
                try:
                    sock.recv(4096)
                except BlockingIOError:
                    break
                pings += 1
            assert pings == 1
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_watchdog_loop_returns_without_a_watchdog(
    manager: tuple[socket.socket, str],
) -> None:
    _sock, path = manager
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as n:
        async with asyncio.timeout(DEADLINE_S):
            await watchdog_loop(n)
    with Notifier.from_env({}) as n:
        async with asyncio.timeout(DEADLINE_S):
            await watchdog_loop(n)


def test_a_child_process_notifies_through_the_environment(
    manager: tuple[socket.socket, str],
) -> None:
    sock, path = manager
    code = (
        "from syncd.notify import Notifier\n"
        "with Notifier.from_env() as n:\n"
        "    n.ready('child ready')\n"
        "    n.watchdog()\n"
        "    n.stopping()\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert proc.returncode == 0, proc.stderr
    assert _recv(sock) == ["READY=1", "STATUS=child ready"]
    assert _recv(sock) == ["WATCHDOG=1"]
    assert _recv(sock) == ["STOPPING=1"]
