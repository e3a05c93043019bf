"""A small client of systemd's readiness protocol (``sd_notify``), spoken by syncd itself.

Under a unit with ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, the address of a datagram
socket it listens on, and with ``WatchdogSec=`` also ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.
The daemon tells it ``READY=1`` once the ledger is open and the watches are set, keeps a
one-line ``STATUS=`` current, pings ``WATCHDOG=1`` from the event loop (so a stuck loop stops
the pings and systemd restarts the service), and says ``RELOADING=1`` on SIGHUP and
``STOPPING=1`` when it shuts down.

Outside systemd (no ``NOTIFY_SOCKET``, e.g. in a container or a terminal) every call is a
no-op. Sending never raises and never blocks: a notification is advice to the service manager,
and losing one must not hurt the uploads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType

log = logging.getLogger(__name__)


def _parse_address(raw: str) -> str | None:
    """Given ``NOTIFY_SOCKET``, return the ``AF_UNIX`` address to send to, or ``None``.

    A leading ``@`` names a socket in the abstract namespace (Linux spells it with a NUL
    byte); an absolute path names a socket file. Anything else (a relative path, or the
    ``vsock:`` addresses that systemd 254 added for virtual machines) is not supported.
    """
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None


def _watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """Given the environment and our pid, return how often to ping, or ``None`` for never.

    systemd's own client (``sd_watchdog_enabled``) ignores ``WATCHDOG_USEC`` when
    ``WATCHDOG_PID`` names another process: the variables may have been inherited from a
    parent that the watchdog is really about. Pinging at half the timeout leaves room for
    one late tick, as ``sd_watchdog_enabled(3)`` recommends.
    """
    raw_usec = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw_usec)
    except ValueError:
        if raw_usec:
            log.debug("ignoring WATCHDOG_USEC=%r: not an integer", raw_usec)
        return None
    if usec <= 0:
        return None
    raw_pid = env.get("WATCHDOG_PID", "")
    if raw_pid:
        try:
            watchdog_pid = int(raw_pid)
        except ValueError:
            log.debug("ignoring the watchdog: WATCHDOG_PID=%r is not a pid", raw_pid)
            return None
        if watchdog_pid != pid:
            log.debug("ignoring the watchdog: it is for pid %d, we are %d", watchdog_pid, pid)
            return None
    return usec / 2 / 1_000_000


def _one_line(text: str) -> str:
    """Return ``text`` with line breaks turned into spaces (a newline ends a ``KEY=value``)."""
    return " ".join(text.split("\n")).replace("\r", " ").strip()


class Notifier:
    """sd_notify client; a no-op when ``NOTIFY_SOCKET`` is unset.

    Given the socket address (``NOTIFY_SOCKET``'s value, or ``None`` to disable) and the
    watchdog ping interval in seconds (``None`` when there is no watchdog). Usually built with
    :meth:`from_env`. Methods never raise on send failure: the first failure is logged at debug
    level, later ones are dropped silently. Use it as a context manager or call :meth:`close`.
    """

    def __init__(self, address: str | None, watchdog_interval_s: float | None = None) -> None:
        self.watchdog_interval_s: float | None = None
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._failed_once = False
        self._last_status: str | None = None
        if address is None:
            return
        target = _parse_address(address)
        if target is None:
            log.debug("NOTIFY_SOCKET=%r is not a supported address; not notifying", address)
            return
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            log.debug("cannot create the notify socket (%s); not notifying", exc)
            return
        # A full receive queue (a busy or hung manager) must drop a message, not stall the loop.
        sock.setblocking(False)
        self._sock = sock
        self._address = target
        self.watchdog_interval_s = watchdog_interval_s

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """Build a notifier from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        Given the environment (default ``os.environ``); returns a notifier, disabled when
        ``NOTIFY_SOCKET`` is unset or unusable. The watchdog interval is half of
        ``WATCHDOG_USEC``, and ``None`` unless ``WATCHDOG_PID`` is unset or is our pid.
        """
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        interval_s = _watchdog_interval_s(env, os.getpid()) if address else None
        return cls(address, interval_s)

    @property
    def enabled(self) -> bool:
        """Whether notifications are sent (a usable ``NOTIFY_SOCKET`` was given)."""
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send one notification made of ``KEY=value`` fields.

        Given the fields; returns whether the datagram was handed to the kernel. Never raises.
        """
        sock = self._sock
        if sock is None or self._address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            sock.sendto(message, self._address)
        except OSError as exc:
            # ENOENT/ECONNREFUSED (manager gone or restarting), EAGAIN (its queue is full).
            if not self._failed_once:
                self._failed_once = True
                log.debug("sd_notify to %r failed (%s); further failures are silent", self, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        """Say ``READY=1`` (startup or a reload is complete), with an optional status line."""
        if status is None:
            self.send("READY=1")
            return
        line = _one_line(status)
        if self.send("READY=1", f"STATUS={line}"):
            self._last_status = line

    def status(self, text: str) -> None:
        """Set the one-line status ``systemctl status`` shows; unchanged text is not resent."""
        line = _one_line(text)
        if line != self._last_status and self.send(f"STATUS={line}"):
            self._last_status = line

    def reloading(self) -> None:
        """Say ``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd 253+ matches reloads by it).

        Call :meth:`ready` when the reload is done.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> None:
        """Say ``STOPPING=1``: shutdown has begun."""
        self.send("STOPPING=1")

    def extend_timeout(self, timeout_s: float) -> None:
        """Ask for ``timeout_s`` more seconds to finish starting, reloading or stopping."""
        self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(timeout_s * 1_000_000))}")

    def watchdog(self) -> None:
        """Ping the watchdog (``WATCHDOG=1``); does nothing when no watchdog is configured."""
        if self.watchdog_interval_s is not None:
            self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket; later calls do nothing. Safe to call twice."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        address = self._address
        shown = "@" + address[1:] if address and address.startswith("\0") else address
        return f"Notifier({shown!r}, watchdog_interval_s={self.watchdog_interval_s})"


async def watchdog_loop(notifier: Notifier) -> None:
    """Ping the watchdog every ``notifier.watchdog_interval_s`` until cancelled.

    Given the notifier; returns at once when it has no watchdog. The pings come from the event
    loop on purpose: a loop blocked by a bug stops them, and systemd then restarts the service.
    """
    interval_s = notifier.watchdog_interval_s
    if interval_s is None or not notifier.enabled:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)


__all__ = ["Notifier", "watchdog_loop"]
