"""Bad configurations and keys, met where users meet them: the ``syncd`` command.

A config with mistakes gets every one listed at once with its key path, exit status 78
(EX_CONFIG) and no traceback, from ``syncd config check`` and from ``syncd run`` alike; ``run``
then starts nothing. A key with the slips people make when they paste one (a trailing newline,
a byte order mark, quotes, ``Bearer ``) is cleaned, with a warning where it matters, and works
against the emulator; a key that cannot be one is refused at start, naming where it came from
and never showing it. Watch roots nested in each other are allowed: a file under both is one
path record, owned by the deepest root, whose settings apply to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from daemon_process import query
from pipeline_support import (
    config_data,
    received,
    running,
    sha256_of,
    state_of,
    subprocess_env,
    syncd_cmd,
    wait_done,
    wait_for,
)
from samples import write_media

from syncd.config import parse_config
from syncd.emulator import EmulatorServer
from syncd.errors import EXIT_CONFIG


def syncd(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        syncd_cmd(*args),
        capture_output=True,
        text=True,
        env=subprocess_env(**env),
        cwd=cwd,
        timeout=60,
        check=False,
    )


async def syncd_async(*args: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    """Run ``syncd`` without blocking the loop (the emulator answers from this loop)."""
    proc = await asyncio.create_subprocess_exec(
        *syncd_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(**env),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"syncd {' '.join(args)} did not finish: {err.decode()}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def problems_in(stderr: str) -> dict[str, str]:
    """The ``  - key.path: message`` lines of a config error, by key path."""
    found = {}
    for line in stderr.splitlines():
        if line.startswith("  - "):
            key, _, message = line[4:].partition(": ")
            found[key] = message
    return found


COMMANDS = [("config", "check"), ("run", "-c")]


def run_or_check(command: tuple[str, ...], cfg_file: Path) -> subprocess.CompletedProcess[str]:
    # A valid key, so that only the config can be at fault.
    return syncd(*command, str(cfg_file), cwd=cfg_file.parent, MAVI_API_KEY="sk-mavi-ok-123")


# ------------------------------------------------------------------------------------------
# Every problem at once, with its key path


MANY_MISTAKES = """\
watch:
  - path: media/incoming
    recursive: 1
    exclude: "*.tmp"
  - path: /srv/cam
    pollin: true
api:
  key_file: secrets/mavi.key
  read_timeout_s: 0
rate_limits:
  upload_per_s: -1
  metadata_per_s: 0
  signed_url_per_s: .nan
  cooldown_max_s: .inf
settle:
  quiet_s: 1.0e+400
ledger:
  path: state/ledger.db
upload:
  workers: 2.5
  max_attempts: 0
  max_file_bytes: 99999999999999999999999
logs:
  level: debug
