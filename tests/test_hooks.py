"""Hooks: commands run with the outcome in their environment and on stdin, a signed webhook on
a real aiohttp server, and the queue drained with retries, bounded concurrency and
cancellation. Real subprocesses throughout."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from syncd.after.hooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    STDERR_TAIL_BYTES,
    Notification,
    post_webhook,
    read_secret_file,
    run_command,
    sign,
    verify,
)
from syncd.after.queue import (
    HookDrainer,
    HookSettings,
    MemoryHookQueue,
    hook_settings_from,
    retry_delay_s,
    targets_for,
)
from syncd.config import parse_config
from syncd.errors import ConfigError

SHA = "ab" * 32
NOTE = Notification("success", "/media/in/a.mp4", SHA, "re_123", "SUCCESS", 1765000000.5)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_a_command_hook_gets_the_outcome_in_its_environment_and_on_stdin(
    tmp_path: Path,
) -> None:
    out = tmp_path / "seen.json"
    code = (
        "import json, os, sys; "
        "env = {k: v for k, v in os.environ.items() if k.startswith(('SYNCD_', 'MAVI_'))}; "
        f"json.dump({{'env': env, 'stdin': json.load(sys.stdin)}}, open({str(out)!r}, 'w'))"
    )
    base = {"PATH": os.environ["PATH"], "MAVI_API_KEY": "sk-secret", "HOME": "/nonexistent"}
    result = await run_command(py(code), NOTE, timeout_s=30, base_env=base)
    assert result.ok, result
    assert (result.exit_status, result.detail) == (0, "exit 0")
    seen = json.loads(out.read_text())
    assert seen["env"] == {
        "SYNCD_EVENT": "success",
        "SYNCD_PATH": "/media/in/a.mp4",
        "SYNCD_SHA256": SHA,
        "SYNCD_ASSET_ID": "re_123",
        "SYNCD_STATUS": "SUCCESS",
    }
    assert seen["stdin"] == NOTE.payload()


async def test_a_name_that_is_not_utf8_reaches_the_hook_as_its_original_bytes(
    tmp_path: Path,
) -> None:
    out = tmp_path / "path.bin"
    odd = os.fsdecode(b"/media/caf\xe9\nx.mp4")
    note = Notification("failed", odd, SHA, None, "rejected", None)
    code = f"import os; open({str(out)!r}, 'wb').write(os.environb[b'SYNCD_PATH'])"
    result = await run_command(py(code), note, timeout_s=30)
    assert result.ok, result
    assert out.read_bytes() == b"/media/caf\xe9\nx.mp4"
    assert Notification.from_body(note.body()) == note
    note.body().decode("ascii")  # the body is plain ASCII JSON


async def test_a_failing_hook_reports_its_exit_status_and_the_tail_of_its_stderr() -> None:
    code = "import sys; sys.stderr.write('x' * 10000 + 'the end'); sys.exit(3)"
    result = await run_command(py(code), NOTE, timeout_s=30)
    assert not result.ok
    assert (result.exit_status, result.detail) == (3, "exit 3")
    assert result.stderr_tail.endswith("the end")
    assert len(result.stderr_tail) <= STDERR_TAIL_BYTES


async def test_a_hook_that_ignores_stdin_and_exits_at_once_is_still_delivered() -> None:
    result = await run_command(["true"], NOTE, timeout_s=30)
    assert result.ok, result


async def test_a_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen(['sleep', '60']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); "
        "time.sleep(60)"
    )
    result = await run_command(py(code), NOTE, timeout_s=1.0)
    assert not result.ok
    assert result.detail == "timed out after 1 s"
    child = int(pid_file.read_text())
    for _ in range(100):  # killed at once; who reaps the orphan, and when, is not ours
        if not alive(child):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"the hook's child {child} outlived the timeout")


async def test_a_hook_that_cannot_start_is_one_line_of_failure(tmp_path: Path) -> None:
    result = await run_command([str(tmp_path / "no-such-hook")], NOTE, timeout_s=5)
    assert not result.ok
    assert result.detail.startswith("cannot start")
    assert "\n" not in result.detail
    assert not (await run_command([], NOTE, timeout_s=5)).ok


def test_the_signature_is_the_hmac_of_the_exact_body() -> None:
    body = NOTE.body()
    header = sign(b"s3cret", body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify(b"s3cret", body, header)
    assert not verify(b"other", body, header)
    assert not verify(b"s3cret", body + b" ", header)
    assert not verify(b"s3cret", body, None)


def test_the_secret_file_is_read_without_its_line_break_and_an_empty_one_is_refused(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\n")
    assert read_secret_file(str(secret)) == b"s3cret"
    secret.write_bytes(b"\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret_file(str(secret))
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret_file(str(tmp_path / "missing"))


class Receiver:
    """A real webhook receiver on 127.0.0.1, port 0, answering from a script of statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 302:
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=status, text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver([])
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    app.router.add_post("/elsewhere", recv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    recv.url = f"http://127.0.0.1:{port}/hook"
    yield recv
    await runner.cleanup()


async def test_a_webhook_posts_the_json_signed_with_the_secret(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as session:
        result = await post_webhook(
            session, receiver.url, NOTE, delivery_id="d-1", secret=b"s3cret", timeout_s=10
        )
    assert result.ok and result.exit_status == 200
    headers, body = receiver.received[0]
    assert json.loads(body) == NOTE.payload()
    assert verify(b"s3cret", body, headers[SIGNATURE_HEADER])
    assert headers[DELIVERY_HEADER] == "d-1"
    assert headers["Content-Type"] == "application/json"


async def test_a_webhook_answer_outside_2xx_or_a_redirect_is_not_delivered(
    receiver: Receiver,
) -> None:
    receiver.statuses[:] = [503, 302]
    async with aiohttp.ClientSession() as session:
        first = await post_webhook(
            session, receiver.url, NOTE, delivery_id="d", secret=None, timeout_s=10
        )
        second = await post_webhook(
            session, receiver.url, NOTE, delivery_id="d", secret=None, timeout_s=10
        )
        gone = await post_webhook(
            session,
            "http://127.0.0.1:1/hook?token=t0ps3cret",
            NOTE,
            delivery_id="d",
            secret=None,
            timeout_s=5,
        )
    assert (first.ok, first.detail) == (False, "HTTP 503")
    assert (second.ok, second.detail) == (False, "HTTP 302")
    assert len(receiver.received) == 2  # the redirect was not followed
    assert SIGNATURE_HEADER not in receiver.received[0][0]
    assert not gone.ok and gone.detail.startswith("cannot reach the webhook")
    assert "t0ps3cret" not in gone.detail


def test_each_event_goes_to_its_command_and_to_the_webhook() -> None:
    settings = HookSettings(on_success=("a",), on_failed=("b",), webhook_url="http://h/x")
    assert targets_for("success", settings) == ["on_success", "webhook"]
    assert targets_for("failed", settings) == ["on_failed", "webhook"]
    assert targets_for("success", HookSettings(on_failed=("b",))) == []


def test_retry_delays_double_up_to_the_maximum_less_some_jitter() -> None:
    assert [retry_delay_s(n, 5, 60, rng=lambda: 0.0) for n in (1, 2, 3, 4, 5)] == [
        5,
        10,
        20,
        40,
        60,
    ]
    assert retry_delay_s(1, 5, 60, rng=lambda: 1.0) == pytest.approx(4.0)
    assert retry_delay_s(10_000, 5, 60, rng=lambda: 0.0) == 60


async def drain_until(drainer: HookDrainer, queue: MemoryHookQueue, timeout_s: float) -> None:
    """Run the drainer until no job is pending, then stop it."""
    task = asyncio.create_task(drainer.run())
    try:
        async with asyncio.timeout(timeout_s):
            while any(r.state == "pending" for r in queue.records.values()):
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_hook_is_retried_with_backoff_until_it_succeeds(
    tmp_path: Path, receiver: Receiver
) -> None:
    tries = tmp_path / "tries"
    # Fails twice, then succeeds; each run leaves a line.
    code = (
        f"import sys; f = open({str(tries)!r}, 'a+'); f.write('x\\n'); f.seek(0); "
        "sys.exit(0 if len(f.readlines()) >= 3 else 1)"
    )
    receiver.statuses[:] = [500]
    settings = HookSettings(
        on_success=tuple(py(code)),
        webhook_url=receiver.url,
        webhook_secret=b"k",
        backoff_initial_s=0.05,
        backoff_max_s=0.1,
    )
    queue = MemoryHookQueue()
    await queue.enqueue(NOTE, targets_for("success", settings), time.time())
    drainer = HookDrainer(queue, settings)
    await drain_until(drainer, queue, timeout_s=30)
    records = sorted(queue.records.values(), key=lambda r: r.job.id)
    assert [(r.job.target, r.state, r.job.attempts) for r in records] == [
        ("on_success", "done", 3),
        ("webhook", "done", 2),
    ]
    # At least once, and a receiver can tell a retry from a new notification.
    ids = {headers[DELIVERY_HEADER] for headers, _ in receiver.received}
    assert len(receiver.received) == 2 and ids == {records[1].job.delivery_id}
    assert all(verify(b"k", body, h[SIGNATURE_HEADER]) for h, body in receiver.received)


async def test_a_hook_that_keeps_failing_is_given_up_with_its_last_outcome() -> None:
    settings = HookSettings(
        on_failed=tuple(py("import sys; sys.stderr.write('no luck'); sys.exit(7)")),
        max_attempts=2,
        backoff_initial_s=0.01,
    )
    queue = MemoryHookQueue()
    note = Notification("failed", "/m/b.mp4", SHA, "re_9", "FAILED")
    await queue.enqueue(note, targets_for("failed", settings), time.time())
    drainer = HookDrainer(queue, settings)
    await drain_until(drainer, queue, timeout_s=30)
    (record,) = queue.records.values()
    assert (record.state, record.job.attempts) == ("given_up", 2)
    assert record.last is not None
    assert (record.last.exit_status, record.last.stderr_tail) == (7, "no luck")
    assert drainer.given_up == 1


async def test_no_more_hooks_run_at_once_than_the_concurrency_allows(tmp_path: Path) -> None:
    running = tmp_path / "running"
    running.mkdir()
    peak = tmp_path / "peak"
    # Each hook marks itself running, notes how many are, stays a while and leaves.
    code = (
        "import os, time, uuid; "
        f"d = {str(running)!r}; me = os.path.join(d, uuid.uuid4().hex); open(me, 'w').close(); "
        f"open({str(peak)!r}, 'a').write(f'{{len(os.listdir(d))}}\\n'); "
        "time.sleep(0.3); os.remove(me)"
    )
    settings = HookSettings(on_success=tuple(py(code)), concurrency=2)
    queue = MemoryHookQueue()
    for i in range(5):
        note = Notification("success", f"/m/{i}.mp4", SHA, f"re_{i}", "SUCCESS")
        await queue.enqueue(note, ["on_success"], time.time())
    await drain_until(HookDrainer(queue, settings), queue, timeout_s=60)
    counts = [int(line) for line in peak.read_text().split()]
    assert len(counts) == 5
    assert max(counts) <= 2
    assert all(r.state == "done" for r in queue.records.values())


async def test_stopping_the_drainer_kills_a_running_hook_and_keeps_its_job(
    tmp_path: Path,
) -> None:
    started = tmp_path / "started"
    code = f"import os, time; open({str(started)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    settings = HookSettings(on_success=tuple(py(code)), timeout_s=120)
    queue = MemoryHookQueue()
    await queue.enqueue(NOTE, ["on_success"], time.time())
    task = asyncio.create_task(HookDrainer(queue, settings).run())
    async with asyncio.timeout(30):
        while not started.exists() or not started.read_text():
            await asyncio.sleep(0.02)
    pid = int(started.read_text())
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not alive(pid)
    (record,) = queue.records.values()
    assert (record.state, record.job.attempts) == ("pending", 0)


def test_the_configured_hooks_are_the_drainers_with_the_secret_read(tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret\n")
    cfg = parse_config(
        {
            "hooks": {
                "on_success": ["/bin/echo", "ok"],
                "webhook_url": "https://example.org/h",
                "webhook_secret_file": str(secret),
                "concurrency": 3,
            }
        },
        "test",
    )
    settings = hook_settings_from(cfg.hooks)
    assert settings.on_success == ("/bin/echo", "ok")
    assert settings.webhook_secret == b"s3cret"
    assert settings.concurrency == 3
    assert "s3cret" not in repr(settings)
    secret.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        hook_settings_from(cfg.hooks)
