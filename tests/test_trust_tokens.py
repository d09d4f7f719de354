"""Issue 13 item 2(a): signed client credentials. A JWT in ``initialize``
``params._meta["dev.edge-agent/token"]``, verified on the device against the issuer's JWKS,
bound to the mcp-client-id and an expiry; roles from its claims; a live session re-initialized
only by the same subject. Against a real Mosquitto and the real agent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from mcp import MCPError

from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.server import tokens
from tests.raw_client import RawMcpClient

NAME = "devices/tokens/pi-1"
SID = "tokens-pi-1"
ISS = "https://auth.example"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def keys():
    return ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def jwks(tmp_path, keys):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [tokens.public_jwk(keys[0], "ed1"), tokens.public_jwk(keys[1], "ec1")]}))
    return path


def mint(keys, client_id="ops-1", sub="alice", roles=("operator",), *, exp=300, aud=SID, iss=ISS, kid="ed1", **extra):
    claims = {"iss": iss, "sub": sub, "aud": aud, "exp": int(time.time()) + exp, "iat": int(time.time()),
              "client_id": client_id, "roles": list(roles), **extra}
    if client_id is None:
        del claims["client_id"]
    key, alg = (keys[0], "EdDSA") if kid == "ed1" else (keys[1], "ES256")
    return tokens.sign(claims, key, kid=kid, algorithm=alg)


def verifier(jwks):
    return tokens.verifier_from_config({"issuers": [{"issuer": ISS, "jwks_file": str(jwks)}]},
                                       server_id=SID, server_name=NAME)


def test_verify_accepts_and_refuses(keys, jwks):
    v = verifier(jwks)
    c = v.verify(mint(keys), "ops-1")
    assert (c.subject, c.roles, c.issuer) == ("alice", ("operator",), ISS)
    assert v.verify(mint(keys, kid="ec1", aud=[NAME, "x"]), "ops-1").subject == "alice"  # ES256, aud list
    assert v.verify(mint(keys, client_id=None, client_id_prefix="ops-"), "ops-7").subject == "alice"
    other = ed25519.Ed25519PrivateKey.generate()
    pub_pem = keys[0].public_key().public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).Encoding.Raw,
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).PublicFormat.Raw)
    refused = {
        "expired": mint(keys, exp=-120),
        "another audience": mint(keys, aud="devices/other"),
        "another client id": mint(keys, client_id="ops-2"),
        "not trusted": mint(keys, iss="https://evil.example"),
        "bad signature": tokens.sign({"iss": ISS, "sub": "a", "aud": SID, "exp": time.time() + 60, "client_id": "ops-1"},
                                     other, kid="ed1"),
        "algorithm 'none'": jwt.encode({"iss": ISS, "sub": "a", "aud": SID, "exp": time.time() + 60,
                                        "client_id": "ops-1"}, None, algorithm="none"),
        "algorithm 'HS256'": jwt.encode({"iss": ISS, "sub": "a", "aud": SID, "exp": time.time() + 60,
                                         "client_id": "ops-1"}, pub_pem, algorithm="HS256"),
        "no subject": mint(keys, sub=""),
        "bound to no client id": mint(keys, client_id=None),
        "not a JWT": "abc.def",
        "not valid yet": mint(keys, nbf=int(time.time()) + 600),
    }
    for why, token in refused.items():
        with pytest.raises(tokens.TokenError, match=why.split()[0] if why != "another client id" else "another client"):
            v.verify(token, "ops-1")
    # clock skew: 20 s late is tolerated (default 30 s), and "now" is the caller's
    assert v.verify(mint(keys, exp=-20), "ops-1")
    with pytest.raises(tokens.TokenError, match="expired"):
        v.verify(mint(keys), "ops-1", now=time.time() + 1000)


def _config(tmp_path, jwks, required=True):
    return cfg.from_dict({
        "device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "s")},
        "link": {"reconnect_min": 0.1, "reconnect_max": 0.3},
        "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17}],
        "rbac": {"default_role": "viewer", "rules": [{"client_id": "ops-*", "role": "operator"}]},
        "auth": {"required": required, "issuers": [{"issuer": ISS, "jwks_file": str(jwks)}]},
    })


def test_auth_config_errors(tmp_path, jwks):
    base = {"device": {"server_name": NAME, "server_id": SID}}
    with pytest.raises(cfg.ConfigError) as exc:
        cfg.from_dict({**base, "auth": {"issuers": [{"issuer": ISS}]}})
    assert exc.value.problems[0][1] == "auth.issuers[0]"
    (tmp_path / "private.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    with pytest.raises(cfg.ConfigError, match="no usable"):
        cfg.from_dict({**base, "auth": {"issuers": [{"issuer": ISS, "jwks_file": str(tmp_path / "private.json")}]}})
    config = cfg.from_dict({**base, "auth": {"issuers": [{"issuer": ISS, "jwks_file": str(jwks)}]}})
    assert config.rbac.token_required and config.rbac.verifier is not None


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _refused(match: str, broker_url: str, client_id: str, token=None) -> None:
    """``initialize`` of ``client_id`` (with ``token``) is answered with an error matching ``match``."""
    try:
        async with connect(broker_url, NAME, client_id=client_id, token=token):
            pass
    except BaseException as exc:  # the SDK's task group wraps the MCPError
        leaf = _leaf(exc)
        assert isinstance(leaf, MCPError) and __import__("re").search(match, str(leaf)), repr(leaf)
        return
    raise AssertionError("initialize was accepted")


async def _until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_tokens_decide_roles_and_hold_sessions(broker, tmp_path, keys, jwks):
    agent = Agent(_config(tmp_path, jwks), broker_url=broker.url)
    await agent.start(connect_timeout=10)
    try:
        # no token: refused, even with a client id the rules make an operator
        await _refused("Unauthorized: this device requires a signed token", broker.url, "ops-9")
        # a token bound to another client id, or expired: refused
        await _refused("another client id", broker.url, "ops-9", mint(keys, client_id="ops-1"))
        await _refused("expired", broker.url, "ops-9", mint(keys, client_id="ops-9", exp=-300))
        # a viewer's token on an ops-* id: the token's role wins, not the id's rule
        async with connect(broker.url, NAME, client_id="ops-v", token=mint(keys, "ops-v", "bob", ["viewer"])) as v:
            with pytest.raises(MCPError, match="Forbidden: role 'viewer'"):
                await v.call_tool("pump_relay_on", {})
        async with connect(broker.url, NAME, client_id="ops-1", token=lambda: mint(keys)) as ops:
            assert not (await ops.call_tool("pump_relay_on", {})).is_error
            session = agent.server.sessions["ops-1"]
            assert (session.subject, session.role.name) == ("alice", "operator")
            # mallory spoofs a re-initialize of ops-1 (her own token, or none): dropped, unanswered
            mallory = RawMcpClient(broker.url, "mallory-1", SID, NAME)
            try:
                mallory.cid = "ops-1"  # MCP-MQTT-CLIENT-ID of the victim
                for token in (None, mint(keys, "mallory-1", "mallory")):
                    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "m", "version": "0"}}
                    if token:
                        params["_meta"] = {tokens.TOKEN_META: token}
                    before = agent.endpoint.refused
                    mallory.send("initialize", params, id=1)
                    await _until(lambda: agent.endpoint.refused == before + 1)
            finally:
                mallory.close(goodbye=False)
            assert agent.server.sessions["ops-1"] is session  # untouched: still alice's, in flight work kept
            assert not (await ops.call_tool("pump_relay_off", {})).is_error
            # the token's expiry bounds the session
            session.expires = time.time() - 100
            with pytest.raises(MCPError, match="token has expired"):
                await ops.call_tool("pump_relay_on", {})
    finally:
        await agent.stop()


async def test_cli_token_file(broker, tmp_path, keys, jwks):
    agent = Agent(_config(tmp_path, jwks), broker_url=broker.url)
    await agent.start(connect_timeout=10)
    try:
        (tmp_path / "token").write_text(mint(keys, client_id=None, client_id_prefix="ops-cli-") + "\n")
        ok = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "edge_agent", "call", NAME, "pump_relay_on", "--broker", broker.url,
            "--token-file", str(tmp_path / "token")], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        bare = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "edge_agent", "call", NAME, "pump_relay_on", "--broker", broker.url],
            capture_output=True, text=True, timeout=60)
        assert bare.returncode == 1 and "requires a signed token" in bare.stderr
    finally:
        await agent.stop()


async def test_one_subject_shares_one_client_budget(broker, tmp_path, keys, jwks):
    """The per-client rate limit follows the token's subject: alice under two client ids has one budget."""
    config = _config(tmp_path, jwks)
    config.limits.client_rate, config.limits.client_burst = 0.01, 1
    agent = Agent(config, broker_url=broker.url)
    await agent.start(connect_timeout=10)
    try:
        async with connect(broker.url, NAME, client_id="ops-a", token=mint(keys, "ops-a")) as a, \
                connect(broker.url, NAME, client_id="ops-b", token=mint(keys, "ops-b")) as b:
            assert not (await a.call_tool("pump_relay_on", {})).is_error
            again = await b.call_tool("pump_relay_off", {})
            assert again.is_error and "this client's rate limit" in again.content[0].text
        async with connect(broker.url, NAME, client_id="ops-c", token=mint(keys, "ops-c", "carol")) as c:
            assert not (await c.call_tool("pump_relay_off", {})).is_error  # another subject, its own budget
    finally:
        await agent.stop()


