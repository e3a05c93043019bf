"""One exception tree for syncd.

Every error a user can see derives from :class:`SyncdError` and carries the process exit code
that ``syncd.cli`` maps it to. API failures are classified once, at the client boundary, into
the :class:`ApiError` subclasses below; nothing downstream inspects HTTP statuses again.
"""

from __future__ import annotations

from collections.abc import Sequence

# Exit codes (sysexits.h where one fits), shared by every command.
EXIT_OK = 0
EXIT_FAILURE = 1  # generic failure; also "not found" for query commands
EXIT_USAGE = 2  # argparse's own code for bad command lines
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the remote API refused us (auth, credits)
EXIT_SOFTWARE = 70  # EX_SOFTWARE: an internal bug (a traceback was logged)
EXIT_CANTCREAT = 73  # EX_CANTCREAT: cannot write the ledger (full disk, read-only)
EXIT_IOERR = 74  # EX_IOERR
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: the ledger is owned by another daemon
EXIT_DATAERR = 65  # EX_DATAERR: the ledger is corrupt
EXIT_CONFIG = 78  # EX_CONFIG: the configuration is invalid


class SyncdError(Exception):
    """Base of every error syncd reports to a user as one line.

    Given a message; ``exit_code`` is the process exit status the CLI maps it to.
    """

    exit_code: int = EXIT_FAILURE


class ConfigError(SyncdError):
    """The configuration is invalid.

    Given the file name (or a description of the source) and every problem found, each as
    ``"key.path: what is wrong"``, so that all of them are reported at once.
    """

    exit_code = EXIT_CONFIG

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{source}: {count} problem{'s' if count != 1 else ''}"
        super().__init__(head + "".join(f"\n  - {p}" for p in self.problems))


class LedgerError(SyncdError):
    """The ledger cannot be used (I/O error, unexpected state)."""

    exit_code = EXIT_IOERR


class LedgerLocked(LedgerError):
    """Another daemon owns the ledger. Given the ledger path and the holder's pid (if known)."""

    exit_code = EXIT_TEMPFAIL

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"ledger {path} is owned by {holder}; only one daemon may use a ledger")


class LedgerCorrupt(LedgerError):
    """The ledger failed its integrity check or is not a SQLite database."""

    exit_code = EXIT_DATAERR

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(
            f"ledger {path} is corrupt ({detail}); refusing to start. Move it aside with "
            f"`mv {path} {path}.corrupt` and restore a backup (`cp BACKUP {path}`), "
            "or start from empty, which re-hashes every file"
        )


class LedgerUnwritable(LedgerError):
    """The ledger cannot be written (disk full, read-only file system, permissions)."""

    exit_code = EXIT_CANTCREAT


class LedgerUnreachable(LedgerUnwritable):
    """The shared (PostgreSQL) ledger cannot be reached *for now*: the server is down,
    restarting, refusing connections or out of resources. Writers wait and retry; reads fail
    with this error until it is back. Given a message naming the server (never a password)."""


class ClaimLost(LedgerError):
    """This host no longer holds the claim on a content it was working on: its lease expired
    and another host took the content over (or finished it). The send is abandoned. Given a
    message naming the content."""


class ApiError(SyncdError):
    """A failed exchange with the MAVI API, classified once at the client boundary.

    Given a message, the HTTP status (``None`` for transport failures) and the endpoint name
    (``"upload"``, ``"signed_url"``, ``"metadata"``, ``"storage"``, ...).
    """

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str, *, status: int | None = None, endpoint: str = "") -> None:
        self.status = status
        self.endpoint = endpoint
        super().__init__(message)


class ApiThrottled(ApiError):
    """HTTP 400 or 429: throttled *or* rejected; the body cannot tell which (see design)."""


class ApiRetryable(ApiError):
    """5xx, connection errors, timeouts, malformed answers: try again later."""


class ApiUnusableAnswer(ApiRetryable):
    """HTTP 2xx whose answer names no usable asset (not an API answer, a failure envelope, no
    or an invalid asset id, too long, or answered before the whole body was sent): the service
    took the request, so after an upload it may hold an asset nobody can name."""


class ApiAuthError(ApiError):
    """HTTP 401 or 403: the key is wrong or the account is disabled. Stop uploading."""


class ApiNoCredits(ApiError):
    """HTTP 402: the account is out of credits. Pause until it is recharged."""


class ApiPermanent(ApiError):
    """415 and other 4xx: this request will never succeed as sent."""


class ApiNotFound(ApiPermanent):
    """The asset id is unknown to the service (metadata/delete answered "Asset not found")."""


class SignedUrlExpired(ApiPermanent):
    """The signed URL was refused as expired; a new one must be allocated."""


class ApiAlreadyStored(ApiPermanent):
    """The storage host refused a signed-URL upload as a conflict (HTTP 409): the asset is past
    WAITING, so an earlier send (before a crash, or one whose answer was lost) delivered its
    bytes. Nothing is wrong with the file; its status is to be polled."""
