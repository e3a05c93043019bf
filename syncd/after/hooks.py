"""Telling other programs about a final outcome: a command (``hooks.on_success``,
``hooks.on_failed``) and a signed webhook (``hooks.webhook_url``).

Each delivery is one call here and returns a :class:`Delivery` (never raises for the other
side's failures): whether it counts as delivered, and a one-line account of what happened.
Retrying, and remembering what is still owed across restarts, is the queue's business
(:mod:`syncd.after.queue`).

A command runs from its argv (no shell), in a session of its own, with the notification in
its environment (``SYNCD_PATH``, ``SYNCD_SHA256``, ``SYNCD_ASSET_ID``, ``SYNCD_STATUS``,
``SYNCD_EVENT``) and as one JSON object on its stdin. It gets the daemon's environment less
every ``MAVI_*`` variable and ``CREDENTIALS_DIRECTORY`` (the API key never leaves the daemon).
Its stdout is discarded; the last :data:`STDERR_TAIL_BYTES` of its stderr are kept. Exit
status 0 is delivered. At ``timeout_s`` its whole process group is killed.

A webhook is a POST of the same JSON with ``Content-Type: application/json``,
``X-Syncd-Event``, ``X-Syncd-Delivery`` (the same id on every retry of one notification, so
a receiver can drop repeats: delivery is at least once) and, when a secret is configured,
``X-Syncd-Signature: sha256=HEX``, the HMAC-SHA256 of the exact body under the secret. Any
2xx answer is delivered; redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import aiohttp

from syncd.errors import ConfigError

STDERR_TAIL_BYTES = 2048
SIGNATURE_HEADER = "X-Syncd-Signature"
DELIVERY_HEADER = "X-Syncd-Delivery"
EVENT_HEADER = "X-Syncd-Event"
# Variables a hook never inherits: the API key and where it can be read from.
_SECRET_ENV_PREFIXES = ("MAVI_",)
_SECRET_ENV_NAMES = frozenset({"CREDENTIALS_DIRECTORY"})

Event = Literal["success", "failed"]


@dataclass(frozen=True)
class Notification:
    """What a hook is told about one file's final outcome.

    ``event`` is ``success`` (the asset is SUCCESS) or ``failed`` (syncd gave up: attempts
    exhausted, rejected, or the API reported the asset FAILED); ``status`` says which, as
    ``syncd show`` names it; ``asset_id`` is ``None`` when no asset was ever made;
    ``uploaded_at`` is seconds since the epoch, or ``None``.
    """

    event: Event
    path: str
    sha256: str
    asset_id: str | None
    status: str
    uploaded_at: float | None = None

    def payload(self) -> dict[str, object]:
        """The JSON object, as a dict."""
        return {
            "event": self.event,
            "path": self.path,
            "sha256": self.sha256,
            "asset_id": self.asset_id,
            "status": self.status,
            "uploaded_at": self.uploaded_at,
        }

    def body(self) -> bytes:
        """The JSON object as sent and signed. A name that is not UTF-8 keeps its surrogate
        escapes as ``\\udcXX`` (ASCII-only JSON), so the body is always valid UTF-8."""
        return json.dumps(self.payload(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_body(cls, body: bytes) -> Notification:
        """Given a body made by :meth:`body`, return the notification; raises ``ValueError``."""
        data = json.loads(body)
        if not isinstance(data, dict) or data.get("event") not in ("success", "failed"):
            raise ValueError("not a notification body")
        return cls(
            event=data["event"],
            path=str(data["path"]),
            sha256=str(data["sha256"]),
            asset_id=None if data["asset_id"] is None else str(data["asset_id"]),
            status=str(data["status"]),
            uploaded_at=None if data["uploaded_at"] is None else float(data["uploaded_at"]),
        )

    def environ(self) -> dict[str, str]:
        """The ``SYNCD_*`` variables a command hook gets."""
        return {
            "SYNCD_EVENT": self.event,
            "SYNCD_PATH": self.path,
            "SYNCD_SHA256": self.sha256,
            "SYNCD_ASSET_ID": self.asset_id or "",
            "SYNCD_STATUS": self.status,
        }


@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt: ``ok`` when delivered; ``detail`` one line (``exit 0``,
    ``exit 3``, ``timed out after 5 s``, ``HTTP 503``, ``cannot start: ...``); ``exit_status``
    the command's exit status or the HTTP status (``None`` when there was none);
    ``stderr_tail`` the end of a command's stderr (empty for a webhook)."""

    ok: bool
    detail: str
    exit_status: int | None = None
    stderr_tail: str = ""