async def test_session_less_requests_carry_their_token(broker, tmp_path, keys, jwks):
    """MCP 2026-07-28 (no initialize): every request carries the token; the device admits the
    client from it and answers each request with that token's role."""
    from mcp import Client

    from edge_agent.cloud import mqtt_client

    agent = Agent(_config(tmp_path, jwks), broker_url=broker.url)
    await agent.start(connect_timeout=10)
    try:
        async with Client(mqtt_client(broker.url, NAME, client_id="ops-m", token=lambda: mint(keys, "ops-m"))) as c:
            assert c.session.protocol_version == "2026-07-28"
            assert not (await c.call_tool("pump_relay_on", {})).is_error
        async with Client(mqtt_client(broker.url, NAME, client_id="ops-v",
                                      token=lambda: mint(keys, "ops-v", "bob", ["viewer"]))) as v:
            with pytest.raises(MCPError, match="Forbidden: role 'viewer'"):
                await v.call_tool("pump_relay_on", {})
        try:
            async with Client(mqtt_client(broker.url, NAME, client_id="ops-n")) as n:
                await n.call_tool("pump_relay_on", {})
        except BaseException as exc:
            assert "requires a signed token" in str(_leaf(exc)), repr(_leaf(exc))
        else:
            raise AssertionError("a session-less client without a token was served")
    finally:
        await agent.stop()
