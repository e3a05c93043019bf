"""The lock file pins every runtime dependency, hash-checked, and is what the tests run on."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"


def _pins() -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, hashes)`` from the lock file (pip's requirements format with the
    continuation lines joined)."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split()
        name, sep, version = spec.partition("==")
        assert sep, f"not pinned with ==: {spec}"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=sha256:")]
        assert len(hashes) == len(options), f"{spec}: only --hash options are allowed: {options}"
        pins[canonicalize_name(name)] = (version, hashes)
    return pins


def _dependencies() -> list[Requirement]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return [Requirement(d) for d in tomllib.load(f)["project"]["dependencies"]]


def test_every_dependency_is_pinned_within_its_range_with_hashes() -> None:
    pins = _pins()
    for req in _dependencies():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version), f"{req.name}=={version} is outside {req}"
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_the_lock_names_no_index_or_local_path() -> None:
    # The lock must work on any machine: no --index-url / --find-links of the one that made it.
    for line in LOCK.read_text().splitlines():
        assert not line.lstrip().startswith(("-i", "--index-url", "--extra-index-url", "-f"))
        assert "--find-links" not in line and "file:" not in line


def test_the_tests_run_on_the_locked_versions() -> None:
    # `make install` installs the lock with --require-hashes before the dev tools: what is
    # tested is what the image ships. Every package the lock pins is present at that version.
    for name, (version, _) in _pins().items():
        assert metadata.version(name) == version, f"{name}: installed {metadata.version(name)}"
