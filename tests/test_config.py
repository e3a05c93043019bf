"""Config: one schema, every problem at once with key paths, the example file, the API key."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncd.apikey import resolve_api_key
from syncd.config import effective_config, load_config, parse_config, schema_docs
from syncd.errors import EXIT_CONFIG, ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"


def syncd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAVI_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def test_example_config_loads_and_documents_every_key() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.watch[0].path == "/srv/media/incoming"
    text = EXAMPLE.read_text()
    data = yaml.safe_load(text)

    def has(path: str) -> bool:
        node: Any = data
        for part in path.split("."):
            if part.endswith("[]"):
                if part[:-2] in node and node[part[:-2]] == []:
                    return True  # an empty list by default: its items are shown in comments
                node = node[part[:-2]][0]
            else:
                if part not in node:
                    return False
                node = node[part]
        return True

    missing = [key for key, _type, _doc in schema_docs() if not has(key)]
    assert missing == []
    # Every key in the example carries the documented default, so the file doubles as docs.
    defaults = effective_config(parse_config({"watch": data["watch"]}, "defaults"))
    example = effective_config(cfg)
    example["watch"] = defaults["watch"]
    assert example == defaults


def test_three_mistakes_are_reported_together_with_key_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "watch:\n  - path: media/in\n    recurse: true\nupload:\n  workers: 0\nrate_limits:\n"
        "  upload_per_s: -1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    problems = info.value.problems
    assert any(p.startswith("watch[0].recurse: unknown key") for p in problems)
    assert any(p.startswith("watch[0].path: must be an absolute path") for p in problems)
    assert any(p.startswith("upload.workers: must be at least 1") for p in problems)
    assert any(p.startswith("rate_limits.upload_per_s: must be greater than 0") for p in problems)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"upload": {"workers": "four"}}, "upload.workers: expected integer, got string 'four'"),
        ({"settle": {"quiet_s": True}}, "settle.quiet_s: expected number, got boolean True"),
        ({"api": {"upload_mode": "fast"}}, "api.upload_mode: expected one of direct"),
        ({"watch": {"path": "/x"}}, "watch: expected a list"),
        ({"watch": [{"recursive": True}]}, "watch[0].path: required key is missing"),
        ({"ledger": {"path": "ledger.db"}}, "ledger.path: must be an absolute path"),
        ({"http": {"listen": "localhost"}}, "http.listen: expected HOST:PORT"),
        ({"http": {"allowed_hosts": ["ok.example", "a.b:80"]}}, "http.allowed_hosts[1]: expected"),
        ({"http": {"allowed_hosts": ["http://x"]}}, "http.allowed_hosts[0]: expected a host"),
        ({"http": {"allowed_hosts": "x.example"}}, "http.allowed_hosts: expected a list"),
        ({"http": {"allowed": ["x"]}}, "http.allowed: unknown key"),
        ({"api": {"base_url": "ftp://x"}}, "api.base_url: must start with http"),
        ({"watch": [{"path": "/a"}, {"path": "/a/"}]}, "watch[1].path: same folder as watch[0]"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"ledger": {"url": "mysql://db/x"}}, "ledger.url: must start with postgresql://"),
        ({"ledger": {"url": "postgresql://u:pw@db/x"}}, "ledger.url: must not contain a password"),
        ({"ledger": {"url": "postgresql://db"}}, "ledger.url: names no database"),
        ({"ledger": {"url": "postgresql://db:99999/x"}}, "ledger.url: not a valid URL"),
        (
            {"ledger": {"url": "postgresql://db/x", "backup_dir": "/b"}},
            "ledger.backup_dir: not used with ledger.url",
        ),
        ({"ledger": {"lease_s": 1}}, "ledger.lease_s: must be at least 5"),
        ({"fleet": {"host_name": "two words"}}, "fleet.host_name: must be 1 to 63 printable"),
        ({"fleet": {"redis": 1}}, "fleet.redis: unknown key"),
        ({"fleet": {"redis_url": "http://r:6379/0"}}, "fleet.redis_url: must start with redis://"),
        ({"fleet": {"redis_url": "redis://:6379/0"}}, "fleet.redis_url: has no host name"),
        ({"fleet": {"redis_url": "redis://r:99999/0"}}, "fleet.redis_url: not a valid URL"),
        ({"fleet": {"account": ""}}, "fleet.account: must be 1 to 63 printable"),
        ("just text", "<top>: expected a mapping"),
    ],
)
def test_each_kind_of_mistake(doc: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "t.yaml")
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_invalid_yaml_reports_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("watch:\n  - path: /a\n    recursive: [true\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "line 4" in str(info.value) and "column" in str(info.value)


def test_missing_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value)


def test_key_from_env_file_and_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = parse_config(None, "t")
    assert resolve_api_key(cfg, {"MAVI_API_KEY": " sk-mavi-abc \n"}) == "sk-mavi-abc"
    with caplog.at_level(logging.WARNING):
        assert resolve_api_key(cfg, {"MAVI_API_KEY": "Bearer sk-mavi-abc"}) == "sk-mavi-abc"
    assert "Bearer" in caplog.text and "sk-mavi-abc" not in caplog.text

    key_file = tmp_path / "key"
    key_file.write_text("sk-mavi-file\n")
    key_file.chmod(0o644)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cfg = parse_config({"api": {"key_file": str(key_file)}}, "t")
        assert resolve_api_key(cfg, {}) == "sk-mavi-file"
    assert f"chmod 600 {key_file}" in caplog.text

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mavi_api_key").write_text("sk-mavi-cred")
    assert resolve_api_key(parse_config(None, "t"), {"CREDENTIALS_DIRECTORY": str(creds)}) == (
        "sk-mavi-cred"
    )


@pytest.mark.parametrize("env", [{}, {"MAVI_API_KEY_FILE": "/nonexistent/key"}])
def test_missing_key_is_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        resolve_api_key(parse_config(None, "t"), env)


def test_empty_key_file_is_an_error(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        resolve_api_key(parse_config(None, "t"), {"MAVI_API_KEY_FILE": str(key_file)})


def test_config_check_command(tmp_path: Path) -> None:
    ok = syncd("config", "check", str(EXAMPLE), env={"MAVI_API_KEY": "sk-mavi-secret-123"})
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "found" in ok.stdout
    assert "sk-mavi-secret-123" not in ok.stdout + ok.stderr
    assert yaml.safe_load(ok.stdout)["upload"]["workers"] == 4

    bad = tmp_path / "bad.yaml"
    bad.write_text("upload:\n  workers: 0\n  wrkers: 2\nwatch: 3\n")
    res = syncd("config", "check", str(bad))
    assert res.returncode == EXIT_CONFIG
    assert "3 problems" in res.stderr and "Traceback" not in res.stderr
    for key in ("upload.workers", "upload.wrkers", "watch"):
        assert f"- {key}:" in res.stderr


def test_run_refuses_a_config_that_watches_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "nothing.yaml"
    cfg.write_text(f"ledger: {{path: {tmp_path}/ledger.db}}\n")
    res = syncd("run", "-c", str(cfg), env={"MAVI_API_KEY": "sk-mavi-x"})
    assert res.returncode == EXIT_CONFIG
    assert "watch: at least one folder" in res.stderr
    assert not (tmp_path / "ledger.db").exists()  # nothing was started


def test_allowed_hosts_take_names_and_addresses() -> None:
    names = ["nas.local", "NAS", "192.168.1.20", "[fe80::1]", "::1", "host-1.example."]
    cfg = parse_config({"http": {"allowed_hosts": names}}, "t.yaml")
    assert cfg.http.allowed_hosts == tuple(names)
    assert parse_config(None, "t").http.allowed_hosts == ()


def test_a_fleet_ledger_config_loads() -> None:
    cfg = parse_config(
        {"ledger": {"url": "postgresql://syncd@db.lan:5432/syncd"}, "fleet": {"host_name": "m1"}},
        "t.yaml",
    )
    assert cfg.ledger.url == "postgresql://syncd@db.lan:5432/syncd"
    assert cfg.ledger.lease_s == 600
    assert cfg.fleet.host_name == "m1"


def test_a_fleet_budget_config_loads_and_names_the_account_without_revealing_the_key() -> None:
    from syncd.upload.fleet_pacer import account_name

    cfg = parse_config({"fleet": {"redis_url": "redis://redis.lan:6379/0"}}, "t.yaml")
    assert cfg.fleet.redis_url == "redis://redis.lan:6379/0"
    name = account_name(cfg, "secret-key-123")
    assert name.startswith("key-") and "secret" not in name and len(name) == 16
    assert account_name(cfg, "secret-key-123") == name  # every host with the key agrees
    named = parse_config({"fleet": {"redis_url": "redis://r/0", "account": "studio"}}, "t.yaml")
    assert account_name(named, None) == "studio"