def hook_environment(note: Notification, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Given a notification and the environment to start from (default ``os.environ``),
    return a command hook's environment: the base without the API key's variables, plus
    the ``SYNCD_*`` ones."""
    base = os.environ if base is None else base
    env = {
        k: v
        for k, v in base.items()
        if not k.startswith(_SECRET_ENV_PREFIXES) and k not in _SECRET_ENV_NAMES
    }
    env.update(note.environ())
    return env


async def run_command(
    argv: Sequence[str],
    note: Notification,
    *,
    timeout_s: float,
    base_env: Mapping[str, str] | None = None,
) -> Delivery:
    """Run one command hook for ``note`` and wait for it, at most ``timeout_s``.

    Given the argv (its first item is looked up on ``PATH``) and the environment to start
    from; returns the :class:`Delivery`. A cancelled call kills the command's process group
    before it re-raises, so no hook outlives the daemon's interest in it.
    """
    if not argv:
        return Delivery(False, "cannot start: empty command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=hook_environment(note, base_env),
            start_new_session=True,  # its own process group, so a timeout kills its children
        )
    except OSError as exc:
        return Delivery(False, f"cannot start {argv[0]!r}: {exc.strerror or exc}")
    tail = bytearray()

    stdin, stderr = proc.stdin, proc.stderr
    if stdin is None or stderr is None:  # cannot happen with PIPE: for the type checker
        raise RuntimeError("the hook's pipes were not opened")

    async def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # A hook that ignores its stdin may exit before reading it: that is its right.
            stdin.write(note.body() + b"\n")
            await stdin.drain()
            stdin.close()
            await stdin.wait_closed()

    async def drain_stderr() -> None:
        while chunk := await stderr.read(65536):
            tail.extend(chunk)
            del tail[:-STDERR_TAIL_BYTES]

    def stderr_text() -> str:
        return bytes(tail).decode("utf-8", "replace").strip()

    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(feed(), drain_stderr())
            status = await proc.wait()
    except TimeoutError:
        await _kill_group(proc)
        return Delivery(False, f"timed out after {timeout_s:g} s", None, stderr_text())
    except BaseException:
        await _kill_group(proc)
        raise
    detail = f"killed by signal {-status}" if status < 0 else f"exit {status}"
    return Delivery(status == 0, detail, status, stderr_text())


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    # Shielded: a second cancellation must not leave a zombie behind.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(proc.wait())


def sign(secret: bytes, body: bytes) -> str:
    """Given the webhook secret and the exact body, return the signature header's value
    (``sha256=`` and the hex HMAC-SHA256)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """Given the secret, the body received and the signature header (or ``None``), return
    whether the signature is right; compares in constant time. For receivers and tests."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def read_secret_file(path: str) -> bytes:
    """Given the path of ``hooks.webhook_secret_file``, return the secret (without a final
    line break); raises :class:`ConfigError` (one line) for an unreadable or empty file."""
    try:
        with open(path, "rb") as f:
            secret = f.read().rstrip(b"\r\n")
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror or exc}"
        raise ConfigError("hooks.webhook_secret_file", [problem]) from None
    if not secret:
        raise ConfigError("hooks.webhook_secret_file", [f"{path} is empty"])
    return secret


async def post_webhook(
    session: aiohttp.ClientSession,
    url: str,
    note: Notification,
    *,
    delivery_id: str,
    secret: bytes | None,
    timeout_s: float,
) -> Delivery:
    """POST ``note`` to ``url`` once and return the :class:`Delivery`.

    Given an open session, the id that names this notification on every retry, the secret
    (``None``: unsigned) and the time the whole exchange may take.
    """
    body = note.body()
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: note.event,
        DELIVERY_HEADER: delivery_id,
    }
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            # The answer's body means nothing to syncd; reading a little lets the connection
            # be reused without trusting the receiver to send a short one.
            await resp.content.read(4096)
            ok = 200 <= resp.status < 300
            return Delivery(ok, f"HTTP {resp.status}", resp.status)
    except TimeoutError:
        return Delivery(False, f"timed out after {timeout_s:g} s")
    except aiohttp.ClientError as exc:
        # A token in the URL's query must not reach the log or the ledger.
        text = str(exc).replace(url, url.split("?", 1)[0])
        return Delivery(False, f"cannot reach the webhook: {type(exc).__name__}: {text}")
