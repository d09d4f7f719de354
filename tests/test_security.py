"""Security against a real Mosquitto with TLS (a CA made by the test), a password file and the
ACL that `edge-agent acl` generates; RBAC and rate limits enforced by the device."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import anyio
import pytest
import trustme
from mcp import MCPError

from edge_agent import acl
from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.errors import TransportError
from edge_agent.testing.broker import LocalBroker, free_port

NAME = "devices/secure/pi-1"
SID = "secure-pi-1"
PASSWORDS = {"dev1": "dev-secret", "ops": "ops-secret", "eve": "eve-secret"}

FLEET = {
    "devices": [{"username": "dev1", "server_id": SID, "server_name": NAME}],
    "clients": [{"username": "ops", "server_name_filters": ["devices/#"]},
                {"username": "eve", "server_name_filters": ["devices/#"]}],
}


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def secure_broker(tmp_path, ca):
    """TLS listener (devices) + a plain listener (cloud clients), both with the password file
    and the generated ACL; no anonymous access."""
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    pwfile = tmp_path / "passwords"
    pwfile.write_text("")
    for user, pw in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, pw], check=True, capture_output=True)
    (tmp_path / "acl").write_text(acl.mosquitto_acl(acl.fleet_from_dict(FLEET)))
    plain = free_port()
    broker = LocalBroker(
        allow_anonymous=False, workdir=tmp_path / "broker",
        listener_conf=f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}",
        extra_conf=f"password_file {pwfile}\nacl_file {tmp_path / 'acl'}\nlistener {plain} 127.0.0.1\n",
    )
    broker.plain_url = f"mqtt://127.0.0.1:{plain}"
    broker.tls_url = f"mqtts://localhost:{broker.port}"
    with broker:
        yield broker


def device_config(tmp_path, ca_file, password="dev-secret", rbac=None, rate_limit=None):
    data = {
        "device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "state")},
        "broker": {"username": "dev1", "password": password, "ca_file": str(ca_file)},
        "link": {"reconnect_min": 0.1, "reconnect_max": 0.3},
        "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17, **({"rate_limit": rate_limit} if rate_limit else {})},
                    {"kind": "system", "name": "system"}],
    }
    if rbac:
        data["rbac"] = rbac
    return cfg.from_dict(data)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_acl_file_shape():
    text = acl.mosquitto_acl(acl.fleet_from_dict(FLEET))
    assert f"topic write $mcp-server/presence/{SID}/{NAME}" in text
    assert "pattern readwrite $mcp-rpc/%c/#" in text
    assert f"topic write $mcp-server/{SID}/{NAME}" in text  # the fleet's control topics only
    assert "topic write $mcp-server/+/" not in text  # (that matched every presence and capability topic)
    assert "$mcp-server/presence/+" not in text.split("user ops")[0].split("user dev1")[1].replace(
        f"$mcp-server/presence/{SID}", "")  # a device may not write other presences
    dyn = acl.dynsec(acl.fleet_from_dict(FLEET))
    assert {c["username"] for c in dyn["clients"]} == {"dev1", "ops", "eve"}
    with pytest.raises(cfg.ConfigError) as exc:
        acl.fleet_from_dict({"devices": [{"username": "a b", "server_id": "x", "server_name": "a/b"}], "extra": 1})
    assert {k for _, k, _ in exc.value.problems} == {"extra", "devices[0]"}


def test_acl_command(tmp_path):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[[devices]]\nusername = "dev1"\nserver_id = "{SID}"\nserver_name = "{NAME}"\n'
                     '[[clients]]\nusername = "ops"\n')
    out = subprocess.run([sys.executable, "-m", "edge_agent", "acl", "--fleet", str(fleet), "--out", str(tmp_path / "acl"),
                          "--dynsec", str(tmp_path / "dynsec.json")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "user dev1" in (tmp_path / "acl").read_text()
    assert json.loads((tmp_path / "dynsec.json").read_text())["roles"]
    fleet.write_text('[[devices]]\nusername = "dev1"\n')
    bad = subprocess.run([sys.executable, "-m", "edge_agent", "acl", "--fleet", str(fleet)], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "devices[0]" in bad.stderr


def test_tls_and_credentials(secure_broker, tmp_path, ca):
    async def go():
        ok = Agent(device_config(tmp_path, tmp_path / "ca.pem"), broker_url=secure_broker.tls_url)
        await ok.start(connect_timeout=10)
        assert ok.endpoint.transport.link_health()["connected"]
        await ok.stop()

        other_ca = trustme.CA()
        other_ca.cert_pem.write_to_path(str(tmp_path / "wrong-ca.pem"))
        wrong = Agent(device_config(tmp_path / "w", tmp_path / "wrong-ca.pem"), broker_url=secure_broker.tls_url)
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await wrong.start(connect_timeout=2)
        assert wrong.endpoint.transport.stats.failed_attempts >= 2  # backoff, not a tight loop or a crash
        await wrong.stop()

        bad_pw = Agent(device_config(tmp_path / "p", tmp_path / "ca.pem", password="nope"), broker_url=secure_broker.tls_url)
        with pytest.raises(TransportError, match="[Nn]ot authorized|[Bb]ad user name or password"):
            await bad_pw.start(connect_timeout=2)
        await bad_pw.stop()

    asyncio.run(go())


def test_password_never_logged(secure_broker, tmp_path, caplog):
    async def go():
        bad_pw = Agent(device_config(tmp_path, tmp_path / "ca.pem", password="hunter2-secret"),
                       broker_url=secure_broker.tls_url)
        with pytest.raises(TransportError):
            await bad_pw.start(connect_timeout=1.5)
        await bad_pw.stop()

    caplog.set_level("DEBUG")
    asyncio.run(go())
    assert "hunter2-secret" not in caplog.text
    assert "attempt" in caplog.text  # one clear line per attempt


async def test_unknown_user_and_foreign_rpc_topic(secure_broker, tmp_path):
    agent = Agent(device_config(tmp_path, tmp_path / "ca.pem"), broker_url=secure_broker.tls_url)
    await agent.start(connect_timeout=10)
    eve = None
    try:
        with pytest.raises(Exception, match="[Nn]ot authorized|[Bb]ad user name|refused"):
            async with connect(secure_broker.plain_url, NAME, username="mallory", password="x"):
                pass
        async with connect(secure_broker.plain_url, NAME, username="ops", password="ops-secret",
                           client_id="ops-session-1") as ops:
            assert not (await ops.call_tool("pump_relay_off", {})).is_error
            # eve, a valid user, tries to post a call on ops' RPC topic: the broker refuses it
            eve = await anyio.to_thread.run_sync(lambda: _raw(secure_broker.plain_url, "eve-1", "eve", "eve-secret"))
            infos = []
            msg = {"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {"name": "pump_relay_on", "arguments": {}}}
            infos.append(eve.client.publish(f"$mcp-rpc/ops-session-1/{SID}/{NAME}", json.dumps(msg), qos=1))
            await anyio.sleep(1.0)
            state = json.loads((await ops.read_resource("sensor://pump_relay/state")).contents[0].text)
            assert state["value"] is False, "a call on another client's RPC topic reached the device"
    finally:
        if eve:
            eve.close(goodbye=False)
        await agent.stop()


def _raw(url, cid, user, pw):
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.mqtt.broker_url import parse_broker_url

    class R:
        pass

    r = R()
    u = parse_broker_url(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, pw)
    ok = threading.Event()
    c.on_connect = lambda *a: ok.set()
    c.connect(u.host, u.port)
    c.loop_start()
    assert ok.wait(5)
    r.client = c
    r.close = lambda goodbye=False: (c.loop_stop(), c.disconnect())
    return r


RBAC = {
    "default_role": "viewer",
    "rules": [{"client_id": "ops-*", "role": "operator"}],
}


async def test_rbac_roles(secure_broker, tmp_path):
    agent = Agent(device_config(tmp_path, tmp_path / "ca.pem", rbac=RBAC), broker_url=secure_broker.tls_url)
    await agent.start(connect_timeout=10)
    try:
        online = agent.endpoint.transport.online_message()
        roles = {r["name"]: r for r in online["params"]["meta"]["rbac"]["roles"]}
        assert roles["operator"]["allowed_tools"] == "all"
        assert "pump_relay_on" not in roles["viewer"]["allowed_tools"]
        assert "notifications/initialized" in roles["viewer"]["allowed_methods"]
        async with connect(secure_broker.plain_url, NAME, username="eve", password="eve-secret",
                           client_id="viewer-7") as viewer:
            names = {t.name for t in (await viewer.list_tools()).tools}
            # actuators hidden; the relay's read-only sensor tool (pump_relay_read) is no actuator
            assert {n for n in names if n.startswith("pump_relay")} == {"pump_relay_read"}
            with pytest.raises(MCPError) as exc:
                await viewer.call_tool("pump_relay_on", {})
            assert exc.value.error.code == -32003 and "viewer" in exc.value.error.message
            assert json.loads((await viewer.read_resource("sensor://pump_relay/state")).contents[0].text)["value"] is False
        async with connect(secure_broker.plain_url, NAME, username="ops", password="ops-secret",
                           client_id="ops-console") as operator:
            assert "pump_relay_on" in {t.name for t in (await operator.list_tools()).tools}
            assert not (await operator.call_tool("pump_relay_on", {})).is_error
    finally:
        await agent.stop()


async def test_rate_limit_refuses_the_flood(secure_broker, tmp_path):
    agent = Agent(device_config(tmp_path, tmp_path / "ca.pem", rate_limit={"rate": 2, "burst": 2}),
                  broker_url=secure_broker.tls_url)
    await agent.start(connect_timeout=10)
    try:
        async with connect(secure_broker.plain_url, NAME, username="ops", password="ops-secret") as session:
            start = time.monotonic()
            results = []
            for i in range(20):
                results.append(await session.call_tool("pump_relay_set", {"state": i % 2 == 0}))
            elapsed = time.monotonic() - start
            done = [r for r in results if not r.is_error]
            refused = [r for r in results if r.is_error]
            assert refused and "rate limit" in refused[0].content[0].text
            assert len(done) <= 2 + 2 * elapsed + 1, (len(done), elapsed)
            assert len(done) >= 2
            # reads are never rate limited
            for _ in range(5):
                await session.read_resource("sensor://pump_relay/state")
    finally:
        await agent.stop()


pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
