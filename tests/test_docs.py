"""The configuration reference and the example config keep up with the code.

- ``docs/examples/greenhouse.toml`` is a valid config (``config.load`` and ``edge-agent check``).
- ``docs/configuration.md`` has a section per driver kind whose options table lists exactly the
  kind's ``options_schema`` properties with their defaults, and whose tool and resource tables
  match what the driver declares (names, annotations, units, poll intervals, deadbands,
  min intervals).
- Every ``[device]``, ``[broker]`` and common ``[[drivers]]`` key is documented, with its default.
- Every TOML snippet in the reference is valid.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from edge_agent.device import config as cfg
from edge_agent.drivers import DRIVER_KINDS, driver_class
from edge_agent.drivers.base import DriverContext

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "docs" / "examples" / "greenhouse.toml"
TEXT = DOC.read_text(encoding="utf-8")


def section(heading: re.Pattern[str] | str) -> str:
    """The text under the first heading matching ``heading`` (a regex on the heading line,
    after the ``#``s), up to the next heading (of any level: subsections are not included)."""
    lines, fenced = [], False
    for line in TEXT.splitlines():  # a "# comment" inside a code block is not a heading
        if line.startswith("```"):
            fenced = not fenced
        lines.append((line, not fenced and re.match(r"^(#+)\s+(.*)$", line)))
    for i, (_, m) in enumerate(lines):
        if m and re.search(heading, m.group(2)):
            body = []
            for nxt, is_heading in lines[i + 1:]:
                if is_heading:
                    break
                body.append(nxt)
            return "\n".join(body)
    raise AssertionError(f"docs/configuration.md has no heading matching {heading!r}")


def kind_section(kind: str) -> str:
    return section(rf"^`{re.escape(kind)}`")


def rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by their first cell with the backticks removed."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("|") or re.match(r"^\|\s*-", line):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([^`]+)`", cells[0])
        if m:
            out[m.group(1)] = cells
    return out


def toml_value(value) -> str:
    """How a schema default is written in the tables: TOML syntax (json.dumps fits for
    booleans, numbers and strings)."""
    return json.dumps(value, ensure_ascii=False)


def sample_options(kind: str) -> dict:
    """Minimal valid options for ``kind``: distinct BCM pins for the required pin keys."""
    schema = driver_class(kind).options_schema
    pins = iter([17, 27, 22, 23, 24])
    options = {}
    for key in schema.get("required", []):
        prop = schema["properties"][key]
        assert "anyOf" in prop, f"{kind}.{key}: teach sample_options() about this required option"
        options[key] = next(pins)
    return options


# --------------------------------------------------------------------------- the example


def test_greenhouse_example_loads(monkeypatch):
    monkeypatch.delenv(cfg.ENV_PASSWORD, raising=False)
    config = cfg.load(EXAMPLE)
    assert config.device.simulate is False
    assert config.device.state_dir == "/var/lib/edge-agent"
    assert len({d.kind for d in config.drivers}) >= 5
    assert not any(d.simulate for d in config.drivers)
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert "password" not in raw.get("broker", {}), "no password in clear in the example"
    assert config.broker.password is None


def test_greenhouse_example_passes_check():
    # the example is for a Pi's real pins: the mock pin factory stands in for its lgpio here
    done = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(EXAMPLE)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env=dict(os.environ, GPIOZERO_PIN_FACTORY="mock"))
    assert done.returncode == 0, done.stderr
    assert ": OK: " in done.stdout


# --------------------------------------------------------------------------- driver kinds


@pytest.mark.parametrize("kind", sorted(DRIVER_KINDS))
def test_every_option_is_documented(kind):
    text = kind_section(kind)
    schema = driver_class(kind).options_schema
    props = schema.get("properties", {})
    for key in props:
        assert f"`{key}`" in text, f"{kind}: option {key} is not mentioned in its section"
    table = {k: cells for k, cells in rows(text).items() if re.fullmatch(r"[a-z_][a-z0-9_]*", k)}
    assert set(table) == set(props), f"{kind}: options table {sorted(table)} != schema {sorted(props)}"
    required = set(schema.get("required", []))
    for key, prop in props.items():
        cells = table[key]  # key | type | required | default | range | meaning
        assert cells[2] == ("yes" if key in required else "no"), f"{kind}.{key}: required column"
        expected = toml_value(prop["default"]) if "default" in prop else "—"
        assert cells[3] == expected, f"{kind}.{key}: default {cells[3]!r}, schema says {expected}"
        if "minimum" in prop and "maximum" in prop:
            assert f"{prop['minimum']}..{prop['maximum']}" in cells[4], f"{kind}.{key}: range"