"""

EXPECTED_PROBLEMS = {
    "watch[0].path": "must be an absolute path, got 'media/incoming'",
    "watch[0].recursive": "expected true or false, got number 1",
    "watch[0].exclude": "expected a list, got string '*.tmp'",
    "watch[1].pollin": "unknown key (known here: after_success, after_success_dry_run, exclude, ",
    "api.key_file": "must be an absolute path, got 'secrets/mavi.key'",
    "api.read_timeout_s": "must be greater than 0, got 0",
    "rate_limits.upload_per_s": "must be greater than 0, got -1",
    "rate_limits.metadata_per_s": "must be greater than 0, got 0",
    "rate_limits.signed_url_per_s": "must be a finite number, got nan",
    "rate_limits.cooldown_max_s": "must be a finite number, got inf",
    "settle.quiet_s": "must be a finite number, got inf",
    "ledger.path": "must be an absolute path, got 'state/ledger.db'",
    "upload.workers": "expected integer, got number 2.5",
    "upload.max_attempts": "must be at least 1, got 0",
    "upload.max_file_bytes": "is far too large (at most 10^15)",
    "logs": "unknown key (known here: api, fleet, hooks, http, ledger, log, ",
}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_mistake_is_listed_with_its_key_path(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    cfg_file = tmp_path / "syncd.yaml"
    cfg_file.write_text(MANY_MISTAKES)
    res = run_or_check(command, cfg_file)
    assert res.returncode == EXIT_CONFIG, res.stderr
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    head = res.stderr.splitlines()[0]
    assert head == f"syncd: {cfg_file}: {len(EXPECTED_PROBLEMS)} problems"
    found = problems_in(res.stderr)
    assert found.keys() == EXPECTED_PROBLEMS.keys()
    for key, message in EXPECTED_PROBLEMS.items():
        assert found[key].startswith(message), (key, found[key])
    assert "sk-mavi-ok-123" not in res.stderr
    # ``run`` refused before touching anything.
    assert sorted(os.listdir(tmp_path)) == ["syncd.yaml"]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "watch:\n  - path: /a\n    recursive: [true\n",
            "line 4, column 1: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence at line 3, column 16)",
        ),
        (
            'upload:\n  workers: "2\n',
            "line 3, column 1: found unexpected end of stream "
            "(while scanning a quoted scalar at line 2, column 12)",
        ),
        ("watch:\n\t- path: /x\n", "line 2, column 1: found character '\\t' that cannot start"),
        ("watch: - /a\n", "line 1, column 8: sequence entries are not allowed here"),
        # PyYAML keeps the last of two equal keys: the first watch list would vanish unseen.
        (
            "watch:\n  - path: /a\nupload:\n  workers: 2\nwatch:\n  - path: /b\n",
            "line 5, column 1: duplicate key 'watch' (first given at line 1)",
        ),
        (
            "upload:\n  workers: 2\n  max_attempts: 3\n  workers: 8\n",
            "line 4, column 3: duplicate key 'workers' (first given at line 2)",
        ),
    ],
    ids=["unclosed-bracket", "unclosed-quote", "tab", "list-in-mapping", "dup-top", "dup-nested"],
)
def test_invalid_yaml_names_line_and_column(
    tmp_path: Path, command: tuple[str, ...], text: str, expected: str
) -> None:
    cfg_file = tmp_path / "syncd.yaml"
    cfg_file.write_text(text)
    res = run_or_check(command, cfg_file)
    assert res.returncode == EXIT_CONFIG
    lines = res.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in res.stderr, res.stderr
    assert lines[0] == f"syncd: {cfg_file}: 1 problem"
    assert lines[1].startswith(f"  - <yaml>: invalid YAML at {expected}")


def test_yaml_merge_keys_may_still_override(tmp_path: Path) -> None:
    cfg_file = tmp_path / "syncd.yaml"
    cfg_file.write_text(
        "watch:\n  - &cam {path: /srv/cam, polling: true}\n  - {<<: *cam, path: /srv/cam2}\n"
    )
    res = syncd("config", "check", str(cfg_file), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    roots = yaml.safe_load(res.stdout)["watch"]
    assert [(r["path"], r["polling"]) for r in roots] == [("/srv/cam", True), ("/srv/cam2", True)]


@pytest.mark.parametrize(
    ("file_bytes", "expected"),
    [
        (b"\xff\xfeu\x00p\x00", "<file>: not UTF-8 text"),
        (b"[1, 2]\n", "<top>: expected a mapping, got a list"),
        (b"{[a]: 1}\n", "<yaml>: invalid YAML at line 1, column 2: found unhashable key"),
    ],
    ids=["utf-16", "a-list", "unhashable-key"],
)
def test_a_file_that_is_not_a_config_is_one_clear_problem(
    tmp_path: Path, file_bytes: bytes, expected: str
) -> None:
    cfg_file = tmp_path / "syncd.yaml"
    cfg_file.write_bytes(file_bytes)
    res = run_or_check(("run", "-c"), cfg_file)
    assert res.returncode == EXIT_CONFIG
    assert problems_in(res.stderr) and f"  - {expected}" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_config_that_is_a_folder_or_missing_is_one_clear_problem(tmp_path: Path) -> None:
    for target, why in ((tmp_path, "Is a directory"), (tmp_path / "nope.yaml", "No such file")):
        res = syncd("run", "-c", str(target), cwd=tmp_path, MAVI_API_KEY="sk-mavi-ok-123")
        assert res.returncode == EXIT_CONFIG
        assert res.stderr.splitlines() == [
            f"syncd: {target}: 1 problem",
            f"  - <file>: cannot read: {why}" + res.stderr.split(why, 1)[1].rstrip("\n"),
        ]


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("mavi-backend.memories.ai/serve/api/v2", "must start with http:// or https://"),
        ("ftp://mavi-backend.memories.ai/v2", "must start with http:// or https://"),
        ("https://", "has no host name"),
        ("https:///serve/api/v2", "has no host name"),
        ("http://127.0.0.1:99999/serve/api/v2", "not a valid URL (Port out of range 0-65535)"),
        ("https://api.example/serve api/v2", "must not contain spaces"),
        ("https://me:hunter2@api.example/v2", "must not contain a user name or password"),
        ("https://api.example/v2?key=hunter2", "must not have a query (?...) or a fragment"),
        ("https://api.example/v2#top", "must not have a query (?...) or a fragment"),
    ],
)
def test_an_unusable_base_url_is_a_config_problem(
    tmp_path: Path, base_url: str, expected: str
) -> None:
    cfg_file = tmp_path / "syncd.yaml"
    cfg_file.write_text(yaml.safe_dump({"api": {"base_url": base_url}}))
    res = syncd("config", "check", str(cfg_file), cwd=tmp_path)
    assert res.returncode == EXIT_CONFIG
    found = problems_in(res.stderr)
    assert list(found) == ["api.base_url"], res.stderr
    assert found["api.base_url"].startswith(expected)
    assert "hunter2" not in res.stderr


# ------------------------------------------------------------------------------------------
# Overlapping roots


def test_nested_roots_are_accepted_but_the_same_folder_twice_is_not(tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "cam").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(media)
    (tmp_path / "camlink").symlink_to(media / "cam")

    def check(*roots: Path | str) -> tuple[int, dict[str, str]]:
        cfg_file = tmp_path / "syncd.yaml"
        cfg_file.write_text(yaml.safe_dump({"watch": [{"path": str(r)} for r in roots]}))
        res = syncd("config", "check", str(cfg_file), cwd=tmp_path)
        assert "Traceback" not in res.stderr
        return res.returncode, problems_in(res.stderr)

    assert check(media, media / "cam") == (0, {})
    assert check(media / "cam", media) == (0, {})
    assert check(media, f"{media}/./") == (
        EXIT_CONFIG,
        {"watch[1].path": "same folder as watch[0].path"},
    )
    assert check(media, tmp_path / "alias") == (
        EXIT_CONFIG,
        {"watch[1].path": f"same folder as watch[0].path (both are {media})"},
    )
    # Inside another root only through a symlink: each file would have two paths.
    code, found = check(media, tmp_path / "camlink")
    assert code == EXIT_CONFIG
    assert found["watch[1].path"].startswith("overlaps watch[0].path through a symbolic link")


async def paths_table(ledger: Path) -> list[tuple[str, str, str]]:
    rows = await asyncio.to_thread(
        query, ledger, "SELECT CAST(path AS TEXT), root, state FROM paths ORDER BY 1"
    )
    return [(str(p), str(r), str(s)) for p, r, s in rows]


async def test_a_file_under_nested_roots_is_one_path_record_owned_by_the_deepest_root(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    media = tmp_path / "media"
    cam = media / "cam"
    (cam / "day1").mkdir(parents=True)
    data = config_data(tmp_path, emulator, [media, cam])
    # The inner root has rules of its own: they, not the outer root's, apply to its files.
    data["watch"][1]["exclude"] = ["*.mov"]
    cfg = parse_config(data, "nested-roots")
    ledger = Path(cfg.ledger.path)
    found_at_start = [media / "top.mp4", cam / "old.mp4", cam / "day1" / "older.mp4"]
    for i, p in enumerate(found_at_start):
        write_media(p, size=20_000, seed=i)
    async with running(cfg, emulator.key) as d:
        # Files that arrive while it runs reach both roots' watches.
        write_media(cam / "skip.mov", size=20_000, seed=10)
        arrived = [cam / "new.mp4", cam / "day1" / "deep.mp4", media / "mid.mp4"]
        for i, p in enumerate(arrived):
            write_media(p, size=20_000, seed=20 + i)
        for p in found_at_start + arrived:
            await wait_done(d, p, 30)
        # skip.mov came before the others and has settled long since; the inner root
        # excludes it, so nothing may have recorded or sent it.
        assert await state_of(d, cam / "skip.mov") == (None, None, None)
    expected = {str(p): str(media) for p in (media / "top.mp4", media / "mid.mp4")}
    expected |= {
        str(p): str(cam) for p in (cam / "old.mp4", cam / "new.mp4", cam / "day1" / "older.mp4")
    }
    expected[str(cam / "day1" / "deep.mp4")] = str(cam)
    assert {p: r for p, r, _ in await paths_table(ledger)} == expected
    uploads = emulator.requests("upload")
    assert sorted(r.filename for r in uploads) == sorted(p.name for p in found_at_start + arrived)
    assert sorted(received(emulator).values()) == sorted(
        sha256_of(p) for p in found_at_start + arrived
    )

    # A restart rescans both roots: nothing new is hashed, recorded or sent.
    before = await paths_table(ledger)
    async with running(cfg, emulator.key) as d:
        await wait_for(
            lambda: d.counters.unchanged >= len(found_at_start + arrived),
            30,
            what="rescan of both roots",
        )
        assert d.counters.hashed == 0
    assert await paths_table(ledger) == before
    assert len(emulator.requests("upload")) == len(uploads)


# ------------------------------------------------------------------------------------------
# API keys


def key_setup(tmp_path: Path, how: str, value: str, mode: int = 0o600) -> dict[str, str]:
    """Put ``value`` where ``how`` says; return the environment that points syncd at it."""
    if how == "env":
        return {"MAVI_API_KEY": value}
    if how == "credential":
        creds = tmp_path / "credentials"
        creds.mkdir()
        (creds / "mavi_api_key").write_text(value, newline="")
        (creds / "mavi_api_key").chmod(mode)
        return {"CREDENTIALS_DIRECTORY": str(creds)}
    key_file = tmp_path / "mavi.key"
    if how == "folder":
        key_file.mkdir()
    elif how == "file":
        key_file.write_text(value, newline="")
        key_file.chmod(mode)
    return {"MAVI_API_KEY_FILE": str(key_file)}


@pytest.mark.parametrize(
    ("how", "value", "expected", "secret"),
    [
        ("none", "", "no API key: set MAVI_API_KEY, or api.key_file, or a systemd credential", ""),
        ("file", "\n  \n", "the API key is empty", ""),
        ("missing", "", "cannot read key file", ""),
        ("folder", "", "cannot read key file", ""),
        ("env", "sk-mavi-abc def", "contains a space or a line break (character 12 of 15)", "def"),
        ("file", "sk-mavi-one\nsk-mavi-two\n", "contains a space or a line break", "two"),
        ("env", "sk-mavi-ключ", "contains a non-ASCII character (character 9 of 12)", "ключ"),
        ("env", "sk-mavi-a\x07b", "contains a control character", "a\x07b"),
    ],
    ids=["none", "empty-file", "missing-file", "file-is-a-folder", "inner-space", "two-lines",
         "non-ascii", "control-char"],
)  # fmt: skip
def test_a_missing_or_unusable_key_stops_run_at_once(
    tmp_path: Path, how: str, value: str, expected: str, secret: str
) -> None:
    env = {} if how == "none" else key_setup(tmp_path, how, value)
    cfg_file = tmp_path / "syncd.yaml"
    ledger = tmp_path / "state" / "ledger.db"
    cfg_file.write_text(
        yaml.safe_dump({"watch": [{"path": str(tmp_path)}], "ledger": {"path": str(ledger)}})
    )
    res = syncd("run", "-c", str(cfg_file), cwd=tmp_path, **env)
    assert res.returncode == EXIT_CONFIG
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 2 and lines[0].endswith(": 1 problem"), res.stderr
    assert expected in lines[1]
    if secret:
        assert secret not in res.stderr  # where the key came from, never the key
    assert not ledger.parent.exists()  # refused before anything started


# Slips made when pasting a key: each is cleaned, and the key works.
@pytest.mark.parametrize(
    ("how", "value", "mode", "warning"),
    [
        ("file", "{key} \n\n", 0o600, None),
        ("file", "\ufeff{key}\r\n", 0o600, None),
        ("credential", "{key}\n", 0o600, None),
        ("file", "{key}\n", 0o644, "others (mode 644); fix with: chmod 600"),
        ("file", "{key}\n", 0o640, "others (mode 640); fix with: chmod 600"),
        ("env", "Bearer {key}", 0, "starts with 'Bearer '; syncd strips it"),
        ("env", "bearer\t{key}\n", 0, "starts with 'Bearer '; syncd strips it"),
        ("env", '"{key}"', 0, "is in quotes; syncd strips them"),
    ],
    ids=["trailing-space-and-newlines", "bom-and-crlf", "systemd-credential",
         "file-readable-by-others", "file-readable-by-group", "bearer", "bearer-tab",
         "quoted"],
)  # fmt: skip
async def test_a_key_with_paste_slips_is_cleaned_and_works(
    tmp_path: Path,
    emulator: EmulatorServer,
    how: str,
    value: str,
    mode: int,
    warning: str | None,
) -> None:
    root = tmp_path / "media"
    root.mkdir()
    sha = write_media(root / "clip.mp4", size=10_000)
    env = key_setup(tmp_path, how, value.format(key=emulator.key), mode)
    data = config_data(tmp_path, emulator, [root], log={"level": "debug", "format": "text"})
    cfg_file = tmp_path / "syncd.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    code, out, err = await syncd_async("sync", "--once", "-c", str(cfg_file), cwd=tmp_path, **env)
    assert code == 0, err
    assert list(received(emulator).values()) == [sha]  # the emulator took the cleaned key
    assert emulator.key not in out + err
    assert "Traceback" not in err
    about_key = [line for line in err.splitlines() if "API key" in line or "key file" in line]
    if warning is None:
        assert about_key == []
    else:
        assert len(about_key) == 1 and warning in about_key[0], err
        if "chmod" in warning:
            assert about_key[0].endswith(f"chmod 600 {env['MAVI_API_KEY_FILE']}")


async def test_sighup_with_a_broken_config_keeps_the_old_one_and_says_why_in_one_line(
    tmp_path: Path, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncd")
    root = tmp_path / "media"
    root.mkdir()
    cfg_file = tmp_path / "syncd.yaml"
    data = config_data(tmp_path, emulator, [root])
    cfg_file.write_text(yaml.safe_dump(data))
    cfg = parse_config(data, str(cfg_file))
    async with running(cfg, emulator.key, config_path=str(cfg_file)) as d:
        cfg_file.write_text("watch: [{path: media}]\nupload: {workers: 0}\n")
        os.kill(os.getpid(), signal.SIGHUP)  # the daemon's own handler, in this loop

        def rejected() -> list[str]:
            return [r.getMessage() for r in caplog.records if "config is invalid" in r.getMessage()]

        await wait_for(lambda: rejected(), 10, what="the reload refused")
        (line,) = rejected()
        assert "\n" not in line
        assert "watch[0].path: must be an absolute path" in line
        assert "upload.workers: must be at least 1" in line
        write_media(root / "a.mp4", size=10_000)
        await wait_done(d, root / "a.mp4", 30)  # the old config still runs
