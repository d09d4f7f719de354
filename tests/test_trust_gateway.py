"""Issue 13 item 8: the gateway's Streamable HTTP endpoint behind real authentication, and mTLS
brokers for the CLI. ``python -m edge_agent gateway --http`` against simulated devices on a real
Mosquitto, with the official ``mcp`` client: Protected Resource Metadata, 401 without a valid
bearer token (static tokens from a file, or JWTs checked against a JWKS), a refused LAN bind
without auth; the device tokens the gateway signs verify on a device; ``edge-agent call
--ca-file --cert --key`` through a Mosquitto that requires client certificates."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time

import httpx2 as httpx
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import ed25519
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.gateway.auth import Caller, DeviceTokens, tokens_file_line
from edge_agent.server import tokens
from edge_agent.testing.broker import LocalBroker, free_port
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice

from .test_gateway_http import GatewayProcess

pytestmark = pytest.mark.anyio

NAME, SID = "devices/greenhouse/gw-auth", "gw-auth-1"
ISS = "https://login.example"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _client(token: str | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)


async def _tools(url: str, token: str) -> set[str]:
    async with _client(token) as http, streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write, read_timeout_seconds=30) as s:
        await s.initialize()
        return {t.name for t in (await s.list_tools()).tools}


async def test_lan_bind_without_auth_is_refused(broker, tmp_path):
    out = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "edge_agent", "gateway", "--broker", broker.url, "--http", f"0.0.0.0:{free_port()}"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "refusing to serve MCP on 0.0.0.0 without authentication" in out.stderr


async def test_static_tokens_and_protected_resource_metadata(broker, tmp_path):
    device = SimDevice(broker.url, SID, NAME, driver=LoopDriver(asyncio.get_running_loop()))
    await device.start()
    token = secrets.token_urlsafe(24)
    (tmp_path / "tokens").write_text("# gateway callers\n" + tokens_file_line(token, "alice", ["operator"]) + "\n")
    assert token not in (tmp_path / "tokens").read_text()  # only its digest is stored
    gw = await GatewayProcess(broker.url, tmp_path / "gw.log", "--auth-tokens", str(tmp_path / "tokens")).ready()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            meta = await http.get(f"http://127.0.0.1:{gw.port}/.well-known/oauth-protected-resource/mcp")
            assert meta.status_code == 200 and meta.json()["resource"] == gw.url
            body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}}
            headers = {"Accept": "application/json, text/event-stream"}
            for bad in (None, "wrong-" + token):
                r = await http.post(gw.url, json=body, headers={**headers, **({"Authorization": f"Bearer {bad}"} if bad else {})})
                assert r.status_code == 401, r.text
                assert "resource_metadata=" in r.headers["www-authenticate"]
        names = await _tools(gw.url, token)
        assert "devices.greenhouse.gw-auth__echo" in names, names
    finally:
        gw.stop()
        await device.stop()


async def test_jwt_bearer_via_jwks(broker, tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [tokens.public_jwk(key, "idp-1")]}))
    gw = GatewayProcess(broker.url, tmp_path / "gw.log", "--auth-jwks", str(tmp_path / "jwks.json"),
                        "--auth-issuer", ISS)
    await gw.ready()
    now = int(time.time())

    def mint(**over):
        claims = {"iss": ISS, "sub": "bob", "aud": gw.url, "exp": now + 300, "iat": now, "roles": ["viewer"], **over}
        return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "idp-1"})

    try:
        assert isinstance(await _tools(gw.url, mint()), set)  # accepted: initialize and list work
        async with httpx.AsyncClient(timeout=10) as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            for bad in (mint(aud="https://other.example/mcp"), mint(exp=now - 600), mint(iss="https://evil.example"),
                        jwt.encode({"iss": ISS, "sub": "x", "aud": gw.url, "exp": now + 60}, "k" * 32, algorithm="HS256")):
                r = await http.post(gw.url, json=body, headers={"Authorization": f"Bearer {bad}",
                                                                "Accept": "application/json, text/event-stream"})
                assert r.status_code == 401, r.text
    finally:
        gw.stop()


def test_device_tokens_verify_on_a_device(tmp_path):
    """What the gateway signs for a caller, a device with the gateway as [[auth.issuers]] accepts:
    the caller's subject and roles, bound to the gateway's client id, short-lived."""
    minter = DeviceTokens(ed25519.Ed25519PrivateKey.generate(), issuer="gw.example", lifetime=120)
    (tmp_path / "gw-jwks.json").write_text(json.dumps(minter.jwks()))
    verifier = tokens.verifier_from_config({"issuers": [{"issuer": "gw.example", "jwks_file": str(tmp_path / "gw-jwks.json")}]},
                                           server_id=SID, server_name=NAME)
    token = minter.mint(Caller("alice", ("operator",)), client_id="gateway-7", audience=SID)
    claims = verifier.verify(token, "gateway-7")
    assert (claims.subject, claims.roles, claims.raw["act"]) == ("alice", ("operator",), {"sub": "gw.example"})
    with pytest.raises(tokens.TokenError, match="another client id"):
        verifier.verify(token, "gateway-8")
    with pytest.raises(tokens.TokenError, match="expired"):
        verifier.verify(token, "gateway-7", now=time.time() + 600)


def test_cli_with_client_certificate(tmp_path):
    """A Mosquitto TLS listener that requires a client certificate: the device (cert_file,
    key_file) and ``edge-agent call --ca-file --cert --key`` get through; without --cert not."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("ops-client")
    for name, blob in (("ca.pem", ca.cert_pem), ("server.pem", server.cert_chain_pems[0]),
                       ("server.key", server.private_key_pem), ("client.pem", client.cert_chain_pems[0]),
                       ("client.key", client.private_key_pem)):
        blob.write_to_path(str(tmp_path / name))
    with LocalBroker(workdir=tmp_path / "broker", listener_conf=(
            f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}\n"
            "require_certificate true")) as broker:
        url = f"mqtts://localhost:{broker.port}"
        config = cfg.from_dict({
            "device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "s")},
            "broker": {"ca_file": str(tmp_path / "ca.pem"), "cert_file": str(tmp_path / "client.pem"),
                       "key_file": str(tmp_path / "client.key")},
            "drivers": [{"kind": "led", "name": "status_led", "pin": 17}]})

        async def go():
            agent = Agent(config, broker_url=url)
            await agent.start(connect_timeout=10)
            try:
                tls = ["--ca-file", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "client.pem"),
                       "--key", str(tmp_path / "client.key")]
                ok = await asyncio.to_thread(subprocess.run, [
                    sys.executable, "-m", "edge_agent", "call", NAME, "status_led_on", "--broker", url, *tls],
                    capture_output=True, text=True, timeout=60)
                assert ok.returncode == 0, ok.stderr
                listed = await asyncio.to_thread(subprocess.run, [
                    sys.executable, "-m", "edge_agent", "devices", "--broker", url, *tls, "--json"],
                    capture_output=True, text=True, timeout=60)
                assert listed.returncode == 0 and SID in listed.stdout, listed.stderr
                no_cert = await asyncio.to_thread(subprocess.run, [
                    sys.executable, "-m", "edge_agent", "call", NAME, "status_led_on", "--broker", url, *tls[:2],
                    "--timeout", "5"], capture_output=True, text=True, timeout=60)
                assert no_cert.returncode != 0
                half = await asyncio.to_thread(subprocess.run, [
                    sys.executable, "-m", "edge_agent", "call", NAME, "status_led_on", "--broker", url, *tls[:4]],
                    capture_output=True, text=True, timeout=60)
                assert half.returncode == 2 and "--cert and --key go together" in half.stderr
            finally:
                await agent.stop()

        asyncio.run(go())