@pytest.mark.parametrize("kind", sorted(DRIVER_KINDS))
def test_tools_and_resources_are_documented(kind, tmp_path):
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    if kind == "mpboard":
        pytest.skip("mpboard's tools and resources are the attached board's (tests/test_mpboard.py)")

    text = kind_section(kind)
    table = rows(text)
    context = DriverContext(simulate=True, pin_factory=MockFactory(pin_class=MockPWMPin), state_dir=str(tmp_path))
    driver = driver_class(kind)("x", sample_options(kind), context=context)
    try:
        tools, sensors = driver.tools(), driver.sensors()
    finally:
        driver.close()

    documented_tools = {k for k in table if k.startswith("<name>_")}
    assert documented_tools == {f"<name>_{t.name}" for t in tools}, f"{kind}: tool table"
    if not tools:
        assert "No tools." in text
    for tool in tools:
        cells = table[f"<name>_{tool.name}"]  # tool | arguments | returns | destructive | idempotent | long
        assert tool.annotations.get("readOnlyHint") is False and "openWorldHint" not in tool.annotations
        assert tool.output_schema is not None
        assert cells[3] == toml_value(tool.annotations.get("destructiveHint")), f"{kind}.{tool.name}: destructiveHint"
        assert cells[4] == toml_value(tool.annotations.get("idempotentHint")), f"{kind}.{tool.name}: idempotentHint"
        assert cells[5].startswith("yes" if tool.long_running else "no"), f"{kind}.{tool.name}: long-running"
        arguments = tool.input_schema.get("properties", {})
        if not arguments:
            assert cells[1] == "none", f"{kind}.{tool.name}: arguments"
        for arg in arguments:
            assert f"`{arg}`" in cells[1], f"{kind}.{tool.name}: argument {arg} not documented"

    documented_sensors = {k for k in table if k.startswith("sensor://")}
    assert documented_sensors == {f"sensor://<name>/{s.name}" for s in sensors}, f"{kind}: resource table"
    for sensor in sensors:
        cells = table[f"sensor://<name>/{sensor.name}"]  # uri | value | unit | poll | deadband | min
        assert cells[2] == (f"`{sensor.unit}`" if sensor.unit else "—"), f"{kind}.{sensor.name}: unit"
        assert float(cells[3]) == sensor.poll_interval, f"{kind}.{sensor.name}: poll_interval"
        assert float(cells[4]) == sensor.deadband, f"{kind}.{sensor.name}: deadband"
        assert float(cells[5].split()[0]) == sensor.min_interval, f"{kind}.{sensor.name}: min_interval"


def test_kind_list_is_complete():
    kind_row = rows(section(r"common keys"))["kind"]
    for kind in DRIVER_KINDS:
        assert f"`{kind}`" in kind_row[3], f"kind {kind} missing from the common keys table"


# --------------------------------------------------------------------------- common keys


@pytest.mark.parametrize("table,dataclass", [("device", cfg.DeviceConfig), ("broker", cfg.BrokerConfig)])
def test_device_and_broker_keys_are_documented(table, dataclass):
    text = section(rf"^`\[{table}\]`")
    props = cfg._SCHEMA["properties"][table]["properties"]
    documented = rows(text)
    for key, prop in props.items():
        assert f"`{key}`" in TEXT, f"[{table}] {key} is not in docs/configuration.md"
        assert key in documented, f"[{table}] {key} has no row in the [{table}] table"
        if "minimum" in prop and "maximum" in prop:
            assert f"{prop['minimum']}..{prop['maximum']}" in documented[key][1], f"[{table}] {key}: range"
    assert set(documented) == set(props), f"[{table}] table lists keys the schema does not have"
    for f in fields(dataclass):  # simple defaults must match: key | type | default | meaning
        if f.name in documented and f.default is not MISSING and f.default is not None:
            assert documented[f.name][2] == f"`{toml_value(f.default)}`", f"[{table}] {f.name}: default"


def test_common_driver_keys_are_documented():
    documented = rows(section(r"common keys"))
    assert set(documented) == cfg.COMMON_DRIVER_KEYS


