"""Issue 13 item 2: the board verifies the same signed tokens as the Pi, with HS256 (HMAC-SHA256
over the firmware's hashlib.sha256: MicroPython's ESP32 firmware has no Ed25519), under the
MicroPython WebAssembly port against a real Mosquitto (the harness of
tests/test_micropython_board.py). Tokens are minted with PyJWT; the Pi's Verifier accepts the
very same tokens from the issuer's oct JWK (edge_agent/server/tokens.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
from pathlib import Path

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from mcp import MCPError

from edge_agent.cloud import connect
from edge_agent.server import tokens
from tests.test_micropython_board import HOST, NAME, SID, Board, RawClient, node_binary

pytestmark = pytest.mark.anyio

ISS = "https://auth.example"
LONG_ISS = "https://gateway.example"  # an 80-byte secret: HMAC hashes a key longer than its block first
SECRET = os.urandom(32)
LONG_SECRET = os.urandom(80)

MAIN = """
from edgemcp import Device, hw

app = Device(server_name=%r, description="token test node")
hw.digital_out(app, "pump", pin=26, description="irrigation pump relay")


@app.tool("soil_check", "Is the soil probe answering?", read_only=True)
def soil_check():
    return {"ok": True}


app.run()
""" % NAME


@pytest.fixture
def anyio_backend():
    return "asyncio"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def auth_site(broker, **extra) -> str:
    auth = {"issuers": {ISS: b64url(SECRET), LONG_ISS: [b64url(os.urandom(32)), b64url(LONG_SECRET)]},
            "clock_skew": 1}
    config = {"broker": "127.0.0.1", "port": broker.port, "server_name": NAME, "server_id": SID, "auth": auth, **extra}
    return f"config = {json.dumps(config)}\n"


def claims(client_id: str | None, sub="alice", roles=("operator",), exp=300, iss=ISS, aud=SID, **extra) -> dict:
    now = int(time.time())
    c = {"iss": iss, "sub": sub, "aud": aud, "exp": now + exp, "iat": now, "roles": list(roles), **extra}
    if client_id is not None:
        c["client_id"] = client_id
    return c


def mint(client_id: str | None, sub="alice", roles=("operator",), *, secret=SECRET, **kw) -> str:
    return jwt.encode(claims(client_id, sub, roles, **kw), secret, algorithm="HS256")


def initialize(raw: RawClient, token, msg_id: str) -> dict:
    """An initialize carrying ``token`` (None: no _meta), and its answer."""
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    if token is not None:
        params["_meta"] = {tokens.TOKEN_META: token}
    raw.send(raw.control, {"jsonrpc": "2.0", "id": msg_id, "method": "initialize", "params": params})
    return raw.answer(msg_id)


def refused(answer: dict, words: str) -> None:
    err = answer.get("error")
    assert err and err["code"] == -32003 and err["message"].startswith("Unauthorized: ") and words in err["message"], answer
    assert err["data"] == {"reason": "token"}


def main_file(tmp_path: Path) -> Path:
    path = tmp_path / "main.py"
    path.write_text(MAIN)
    return path


async def test_board_admits_only_valid_tokens_and_applies_their_role(broker, tmp_path):
    with Board(tmp_path, auth_site(broker), main=main_file(tmp_path)) as b:
        b.wait_log(f"online as {NAME}")
        raw = RawClient(broker, "ops-1")
        try:
            refused(initialize(raw, None, "none"),
                    "this device requires a signed token in params._meta['dev.edge-agent/token']")
            refused(initialize(raw, mint("ops-2"), "other-id"), "the token is bound to another client id, not 'ops-1'")
            refused(initialize(raw, mint("ops-1", exp=-60), "expired"), "the token has expired")
            refused(initialize(raw, jwt.encode(claims("ops-1"), None, algorithm="none"), "alg-none"),
                    "algorithm 'none' is not accepted (only HS256)")
            refused(initialize(raw, mint("ops-1", secret=os.urandom(32)), "bad-sig"),
                    "bad signature (no key of issuer 'https://auth.example' verifies it)")
            # the right secret, the header's alg changed afterwards: the signature no longer fits
            head, body, sig = mint("ops-1").split(".")
            hs384 = b64url(json.dumps({"alg": "HS384", "typ": "JWT"}).encode())
            refused(initialize(raw, f"{hs384}.{body}.{sig}", "hs384"), "algorithm 'HS384' is not accepted")
            eddsa = tokens.sign(claims("ops-1"), ed25519.Ed25519PrivateKey.generate())
            refused(initialize(raw, eddsa, "eddsa"), "algorithm 'EdDSA' is not accepted")
            refused(initialize(raw, mint("ops-1", iss="https://evil.example"), "iss"),
                    "issuer 'https://evil.example' is not trusted by this device")
            refused(initialize(raw, mint("ops-1", aud="devices/other"), "aud"), "the token is for another audience")
            refused(initialize(raw, mint("ops-1", nbf=int(time.time()) + 600), "nbf"), "not valid yet")
            refused(initialize(raw, mint(None), "unbound"), "bound to no client id")
            refused(initialize(raw, "abc.def", "garbage"), "not a JWT")
            refused(initialize(raw, f"{head}.{b64url(b'[1]')}.{sig}", "not-object"), "not a JWT")
            # truncated signature: compared in full, never as a prefix
            refused(initialize(raw, f"{head}.{body}.{sig[:10]}", "short-sig"), "bad signature")
            assert b.log.count("initialize from ops-1 refused: Unauthorized: ") == 14
        finally:
            raw.close()

        operator = mint("ops-1", "alice", ["operator"])
        # the Pi verifies the very same token from the issuer's oct JWK
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps({"keys": [tokens.secret_jwk(SECRET)]}))
        pi = tokens.verifier_from_config({"issuers": [{"issuer": ISS, "jwks_file": str(path)}]},
                                         server_id=SID, server_name=NAME)
        assert pi.verify(operator, "ops-1").roles == ("operator",)

        async with connect(broker.url, NAME, client_id="ops-1", token=operator) as ops:
            assert {t.name for t in (await ops.list_tools()).tools} == {"pump_set", "soil_check"}
            assert not (await ops.call_tool("pump_set", {"on": True})).is_error
            health = json.loads((await ops.read_resource("device://health")).contents[0].text)["value"]
            assert health["sessions"] == 1  # none of the refused initializes left a session

            # mallory re-initializes ops-1 with her own valid token for that id: dropped unanswered
            mallory = RawClient(broker, "mallory-1")
            try:
                mallory.cid = "ops-1"
                mallory.props.UserProperty = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", "ops-1")]
                mallory.send(mallory.control, {"jsonrpc": "2.0", "id": "spoof", "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "m", "version": "0"},
                    "_meta": {tokens.TOKEN_META: mint("ops-1", "mallory")}}})
                b.wait_log("initialize from ops-1 refused: Unauthorized: this client id has a live session of another subject")
            finally:
                mallory.close()
            assert not (await ops.call_tool("pump_set", {"on": False})).is_error  # alice's session goes on

        # a viewer (roles as a space-separated string, the long-secret issuer): read-only tools only
        viewer = mint("view-1", "bob", "guest viewer", secret=LONG_SECRET, iss=LONG_ISS)
        async with connect(broker.url, NAME, client_id="view-1", token=viewer) as v:
            assert [t.name for t in (await v.list_tools()).tools] == ["soil_check"]
            ok = await v.call_tool("soil_check", {})
            assert not ok.is_error and ok.structured_content == {"ok": True}
            with pytest.raises(MCPError, match="Forbidden: role 'viewer' may not call tool pump_set"):
                await v.call_tool("pump_set", {"on": True})
            assert json.loads((await v.read_resource("sensor://pump/state")).contents[0].text)["value"] is False

        # a token whose roles the board does not know: the default role (viewer)
        async with connect(broker.url, NAME, client_id="x-1", token=mint("x-1", "carl", ["admin"])) as x:
            with pytest.raises(MCPError, match="Forbidden: role 'viewer'"):
                await x.call_tool("pump_set", {"on": True})

        # the session ends with its token (clock_skew 1 s here): then -32003 on every request
        async with connect(broker.url, NAME, client_id="ops-2", token=mint("ops-2", exp=1)) as short:
            assert not (await short.call_tool("pump_set", {"on": True})).is_error
            await anyio.sleep(2.5)  # the token's lifetime passing: no event to wait for
            with pytest.raises(MCPError, match="Unauthorized: the session's token has expired"):
                await short.list_tools()


async def test_no_token_is_accepted_before_ntp_set_the_clock(broker, tmp_path):
    """Fail closed: an ESP32's clock starts at 2000-01-01, so before NTP answers no expiry can be
    told and every token is refused, saying why; once the clock is set, the same token works."""
    w = tmp_path / "world.json"
    w.write_text(json.dumps({"clock": "cold", "ntp": False}))
    site = auth_site(broker, ntp_every=1)
    with Board(tmp_path, site, main=main_file(tmp_path), extra=("--world", str(w))) as b:
        b.wait_log(f"online as {NAME}")
        b.wait_log("clock: pool.ntp.org: OSError(110")
        raw = RawClient(broker, "ops-1")
        try:
            token = mint("ops-1", exp=120)
            refused(initialize(raw, token, "cold"), "the board's clock is not set yet (no NTP answer)")
            w.write_text(json.dumps({"clock": "cold", "ntp": True}))
            b.wait_log("clock: set by pool.ntp.org", timeout=10)
            answer = initialize(raw, token, "warm")
            assert answer["result"]["serverInfo"]["name"] == "edgemcp", answer
        finally:
            raw.close()


def test_hmac_sha256_under_micropython_matches_rfc_4231():
    """The board's HMAC (RFC 2104 over hashlib.sha256) on the RFC 4231 test cases 1, 2, 4 and 6
    (a key longer than the block), under the MicroPython interpreter, against Python's hmac."""
    cases = [(b"\x0b" * 20, b"Hi There"), (b"Jefe", b"what do ya want for nothing?"),
             (bytes(range(1, 26)), b"\xcd" * 50),
             (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First")]
    code = "import binascii\nfrom edgemcp import tokens\n" + "".join(
        f"print(binascii.hexlify(tokens.hmac(tokens.pads({k!r}), {m!r})).decode())\n" for k, m in cases)
    code += "print(tokens.same(b'ab', b'ab'), tokens.same(b'ab', b'ac'), tokens.same(b'ab', b'a'))\n"
    code += "print(tokens.b64url('-_8'), tokens.b64url('YWJj'))\n"
    done = subprocess.run([node_binary(), str(HOST / "board.mjs"), "--exec", code], cwd=HOST,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    expected = [hmac.new(k, m, hashlib.sha256).hexdigest() for k, m in cases]
    assert lines[:4] == expected
    assert expected[0] == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"  # RFC 4231 4.2
    assert done.stdout.splitlines()[4:] == ["True False False", "b'\\xfb\\xff' b'abc'"]


def test_a_bad_auth_config_is_a_clear_error_at_start():
    """The board's ``auth`` config without ``issuers``, with a malformed one, a secret that is not
    base64url of >= 32 bytes, or bad roles stops ``Device(...)`` with a ValueError saying what is
    wrong (it was a raw KeyError, or a TypeError deep in the HMAC code), under MicroPython."""
    k = b64url(SECRET)
    bad = [True, {}, {"issuers": None}, {"issuers": [ISS, k]}, {"issuers": {}}, {"issuers": {ISS: 42}},
           {"issuers": {ISS: "not base64!"}}, {"issuers": {ISS: [k, b64url(b"short")]}},
           {"issuers": {ISS: k}, "roles": ["operator"]}, {"issuers": {ISS: k}, "roles": {"operator": "root"}},
           {"issuers": {ISS: k}, "default_role": "admin"}]
    code = "from edgemcp import Device\n"
    for auth in bad + [{"issuers": {ISS: [k]}, "roles": {"viewer": "read_only", "pump": ["pump_set"]}}]:
        code += f"""
try:
    Device(server_name={NAME!r}, broker="127.0.0.1", ntp=None, log=False, auth={auth!r})
    print("OK")
except ValueError as e:
    print("ValueError:", e)
"""
    done = subprocess.run([node_binary(), str(HOST / "board.mjs"), "--exec", code], cwd=HOST,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(bad) + 1, done.stdout
    issuers, secret, roles = ('auth: "issuers" must map each token issuer to its secret(s)',
                              "auth: a secret of issuer %r is not base64url of 32 bytes or more" % ISS,
                              'auth: "roles" must map each role to "all", "read_only" or a list of tool names')
    expected = [issuers] * 5 + [secret] * 3 + [roles] * 2 + ["auth: default_role 'admin' is not in roles"]
    for line, want in zip(lines, expected):
        assert line.startswith("ValueError: " + want), (line, want, done.stdout)
    assert lines[-1] == "OK"


def test_a_token_nested_deeply_is_refused_before_json_parses_it():
    """The token's header and claims are parsed before the signature is checked: a client's
    1,000 nested brackets (2 KB) cost ~37 KB inside ``json.loads`` on a board; the board bounds
    the nesting first (``jsonrpc.loads``, 32 levels), as for every request. Measured against a
    flat token of the same length (the base64url decoding costs both the same)."""
    k = b64url(SECRET)
    deep = b64url(b"[" * 1000 + b"]" * 1000)
    flat = b64url(b'"' + b"x" * 1998 + b'"')
    code = f"""
import gc, time
time.gmtime = lambda *a: (2026, 1, 1, 0, 0, 0, 3, 1)  # a set clock
from edgemcp import mcp, tokens
a = tokens.Auth({{"issuers": {{{ISS!r}: {k!r}}}}}, {SID!r}, {NAME!r})
for part in ({flat!r}, {deep!r}):
    gc.collect()
    free = gc.mem_free()
    try:
        a.verify(part + "." + part + ".c2ln", "c1")
    except ValueError as e:
        print("ValueError:", e, free - gc.mem_free())
"""
    done = subprocess.run([node_binary(), str(HOST / "board.mjs"), "--exec", code], cwd=HOST,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    (flat_line, flat_used), (deep_line, deep_used) = [x.rsplit(" ", 1) for x in done.stdout.splitlines()]
    assert flat_line == deep_line == "ValueError: not a JWT (base64url JSON objects expected)", done.stdout
    assert int(deep_used) - int(flat_used) < 4_000, done.stdout  # not the parse's ~37 KB
