"""Issue 13 item 2: HS256 tokens on the Pi, so one issuer (or gateway) can mint tokens that
both a Pi and an ESP32 board verify (the board has HMAC-SHA256, not Ed25519: docs/esp32.md).

The Verifier accepts HS256 only with a key its issuer's JWKS gives as ``kty: "oct"``; an
EdDSA/ES256 public key is never used as an HMAC secret ("algorithm confusion", RFC 8725
section 2.1): an attacker who knows a public key (it is public) and signs an HS256 token with
it in any encoding is refused. Unit tests on the Verifier, and one end to end against the
real agent on a real Mosquitto."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from mcp import MCPError

from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.server import tokens

NAME = "devices/tokens/pi-hs"
SID = "tokens-pi-hs"
ISS = "https://auth.example"
SECRET = os.urandom(32)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(client_id="ops-1", sub="alice", roles=("operator",), exp=300, **extra):
    now = int(time.time())
    return {"iss": ISS, "sub": sub, "aud": SID, "exp": now + exp, "iat": now, "client_id": client_id,
            "roles": list(roles), **extra}


def forge(header: dict, body: dict, secret: bytes) -> str:
    """A compact JWS with an HMAC-SHA256 signature made by hand (PyJWT refuses to sign HS256
    with a PEM public key: an attacker is not so polite)."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(body).encode())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def verifier(tmp_path, *jwks: dict) -> tokens.Verifier:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": list(jwks)}))
    return tokens.verifier_from_config({"issuers": [{"issuer": ISS, "jwks_file": str(path)}]},
                                       server_id=SID, server_name=NAME)


def test_hs256_with_an_oct_key(tmp_path):
    v = verifier(tmp_path, tokens.secret_jwk(SECRET, "board-1"))
    c = v.verify(tokens.sign(claims(), SECRET, kid="board-1", algorithm="HS256"), "ops-1")
    assert (c.subject, c.roles, c.issuer) == ("alice", ("operator",), ISS)
    assert v.verify(tokens.sign(claims(), SECRET, algorithm="HS256"), "ops-1").subject == "alice"  # no kid
    refused = {
        "bad signature": tokens.sign(claims(), os.urandom(32), algorithm="HS256"),
        "expired": tokens.sign(claims(exp=-120), SECRET, algorithm="HS256"),
        "another client id": tokens.sign(claims(client_id="ops-2"), SECRET, algorithm="HS256"),
        "no key for algorithm 'HS384'": jwt.encode(claims(), SECRET + SECRET, algorithm="HS384"),  # not accepted at all
        "no key for algorithm 'EdDSA'": tokens.sign(claims(), ed25519.Ed25519PrivateKey.generate()),
        "algorithm 'none'": jwt.encode(claims(), None, algorithm="none"),
    }
    for why, token in refused.items():
        match = "not accepted" if why.endswith("'HS384'") else why
        with pytest.raises(tokens.TokenError, match=match):
            v.verify(token, "ops-1")


