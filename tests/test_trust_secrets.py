"""Issue 13 item 7: a planted password is never printed: not by ``check`` or ``run`` (bad URL,
wrongly typed password, a real run against a Mosquitto that checks it), not in the log at
debug level, not in ``repr`` of the config, not in the presence meta, ``device://info``,
``device://health`` or ``device://link``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.mqtt.broker_url import parse_broker_url, redacted
from edge_agent.testing.broker import LocalBroker
from tests.agent_process import AgentProcess, RawSubscriber

SECRET = "Pl4nted-s3cret-xyzzy"
NAME = "devices/secrets/pi-1"
SID = "secrets-pi-1"


def _edge_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("EDGE_AGENT_PASSWORD", None)
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _config(tmp_path, broker: str, password: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[device]
server_name = "{NAME}"
server_id = "{SID}"
simulate = true
state_dir = "{tmp_path / 'state'}"

[broker]
urls = ["{broker}"]
username = "dev1"
{password}

[[drivers]]
kind = "relay"
name = "pump_relay"
pin = 17
""")
    return str(path)


def test_redacted_url():
    assert redacted(f"mqtt://u:{SECRET}@h:1883/x") == "mqtt://u:***@h:1883/x"
    assert redacted("mqtts://h") == "mqtts://h"
    assert redacted(f"u:{SECRET}@h") == "u:***@h"
    with pytest.raises(ValueError) as exc:
        parse_broker_url(f"mqtt://u:{SECRET}@h:99999")
    assert SECRET not in str(exc.value) and "u:***@h" in str(exc.value)


@pytest.mark.parametrize("broker,password", [
    (f"mqtt://dev1:{SECRET}@127.0.0.1:99999", ""),              # bad port, password in the URL
    (f"foo://dev1:{SECRET}@127.0.0.1", ""),                     # bad scheme
    ("mqtt://127.0.0.1:1883", f'password = ["{SECRET}"]'),      # wrongly typed password
    ("mqtt://127.0.0.1:1883", f"password = {{ v = \"{SECRET}\" }}"),
    (f"mqtt://dev1:{SECRET}@[::1", ""),                         # unparsable URL
])
def test_check_and_run_never_print_a_bad_config_secret(tmp_path, broker, password):
    path = _config(tmp_path, broker, password)
    check = _edge_agent("check", "--config", path)
    assert check.returncode == 2, check.stderr
    assert "broker." in check.stderr
    run = _edge_agent("run", "--config", path, "--log-level", "debug", "--connect-timeout", "1")
    assert run.returncode == 2, run.stderr
    for out in (check.stdout, check.stderr, run.stdout, run.stderr):
        assert SECRET not in out
    with pytest.raises(cfg.ConfigError) as exc:
        cfg.load(path)
    assert SECRET not in str(exc.value) and SECRET not in repr(exc.value)


def test_repr_of_config_hides_every_password(tmp_path):
    config = cfg.from_dict({"device": {"server_name": NAME, "server_id": SID},
                            "broker": {"urls": [f"mqtt://dev1:{SECRET}@127.0.0.1:1883"], "password": SECRET}})
    for text in (repr(config), str(config), repr(config.broker), str(config.broker)):
        assert SECRET not in text


def test_running_agent_never_shows_its_password(tmp_path):
    """A Mosquitto that checks the password; the agent run at debug level; every output read."""
    pwfile = tmp_path / "passwords"
    pwfile.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "dev1", SECRET], check=True, capture_output=True)
    with LocalBroker(workdir=tmp_path / "broker", extra_conf=f"password_file {pwfile}\n") as broker:
        # the password twice: in the file's [broker] and in the --broker URL (run's override)
        path = _config(tmp_path, "mqtt://127.0.0.1:1", f'password = "{SECRET}"')
        agent = AgentProcess(tmp_path / "agent.toml", f"mqtt://dev1:{SECRET}@127.0.0.1:{broker.port}", SID, NAME)
        presence = RawSubscriber(broker.url, [agent.presence_topic])
        agent.start()
        try:
            online = presence.wait_for(lambda m: bool(m.payload))
            assert SECRET not in online.payload.decode()
            assert all(SECRET not in v for _, v in (online.properties.UserProperty or []))

            async def read_all() -> list[str]:
                texts = []
                async with connect(broker.url, NAME) as session:
                    for uri in ("device://info", "device://health", "device://link"):
                        result = await session.read_resource(uri)
                        texts.append(result.contents[0].text)
                    texts.append(json.dumps((await session.list_tools()).model_dump(mode="json")))
                    texts.append(json.dumps((await session.list_resources()).model_dump(mode="json")))
                return texts

            import asyncio
            texts = asyncio.run(read_all())
            assert "dev1" in texts[2] or "127.0.0.1" in texts[2]  # the link is described...
            for text in texts:
                assert SECRET not in text  # ...without its password
        finally:
            presence.close()
            agent.stop()
        log = agent.log()
        assert "serving" in log
        assert SECRET not in log
    assert path
