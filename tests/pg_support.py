"""A private PostgreSQL server for the tests: never the machine's own server on 5432.

``PgServer`` runs ``initdb`` into a fresh temporary folder and ``pg_ctl start`` on a free
loopback port, with its Unix socket in that folder too (trust authentication for the user
``syncd``, ``fsync=off``: the data is thrown away). Each test gets a database of its own
(``CREATE DATABASE``, from the empty ``template1``), so tests never share state.

The server binaries are found in ``/usr/lib/postgresql/*/bin`` (Debian's layout, not on
``PATH``) or on ``PATH``; without them the fixture fails with the command that installs them.
``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user
(created by the Debian package), in a folder that user owns outside pytest's private tree.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SERVER_USER = "postgres"  # who runs the server when the tests run as root
DB_USER = "syncd"
INSTALL_HINT = "install it with: apt-get install -y postgresql (make test-deps does this)"


def find_bin_dir() -> Path:
    """Return the folder holding ``initdb`` and ``pg_ctl`` (newest version first).

    Raises RuntimeError with the install command when there is none.
    """
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
        reverse=True,
    )
    found = shutil.which("initdb")
    if found:
        candidates.append(found)
    for initdb in candidates:
        folder = Path(initdb).parent
        if (folder / "pg_ctl").exists():
            return folder
    raise RuntimeError(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One private PostgreSQL server in a temporary folder (see the module docstring)."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(
                    f"tests run as root but there is no {SERVER_USER!r} user to run the "
                    f"PostgreSQL server as (initdb refuses root); {INSTALL_HINT}"
                ) from None
        self.folder = Path(tempfile.mkdtemp(prefix="syncd-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = _free_port()
        if self.user is not None:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self._databases = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=self.folder,
            **kwargs,
        )

    def _check(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        if proc.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr}\n{tail}")

    def init(self) -> None:
        """Create the cluster (``initdb``, trust authentication, user ``syncd``)."""
        proc = self._run(
            "initdb", "-D", str(self.data), "-U", DB_USER, "--auth=trust", "-E", "UTF8",
            "--no-instructions",
        )  # fmt: skip
        self._check(proc, "initdb")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off"
        )
        proc = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )
        self._check(proc, "pg_ctl start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, then shut down cleanly)."""
        proc = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self._check(proc, "pg_ctl stop")

    def restart(self) -> None:
        """Stop (``fast``) and start again on the same port: every client connection drops."""
        self.stop()
        self.start()

    def url(self, database: str = "postgres") -> str:
        """The connection URL of ``database`` over TCP on the loopback address."""
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def new_database_name(self) -> str:
        """A database name not used before on this server."""
        self._databases += 1
        return f"t{self._databases}"

    def close(self) -> None:
        """Stop the server if it runs and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("fast")
            except RuntimeError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def pg_server() -> Iterator[PgServer]:
    """A started private server, stopped and removed afterwards."""
    server = PgServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()