def test_a_public_key_is_never_an_hmac_secret(tmp_path):
    """Algorithm confusion: the issuer has an Ed25519 and a P-256 public key. HS256 tokens
    signed with those public keys, in every encoding an attacker could try, are refused."""
    ed = ed25519.Ed25519PrivateKey.generate()
    p256 = ec.generate_private_key(ec.SECP256R1())
    ed_jwk, ec_jwk = tokens.public_jwk(ed, "ed1"), tokens.public_jwk(p256, "ec1")
    v = verifier(tmp_path, ed_jwk, ec_jwk)
    assert v.verify(tokens.sign(claims(), ed, kid="ed1"), "ops-1").subject == "alice"  # the real thing works
    secrets = []
    for key, jwk in ((ed, ed_jwk), (p256, ec_jwk)):
        public = key.public_key()
        secrets += [
            public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
            json.dumps(jwk).encode(), jwk["x"].encode(), base64.urlsafe_b64decode(jwk["x"] + "=="),
        ]
    secrets.append(ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    for secret in secrets:
        for kid in (None, "ed1", "ec1"):
            header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
            with pytest.raises(tokens.TokenError, match="no key for algorithm 'HS256'"):
                v.verify(forge(header, claims(), secret), "ops-1")


def test_oct_keys_beside_public_keys_stay_apart(tmp_path):
    """One issuer, an oct secret and an Ed25519 key: each verifies its own algorithm only."""
    ed = ed25519.Ed25519PrivateKey.generate()
    v = verifier(tmp_path, tokens.public_jwk(ed, "ed1"), tokens.secret_jwk(SECRET, "hs1"))
    assert v.verify(tokens.sign(claims(sub="a"), ed, kid="ed1"), "ops-1").subject == "a"
    assert v.verify(tokens.sign(claims(sub="b"), SECRET, kid="hs1", algorithm="HS256"), "ops-1").subject == "b"
    # the oct key's id on an EdDSA token, the Ed25519 key's id on an HS256 token: no key fits
    with pytest.raises(tokens.TokenError, match="no key for algorithm 'EdDSA'"):
        v.verify(tokens.sign(claims(), ed, kid="hs1"), "ops-1")
    with pytest.raises(tokens.TokenError, match="no key for algorithm 'HS256'"):
        v.verify(tokens.sign(claims(), SECRET, kid="ed1", algorithm="HS256"), "ops-1")
    # an "EdDSA" token carrying an HMAC made with the secret: never checked as HMAC
    with pytest.raises(tokens.TokenError, match="bad signature"):
        v.verify(forge({"alg": "EdDSA"}, claims(), SECRET), "ops-1")


def test_which_oct_keys_are_usable(tmp_path):
    short = {"kty": "oct", "k": b64url(os.urandom(31))}
    other_alg = {**tokens.secret_jwk(SECRET), "alg": "HS512"}
    for jwk in (short, other_alg):
        with pytest.raises(tokens.TokenError, match="no usable key"):
            verifier(tmp_path, jwk)
    assert verifier(tmp_path, {"kty": "oct", "k": b64url(SECRET)}).verify(  # no alg: HS256
        tokens.sign(claims(), SECRET, algorithm="HS256"), "ops-1").subject == "alice"
    with pytest.raises(ValueError, match="at least 32 bytes"):
        tokens.secret_jwk(b"secret")


async def test_agent_admits_hs256_tokens(broker, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [tokens.secret_jwk(SECRET, "hs1")]}))
    config = cfg.from_dict({
        "device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "s")},
        "link": {"reconnect_min": 0.1, "reconnect_max": 0.3},
        "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17}],
        "rbac": {"default_role": "viewer"},
        "auth": {"issuers": [{"issuer": ISS, "jwks_file": str(jwks)}]},
    })
    agent = Agent(config, broker_url=broker.url)
    await agent.start(connect_timeout=10)
    try:
        token = tokens.sign(claims("ops-hs", "carol"), SECRET, kid="hs1", algorithm="HS256")
        async with connect(broker.url, NAME, client_id="ops-hs", token=token) as ops:
            assert not (await ops.call_tool("pump_relay_on", {})).is_error
            assert agent.server.sessions["ops-hs"].subject == "carol"
        viewer = tokens.sign(claims("view-hs", "dan", ["viewer"]), SECRET, algorithm="HS256")
        async with connect(broker.url, NAME, client_id="view-hs", token=viewer) as v:
            with pytest.raises(MCPError, match="Forbidden: role 'viewer'"):
                await v.call_tool("pump_relay_on", {})
        forged = tokens.sign(claims("ops-x", "eve"), os.urandom(32), algorithm="HS256")
        with pytest.raises(BaseException) as exc:
            async with connect(broker.url, NAME, client_id="ops-x", token=forged):
                pass
        leaf = exc.value
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]  # the SDK's task group wraps the MCPError
        assert isinstance(leaf, MCPError) and "Unauthorized: bad signature" in str(leaf), repr(leaf)
    finally:
        await agent.stop()