async def test_device_roles_apply_per_caller_through_the_gateway(broker, tmp_path):
    """alice (operator) and bob (viewer) behind the gateway's bearer tokens: the gateway signs
    each forwarded request with a device token for its caller; the device (gateway's key in
    [[auth.issuers]], [rbac] viewer by default) lets alice switch the pump and refuses bob."""
    from cryptography.hazmat.primitives import serialization

    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "gw.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    minter = DeviceTokens(key, issuer="gw.example")
    (tmp_path / "gw-jwks.json").write_text(json.dumps(minter.jwks()))
    agent = Agent(cfg.from_dict({
        "device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "s")},
        "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17}],
        "rbac": {"default_role": "viewer"},
        "auth": {"required": False, "issuers": [{"issuer": "gw.example", "jwks_file": str(tmp_path / "gw-jwks.json")}]},
    }), broker_url=broker.url)
    await agent.start(connect_timeout=10)
    alice, bob = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    (tmp_path / "tokens").write_text(tokens_file_line(alice, "alice", ["operator"]) + "\n"
                                     + tokens_file_line(bob, "bob", ["viewer"]) + "\n")
    gw = await GatewayProcess(broker.url, tmp_path / "gw.log", "--auth-tokens", str(tmp_path / "tokens"),
                              "--device-token-key", str(tmp_path / "gw.key"), "--device-token-issuer", "gw.example").ready()
    tool = "devices.greenhouse.gw-auth__pump_relay_on"
    try:
        for token, allowed in ((alice, True), (bob, False)):
            async with _client(token) as http, streamable_http_client(gw.url, http_client=http) as (read, write), \
                    ClientSession(read, write, read_timeout_seconds=30) as s:
                await s.initialize()
                try:
                    result = await s.call_tool(tool, {})
                    ok = not result.is_error
                except Exception as exc:  # the device's -32003, passed on by the gateway
                    assert "Forbidden" in str(exc) and "viewer" in str(exc), exc
                    ok = False
                assert ok is allowed, (token == alice, result if ok else None)
    finally:
        gw.stop()
        await agent.stop()
