"""Config loading and `edge-agent check`: every error names the file and the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge_agent import config as cfg
from edge_agent.errors import ConfigError

GOOD = """
[device]
server_name = "devices/greenhouse/pi-01"
server_id = "gh-pi-01"
description = "Greenhouse 3"
simulate = true

[broker]
urls = ["mqtt://127.0.0.1:1883", "mqtt://backup.example:1884"]
username = "gh"
password = "s3cret"

[[drivers]]
kind = "relay"
name = "pump"
pin = 17

[[drivers]]
kind = "system"
name = "system"
poll_interval = 30
"""


def write(tmp_path, text, name="agent.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_config_loads(tmp_path):
    c = cfg.load(write(tmp_path, GOOD))
    assert c.device.server_name == "devices/greenhouse/pi-01"
    assert c.broker.urls[1] == "mqtt://backup.example:1884"
    assert [d.name for d in c.drivers] == ["pump", "system"]
    assert c.drivers[0].options == {"pin": 17}
    assert c.drivers[1].poll_interval == 30
    assert "s3cret" not in repr(c.broker)


def test_every_problem_is_named(tmp_path):
    bad = GOOD.replace('server_name = "devices/greenhouse/pi-01"', 'server_name = "flat"') \
              .replace('"mqtt://127.0.0.1:1883"', '"http://x"') \
              .replace("pin = 17", "pin = 17\ncolour = 3") \
              .replace('kind = "system"', 'kind = "toaster"')
    p = write(tmp_path, bad)
    with pytest.raises(ConfigError) as exc:
        cfg.load(p)
    keys = {k for _, k, _ in exc.value.problems}
    assert {"device.server_name", "broker.urls[0]", "drivers[0].colour", "drivers[1].kind"} <= keys
    assert all(f == str(p) for f, _, _ in exc.value.problems)


def test_schema_errors_name_nested_keys(tmp_path):
    p = write(tmp_path, '[device]\nserver_name = "a/b"\nsimulate = "yes"\n[broker]\nqos = 2\nport = 1\n')
    with pytest.raises(ConfigError) as exc:
        cfg.load(p)
    keys = {k for _, k, _ in exc.value.problems}
    assert {"device.simulate", "broker.qos", "broker.port"} <= keys


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        cfg.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg.load(write(tmp_path, "[device\n"))


def test_password_file_and_env(tmp_path, monkeypatch):
    (tmp_path / "pw").write_text("from-file\n")
    c = cfg.load(write(tmp_path, GOOD.replace('password = "s3cret"', 'password_file = "pw"')))
    assert c.broker.password == "from-file"
    monkeypatch.setenv("EDGE_AGENT_PASSWORD", "from-env")
    assert cfg.load(write(tmp_path, GOOD)).broker.password == "from-env"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=60)


def test_check_command_exit_codes(tmp_path):
    ok = cli("check", "--config", str(write(tmp_path, GOOD)))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "2 driver(s)" in ok.stdout
    p = write(tmp_path, GOOD.replace("pin = 17", 'pin = 17\nactive_high = "maybe"'), "bad.toml")
    bad = cli("check", "--config", str(p))
    assert bad.returncode == 2
    assert f"{p}: drivers[0].active_high:" in bad.stderr
    assert cli("check", "--demo").returncode == 0
