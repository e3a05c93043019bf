"""The API key: found in the environment, a key file or a systemd credential, never in the
YAML, and never put in a message or a log line.

Given a loaded :class:`~syncd.config.Config` (for ``api.key_file`` and the config's name in
messages), :func:`resolve_api_key` returns the key cleaned of the usual copy-and-paste slips or
raises one :class:`~syncd.errors.ConfigError`.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING

from syncd.errors import ConfigError

if TYPE_CHECKING:
    from syncd.config import Config

log = logging.getLogger(__name__)

CREDENTIAL_NAME = "mavi_api_key"
"""The systemd credential (``LoadCredential=mavi_api_key:...``) the key is read from."""

_BEARER_RE = re.compile(r"bearer\s+", re.IGNORECASE)


def _clean_key(raw: str, origin: str) -> str:
    """Return the key without surrounding whitespace, byte order mark, quotes or ``Bearer``
    prefix (each a common copy-and-paste slip); raises :class:`ConfigError` for a key that
    cannot go in an HTTP header. Never puts the key in a message."""
    key = raw.lstrip("\ufeff").strip()
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":
        # Docker's --env-file and some secret stores keep the quotes of KEY="value".
        log.warning("the API key from %s is in quotes; syncd strips them", origin)
        key = key[1:-1].strip()
    bearer = _BEARER_RE.match(key)
    if bearer:
        log.warning("the API key from %s starts with 'Bearer '; syncd strips it", origin)
        key = key[bearer.end() :]
    for i, char in enumerate(key, 1):
        if not "!" <= char <= "~":
            what = (
                "a space or a line break"
                if char.isspace()
                else "a control character"
                if not char.isprintable()
                else "a non-ASCII character"
            )
            raise ConfigError(
                origin,
                [
                    f"the API key contains {what} (character {i} of {len(key)}); API keys are "
                    "one line of printable ASCII"
                ],
            )
    return key


def _read_key_file(path: str, origin: str) -> str:
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(origin, [f"cannot read key file {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(origin, [f"key file {path} is not UTF-8 text"]) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "key file %s is readable by group or others (mode %o); fix with: chmod 600 %s",
            path,
            stat.S_IMODE(st.st_mode),
            path,
        )
    return _clean_key(raw, f"key file {path}")


def resolve_api_key(cfg: Config, env: Mapping[str, str] | None = None) -> str:
    """Find the API key.

    Given the config and the environment (default ``os.environ``); looks in order at
    ``MAVI_API_KEY``, ``MAVI_API_KEY_FILE``, ``api.key_file`` and
    ``$CREDENTIALS_DIRECTORY/mavi_api_key``. Returns the key, stripped of whitespace and of a
    ``Bearer`` prefix; raises :class:`ConfigError` when none is found or it is empty.
    """
    env = os.environ if env is None else env
    if env.get("MAVI_API_KEY", "").strip():
        key = _clean_key(env["MAVI_API_KEY"], "MAVI_API_KEY")
    elif env.get("MAVI_API_KEY_FILE"):
        key = _read_key_file(env["MAVI_API_KEY_FILE"], "MAVI_API_KEY_FILE")
    elif cfg.api.key_file:
        key = _read_key_file(cfg.api.key_file, f"{cfg.source}: api.key_file")
    elif env.get("CREDENTIALS_DIRECTORY") and os.path.exists(
        os.path.join(env["CREDENTIALS_DIRECTORY"], CREDENTIAL_NAME)
    ):
        key = _read_key_file(
            os.path.join(env["CREDENTIALS_DIRECTORY"], CREDENTIAL_NAME), "systemd credential"
        )
    else:
        raise ConfigError(
            cfg.source,
            [
                "no API key: set MAVI_API_KEY, or api.key_file, or a systemd credential "
                f"named {CREDENTIAL_NAME}"
            ],
        )
    if not key:
        raise ConfigError(cfg.source, ["the API key is empty"])
    return key