def test_environment_variables_are_documented():
    from edge_agent.mqtt.broker_url import ENV_BROKER

    for var in (cfg.ENV_PASSWORD, cfg.ENV_USERNAME, ENV_BROKER, "CREDENTIALS_DIRECTORY"):
        assert f"${var}" in TEXT and f"`{var}`" in section(r"Environment variables")


def _password_winner(sources: set[str], tmp_path: Path, monkeypatch) -> str | None:
    """Which of ``sources`` (env, credential, file, password) ``config.from_dict`` takes the
    password from, each source giving its own name as the password."""
    broker: dict = {"url": "mqtt://broker.local:1883"}
    monkeypatch.delenv(cfg.ENV_PASSWORD, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    if "env" in sources:
        monkeypatch.setenv(cfg.ENV_PASSWORD, "env")
    if "credential" in sources:
        (tmp_path / "broker-password").write_text("credential\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
        broker["password_credential"] = "broker-password"
    if "file" in sources:
        (tmp_path / "password").write_text("file\n")
        broker["password_file"] = str(tmp_path / "password")
    if "password" in sources:
        broker["password"] = "password"
    config = cfg.from_dict({"device": {"server_name": "devices/test/docs", "server_id": "t"}, "broker": broker})
    return config.broker.password


def test_credential_order_is_the_code_order(tmp_path, monkeypatch):
    """The numbered list under "Credentials" gives the sources in the order config.py applies
    them (found by trying: the winner of all, then of the rest ...), then the URL's password and
    the systemd credential `run` falls back to."""
    left, order = {"env", "credential", "file", "password"}, []
    while left:
        winner = _password_winner(left, tmp_path, monkeypatch)
        assert winner in left, f"with {sorted(left)} the password came from nowhere ({winner!r})"
        order.append(winner)
        left.remove(winner)
    assert _password_winner(set(), tmp_path, monkeypatch) is None  # then the URL's (mqtt_server)

    items = re.findall(r"^\d+\.\s+(.*(?:\n   .*)*)", section(r"^Credentials$"), flags=re.M)
    keys = {"env": "$EDGE_AGENT_PASSWORD", "credential": "password_credential", "file": "password_file",
            "password": "`password`;", "url": "URL", "systemd": "broker-password"}
    documented = [next((k for k, word in keys.items() if word in item), item) for item in items]
    assert documented == order + ["url", "systemd"], f"documented {documented}, code {order} + url, systemd"
    for other in ("security.md", "raspberry-pi.md"):  # no second, diverging list elsewhere
        text = (ROOT / "docs" / other).read_text(encoding="utf-8")
        assert "configuration.md#credentials" in text, f"{other} should point at the one list"
        assert not re.search(r"first match wins", text), f"{other} has its own credential order"


def test_username_order(tmp_path, monkeypatch):
    monkeypatch.setenv(cfg.ENV_USERNAME, "from-env")
    data = {"device": {"server_name": "devices/test/docs", "server_id": "t"}, "broker": {"username": "from-config"}}
    assert cfg.from_dict(data).broker.username == "from-env"
    monkeypatch.delenv(cfg.ENV_USERNAME)
    assert cfg.from_dict(data).broker.username == "from-config"
    text = section(r"^Credentials$")
    assert text.index("$EDGE_AGENT_USERNAME") < text.index("`username`, else the URL's")


def test_every_list_of_driver_kinds_is_complete():
    """The kind lists a reader meets: `check`'s "known: ..." transcript and the README."""
    for path in (DOC, ROOT / "README.md", ROOT / "docs" / "raspberry-pi.md"):
        for known in re.findall(r"known: ([a-z0-9_, ]+)", path.read_text(encoding="utf-8")):
            assert [k.strip() for k in known.split(",")] == sorted(DRIVER_KINDS), f"{path.name}: known: {known}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    drivers = readme[readme.index("Drivers (the `kind`"):].split("\n\n")[0]
    missing = [k for k in DRIVER_KINDS if f"`{k}`" not in drivers]
    assert not missing, f"README's driver list lacks {missing}"


# --------------------------------------------------------------------------- snippets


def test_toml_snippets_are_valid():
    blocks = re.findall(r"```toml\n(.*?)```", TEXT, flags=re.S)
    assert blocks
    for block in blocks:
        data = tomllib.loads(block)
        data.setdefault("device", {"server_name": "devices/test/docs"})
        data.get("broker", {}).pop("password_file", None)  # points at a file this machine lacks
        cfg.from_dict(data, path="<docs snippet>")
