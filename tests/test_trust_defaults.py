"""Issue 13 item 10: secure by default. The config install.sh writes asks for TLS, credentials
and roles, with CHANGE-ME placeholders that ``check`` (and ``run``) name until filled; ``check``
and ``run`` warn loudly, once, about a non-loopback broker without TLS, credentials or roles,
and ``[broker] warn_insecure = false`` silences that."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def installed_config() -> str:
    """The config block systemd/install.sh writes (between its heredoc markers)."""
    text = (ROOT / "systemd" / "install.sh").read_text()
    m = re.search(r"cat > \"\$CONFIG\" <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert m, "install.sh writes no config heredoc"
    return m.group(1) + "\n"


def edge_agent(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "CREDENTIALS_DIRECTORY"))}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          timeout=timeout, env=e)


def test_installed_config_names_every_placeholder_until_filled(tmp_path):
    path = tmp_path / "agent.toml"
    text = installed_config()
    assert "mqtts://" in text and "password_credential" in text and 'default_role = "viewer"' in text
    path.write_text(text.replace("simulate = false", f'simulate = true\nstate_dir = "{tmp_path / "state"}"'))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "broker-password").write_text("s3cret\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    check = edge_agent("check", "--config", str(path), env=env)
    assert check.returncode == 2, check.stdout + check.stderr
    named = set(re.findall(r":\d+: (\S+): still the placeholder", check.stderr))
    assert named == {"device.server_name", "broker.urls[0]", "broker.username", "rbac.rules[0].client_id"}, check.stderr
    run = edge_agent("run", "--config", str(path), "--connect-timeout", "1", env=env)
    assert run.returncode == 2 and "still the placeholder" in run.stderr  # the service does not start
    filled = path.read_text().replace("devices/CHANGE-ME/my-pi", "devices/site/pi-1") \
        .replace("CHANGE-ME.example", "broker.example").replace('"CHANGE-ME"', '"pi-1"').replace("CHANGE-ME-*", "ops-*")
    path.write_text(filled)
    ok = edge_agent("check", "--config", str(path), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "INSECURE" not in ok.stderr  # TLS, credentials and roles: nothing to warn about


PLAIN = """
[device]
server_name = "devices/site/pi-1"
server_id = "pi-1"
simulate = true
state_dir = "{state}"

[broker]
urls = ["{url}"]
{extra}
"""


@pytest.mark.parametrize("url,extra,warnings", [
    ("mqtt://192.0.2.1:1883", "", 3),                                   # remote, plain, no user, no roles
    ("mqtt://127.0.0.1:1883", "", 0),                                   # loopback: fine
    ("mqtt://localhost:1883", "", 0),
    ("mqtt://192.0.2.1:1883", "warn_insecure = false", 0),              # the risk accepted
    ("mqtts://192.0.2.1:8883", 'username = "u"\n[rbac]\ndefault_role = "viewer"', 0),
    ("mqtts://192.0.2.1:8883", 'username = "u"', 1),                    # roles missing
])
def test_check_warns_once_about_an_insecure_remote_broker(tmp_path, url, extra, warnings):
    path = tmp_path / "agent.toml"
    path.write_text(PLAIN.format(state=tmp_path / "state", url=url, extra=extra))
    check = edge_agent("check", "--config", str(path))
    assert check.returncode == 0, check.stderr
    assert check.stderr.count("warning: INSECURE:") == warnings, check.stderr


def test_run_warns_once(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(PLAIN.format(state=tmp_path / "state", url="mqtt://192.0.2.1:1883", extra=""))
    run = edge_agent("run", "--config", str(path), "--connect-timeout", "2", timeout=120)
    assert run.returncode == 1, run.stderr  # 192.0.2.1 (TEST-NET-1) never answers
    lines = [line for line in run.stderr.splitlines() if "INSECURE:" in line]
    assert len(lines) == 3 and all("WARNING" in line for line in lines), run.stderr
