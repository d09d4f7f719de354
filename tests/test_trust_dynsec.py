"""Issue 13 items 2(b) and 9 on this machine's Mosquitto 2.0 with the dynamic-security plugin
and the JSON ``edge-agent acl --dynsec`` writes (passwords added as mosquitto_ctrl would):

- broker-bound ids: a user whose ``client_ids`` lists one id may connect under that id only, so
  nobody takes over another's id, and a role rule on ``ops-*`` means user ``ops``;
- a refused SUBSCRIBE (SUBACK 0x87) of the device's control topic is logged, shown in
  ``device://health``, keeps the agent from READY (``STATUS=cannot serve: ...``), and the agent
  serves once the ACL is fixed live (it asks again).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time

import anyio
import pytest

from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device import service
from edge_agent.device.runtime import Agent
from edge_agent.errors import TransportError
from edge_agent.mqtt import server as mqtt_server
from edge_agent.testing.broker import LocalBroker
from tests.test_systemd import NotifySocket

PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
A, NAME = "dyn-a", "devices/dyn/a"
FLEET = f"""
[[devices]]
username = "dev1"
server_id = "{A}"
server_name = "{NAME}"

[[clients]]
username = "ops"
server_name_filters = ["devices/#"]
client_ids = ["ops-1"]

[[clients]]
username = "eve"
server_name_filters = ["devices/#"]
client_ids = ["eve-1"]
"""
ADMIN_ROLE = {"rolename": "admin", "acls": [
    {"acltype": t, "topic": "$CONTROL/dynamic-security/#", "allow": True}
    for t in ("publishClientSend", "publishClientReceive", "subscribePattern")]}

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(not os.path.exists(PLUGIN), reason="no Mosquitto dynamic-security plugin")]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _password(client: dict, password: str) -> None:
    salt = os.urandom(12)
    client.update(password=base64.b64encode(hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)).decode(),
                  salt=base64.b64encode(salt).decode(), iterations=101)


def dynsec_broker(tmp_path, *, strip_control: bool = False) -> LocalBroker:
    (tmp_path / "fleet.toml").write_text(FLEET)
    out = subprocess.run([sys.executable, "-m", "edge_agent", "acl", "--fleet", str(tmp_path / "fleet.toml"),
                          "--out", str(tmp_path / "acl"), "--dynsec", str(tmp_path / "dynsec.json")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "dynsec.json").read_text())
    for client in doc["clients"]:
        _password(client, f"{client['username']}-pw")
    if strip_control:  # the ACL mistake of item 9: the device may not subscribe its control topic
        role = next(r for r in doc["roles"] if r["rolename"] == "mcp-device-dev1")
        role["acls"] = [a for a in role["acls"] if a["topic"] != f"$mcp-server/{A}/{NAME}"]
    admin = {"username": "admin", "roles": [{"rolename": "admin"}]}
    _password(admin, "admin-pw")
    doc["clients"].append(admin)
    doc["roles"].append(ADMIN_ROLE)
    (tmp_path / "dynsec-run.json").write_text(json.dumps(doc))
    return LocalBroker(allow_anonymous=False, workdir=tmp_path / "broker",
                       extra_conf=f"plugin {PLUGIN}\nplugin_opt_config_file {tmp_path / 'dynsec-run.json'}\n")


def _config(tmp_path):
    return cfg.from_dict({
        "device": {"server_name": NAME, "server_id": A, "simulate": True, "state_dir": str(tmp_path / "s")},
        "broker": {"username": "dev1", "password": "dev1-pw"},
        "link": {"reconnect_min": 0.1, "reconnect_max": 0.3},
        "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17}],
        "rbac": {"default_role": "viewer", "rules": [{"client_id": "ops-*", "role": "operator"}]},
    })


async def test_broker_bound_client_ids(tmp_path, caplog):
    with dynsec_broker(tmp_path) as broker:
        agent = Agent(_config(tmp_path), broker_url=broker.url)
        await agent.start(connect_timeout=10)
        try:
            assert await service.refused(agent) is None
            # the busy lane (<server-id>-busy) is another client id: refused, said once, the device serves
            with anyio.fail_after(10):
                while not any("busy lane" in r.getMessage() for r in caplog.records if r.levelname == "WARNING"):
                    await anyio.sleep(0.05)
            assert not agent.endpoint.transport.link_health()["busy_lane"]["up"]
            async with connect(broker.url, NAME, client_id="ops-1", username="ops", password="ops-pw") as ops:
                assert not (await ops.call_tool("pump_relay_on", {})).is_error  # the dynsec rules carry MCP
            for user, cid in (("ops", "ops-2"), ("eve", "ops-1"), ("dev1", "ops-1"), ("eve", A)):
                with pytest.raises(TransportError, match="[Nn]ot authorized"):
                    async with connect(broker.url, NAME, client_id=cid, username=user, password=f"{user}-pw",
                                       connect_timeout=5):
                        pass
            bad_device = Agent(_config(tmp_path / "b"), broker_url=broker.url)
            bad_device.config.device.server_id = "dyn-other"  # dev1 under another id: refused at CONNECT
            with pytest.raises(TransportError, match="[Nn]ot authorized"):
                await bad_device.start(connect_timeout=2)
            await bad_device.stop()
        finally:
            await agent.stop()


async def test_refused_subscription_is_reported_and_retried(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(mqtt_server, "REFUSAL_RETRY_S", 0.3)
    with dynsec_broker(tmp_path, strip_control=True) as broker:
        agent = Agent(_config(tmp_path), broker_url=broker.url)
        await agent.start(connect_timeout=10)
        try:
            problem = await service.refused(agent)
            assert problem == f"subscribe $mcp-server/{A}/{NAME}: Not authorized (0x87)"
            assert "the broker refused to let us subscribe" in caplog.text
            link = agent.health()["link"]
            assert link["connected"] and not link["serving"] and link["refused"]
            # fixed live (dynsec): the agent asks again and serves
            for acltype in ("publishClientReceive", "subscribePattern"):
                ctrl = subprocess.run(["mosquitto_ctrl", "-h", "127.0.0.1", "-p", str(broker.port), "-u", "admin",
                                       "-P", "admin-pw", "dynsec", "addRoleACL", "mcp-device-dev1", acltype,
                                       f"$mcp-server/{A}/{NAME}", "allow"], capture_output=True, text=True, timeout=30)
                assert ctrl.returncode == 0, ctrl.stdout + ctrl.stderr
            deadline = time.monotonic() + 15
            while await service.refused(agent, 0.1) is not None:
                assert time.monotonic() < deadline, "still refused"
            assert agent.health()["link"]["serving"]
            async with connect(broker.url, NAME, client_id="ops-1", username="ops", password="ops-pw") as ops:
                assert not (await ops.call_tool("pump_relay_on", {})).is_error
        finally:
            await agent.stop()


def test_no_ready_while_refused(tmp_path):
    """The real ``edge-agent run`` under a fake ``$NOTIFY_SOCKET``: STATUS says why, no READY."""
    with dynsec_broker(tmp_path, strip_control=True) as broker:
        config = tmp_path / "agent.toml"
        config.write_text(f"""
[device]
server_name = "{NAME}"
server_id = "{A}"
simulate = true
state_dir = "{tmp_path / 'state'}"
[broker]
urls = ["{broker.url}"]
username = "dev1"
password = "dev1-pw"
[[drivers]]
kind = "relay"
name = "pump_relay"
pin = 17
""")
        notify = NotifySocket()
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")}
        env.update(PYTHONUNBUFFERED="1", NOTIFY_SOCKET=notify.address)
        log = tmp_path / "agent.log"
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)
        try:
            status = notify.wait_for("STATUS", timeout=30)
            deadline = time.monotonic() + 30
            while "cannot serve" not in status[2]["STATUS"]:
                assert time.monotonic() < deadline, notify.snapshot()
                status = notify.snapshot()[-1]
                time.sleep(0.05)
            assert "Not authorized (0x87)" in status[2]["STATUS"]
            assert not any("READY" in m[2] for m in notify.snapshot())
            assert "cannot serve" in log.read_text() and "serving " not in log.read_text()
            proc.terminate()
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            notify.close()
