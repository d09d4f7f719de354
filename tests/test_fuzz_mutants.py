"""Every fuzz property can fail: each is run against a deliberately broken copy of the code it
covers (a "mutant", installed with monkeypatch, so no file changes) and must catch it.

A property that passes on its mutant would be a property that checks nothing.
"""

from __future__ import annotations

import json

import pytest

from edge_agent.core import jsonrpc, topics
from edge_agent.core.jsonrpc import RpcError
from edge_agent.device import config as cfg
from edge_agent.device import endpoint as endpoint_mod
from edge_agent.mqtt import broker_url, codec
from edge_agent.server import mcp as server_mod
from tests import (
    test_fuzz_config,
    test_fuzz_micropython,
    test_fuzz_protocol,
    test_fuzz_transport,
)
from tests.test_fuzz_common import Property, run_long

ALL = (test_fuzz_protocol.PROPERTIES + test_fuzz_transport.PROPERTIES + test_fuzz_config.PROPERTIES
       + test_fuzz_micropython.PROPERTIES)


def prop(target: str, name_part: str) -> Property:
    found = [p for p in ALL if p.target == target and name_part in p.name and not p.known_bug]
    assert len(found) == 1, (target, name_part, [p.id for p in found])
    return found[0]


# ---- mutants: each takes monkeypatch and breaks one thing

def decode_skips_check(mp):
    mp.setattr(jsonrpc, "check", lambda msg: msg)  # decode returns lists, 1.0 ids, ...


def check_accepts_bool_ids(mp):
    orig = jsonrpc.check
    mp.setattr(jsonrpc, "check", lambda msg: msg if isinstance(msg, dict) and isinstance(msg.get("id"), bool)
               and msg.get("jsonrpc") == "2.0" else orig(msg))


def parse_error_as_invalid_request(mp):
    orig = jsonrpc.decode

    def decode(payload):
        try:
            return orig(payload)
        except RpcError as err:
            if err.code == jsonrpc.PARSE_ERROR:
                raise RpcError(jsonrpc.INVALID_REQUEST, "Invalid Request") from None
            raise
    mp.setattr(jsonrpc, "decode", decode)


def check_accepts_list_params(mp):
    orig = jsonrpc.check
    mp.setattr(jsonrpc, "check", lambda msg: msg if isinstance(msg, dict) and isinstance(msg.get("params"), list)
               and msg.get("jsonrpc") == "2.0" and isinstance(msg.get("method"), str) else orig(msg))


def no_schema_validation(mp):
    mp.setattr(server_mod.McpServer, "_problem", lambda self, name, schema, arguments: None)


def drops_some_answers(mp):
    orig = server_mod.McpServer.answer

    async def answer(self, session, req):
        return None if str(req.id).endswith("1") else await orig(self, session, req)
    mp.setattr(server_mod.McpServer, "answer", answer)


def cbor_errors_unwrapped(mp):
    import cbor2

    def decode(payload, content_type=None):
        if content_type == codec.CBOR:
            value = cbor2.loads(payload)
            if isinstance(value, list) and value and value[0] == 0:
                raise TypeError("a bug")  # what an unguarded decoder step looks like
            return value
        return orig(payload, content_type)
    orig = codec.decode
    mp.setattr(codec, "decode", decode)


def encode_ignores_cbor(mp):
    mp.setattr(codec, "encode", lambda message, content_type=None: json.dumps(message).encode())


def parse_strips_slashes(mp):
    orig = topics.parse

    def parse(topic):
        t = orig(topic)
        if t is not None and t.server_name is not None:
            t = topics.Topic(t.kind, t.server_id, t.server_name.strip("/"), t.client_id)
        return t
    mp.setattr(topics, "parse", parse)


def encode_escapes_surrogates(mp):  # what codec.encode did before 2026-12-01 (known bug K2)
    orig = codec.encode

    def encode(message, content_type=None):
        if content_type == codec.CBOR:
            return orig(message, content_type)
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "backslashreplace")
    mp.setattr(codec, "encode", encode)


def check_id_allows_reserved(mp):  # known bug K10
    orig = topics.check_id
    mp.setattr(topics, "check_id", lambda value, what="client id": value if value in ("presence", "capability")
               else orig(value, what))


def rpc_swaps_ids(mp):
    mp.setattr(topics, "rpc", lambda c, s, n: f"$mcp-rpc/{s}/{c}/{n}")


def check_id_allows_plus(mp):
    mp.setattr(topics, "check_id", lambda v, what="client id": v if v and "/" not in v and "#" not in v
               else (_ for _ in ()).throw(ValueError(what)))


def str_shows_password(mp):
    mp.setattr(broker_url.BrokerURL, "__str__",
               lambda self: f"mqtt://{self.username}:{self.password}@{self.host}:{self.port}")


def no_unquote(mp):
    mp.setattr(broker_url, "unquote", lambda s: s)


def parse_error_code_wrong(mp):
    mp.setattr(endpoint_mod, "PARSE_ERROR", jsonrpc.INVALID_REQUEST)


def control_refusal_code_wrong(mp):
    from edge_agent.core import binding

    for name in ("control_refusal", "no_session"):  # the binding's two -32600 refusals
        orig = getattr(binding, name)

        def refusal(msg, orig=orig):
            answer = orig(msg)
            if answer is not None:
                answer["error"]["code"] = jsonrpc.METHOD_NOT_FOUND
            return answer
        mp.setattr(binding, name, refusal)


def unnamed_problems(mp):
    mp.setattr(cfg, "_key", lambda path, err: "-")


def urls_not_checked(mp):
    mp.setattr(cfg, "parse_broker_url", lambda url: broker_url.BrokerURL("h", 1883))


def toml_errors_escape(mp):
    class Other(Exception):
        pass

    class FakeToml:
        TOMLDecodeError = Other
        load = staticmethod(__import__("tomllib").load)
    mp.setattr(cfg, "tomllib", FakeToml)


def decoder_exits(mp):
    m5 = test_fuzz_micropython.m5
    orig = m5.dec_connack

    def dec_connack(body):
        if not body:
            raise SystemExit("a decoder that takes the board down")
        return orig(body)
    mp.setattr(m5, "dec_connack", dec_connack)


def wrong_property_table(mp):
    m5 = test_fuzz_micropython.m5
    mp.setattr(m5, "_TYPES", m5._TYPES[:0x13] + "i" + m5._TYPES[0x14:])  # Server Keep Alive as 4 bytes


def unguarded_string_decoder(mp):
    m5 = test_fuzz_micropython.m5

    def _dec_s(buf, i, text):  # mqtt5._dec_s as it was before the fuzzing found K16
        n = (buf[i] << 8) | buf[i + 1]
        i += 2
        if i + n > len(buf):
            raise m5.MQTTError("truncated")
        v = bytes(buf[i:i + n])
        return (v.decode() if text else v), i + n
    mp.setattr(m5, "_dec_s", _dec_s)


def board_pops_any_request_id(mp):
    mcp = test_fuzz_micropython.mcp
    orig = mcp.Server.handle

    async def handle(self, s, msg):  # cancelling by whatever requestId came (K17 before its fix)
        if isinstance(msg, dict) and msg.get("method") == "notifications/cancelled" and s.inflight:
            s.inflight.pop((msg.get("params") or {}).get("requestId"), None)
        return await orig(self, s, msg)
    mp.setattr(mcp.Server, "handle", handle)


def board_check_lets_nan_through(mp):
    import importlib
    mp.setattr(importlib.import_module("_fuzz_edgemcp.core.args"), "finite", lambda value: True)


def board_wrong_invalid_code(mp):
    import importlib
    mp.setattr(importlib.import_module("_fuzz_edgemcp.core.jsonrpc"), "INVALID_REQUEST", -32601)


MUTANTS = [
    ("jsonrpc.decode", "bytes decode", decode_skips_check),
    ("jsonrpc.check", "any JSON value", check_accepts_bool_ids),
    ("McpServer.handle", "arbitrary bytes", parse_error_as_invalid_request),
    ("McpServer.handle", "arbitrary JSON values", check_accepts_list_params),
    ("McpServer.handle", "valid/mutated JSON-RPC sequences", no_schema_validation),
    ("McpServer.handle", "concurrent requests", drops_some_answers),
    ("codec.decode", "a value or ValueError", cbor_errors_unwrapped),
    ("codec.decode", "decode(encode(v))", encode_ignores_cbor),
    ("topics.parse", "rebuilds to itself", parse_strips_slashes),
    ("topics.parse", "builders round-trip", rpc_swaps_ids),
    ("topics.check_*", "only ValueError", check_id_allows_plus),
    ("topics.check_id", "presence/capability is refused", check_id_allows_reserved),
    ("McpServer.handle", "lone surrogates", encode_escapes_surrogates),
    ("broker_url", "str() is scheme", str_shows_password),
    ("broker_url", "parse back to the parts", no_unquote),
    ("Endpoint.on_rpc", "session's RPC topic", parse_error_code_wrong),
    ("Endpoint.on_control", "control topic", control_refusal_code_wrong),
    ("Endpoint.on_rpc", "unknown client: at most one", control_refusal_code_wrong),
    ("config.from_dict", "arbitrary TOML-like dicts", unnamed_problems),
    ("config.from_dict", "demo config mutated", unnamed_problems),
    ("config.load", "UTF-8 files", toml_errors_escape),
]
if test_fuzz_micropython.m5 is not None:
    MUTANTS += [("mpy mqtt5 decoders", "reader loop catches", decoder_exits),
                ("mpy mqtt5 decoders", "MQTTError or a result", unguarded_string_decoder)]
    if hasattr(test_fuzz_micropython.m5, "prop"):
        MUTANTS += [("mpy mqtt5 prop", "well-formed", wrong_property_table)]
if test_fuzz_micropython.mcp is not None:
    MUTANTS += [("mpy mcp.Server.handle", "one answer per request", board_wrong_invalid_code),
                ("mpy mcp.Server.handle", "list/object requestId", board_pops_any_request_id),
                ("mpy mcp.Server.handle", "NaN and infinities", board_check_lets_nan_through)]


# Former known bugs (K1, K3, K4, K5, K6-K9, K11-K15), fixed on 2026-11-22: each of these properties
# was seen failing on the code before the fix (the strict-xfail runs), which is the proof a
# mutant would give; they stay as regression properties.
REGRESSIONS = {
    "McpServer.handle: deeply nested JSON is a parse error, not an exception",
    "McpServer.handle: NaN never passes a tool's minimum/maximum",
    "McpServer.handle: notifications/cancelled with a list/object requestId",
    "McpServer.handle: a cancelled request leaves no in-flight entry",
    "codec.decode: deeply nested JSON is a ValueError",
    "topics.check_*: accepted ids/names make valid MQTT topics",
    "broker_url: repr() and str() of a list never show the password",
    "broker_url: an explicit port 0 is refused",
    "Endpoint.on_rpc: CBOR params with a non-string map key are answered",
    "Endpoint.on_control: initialize with a clientInfo that is not an object is answered",
    "Endpoint.on_rpc: unknown client: the -32600 answer carries a valid id",
    "config.load: arbitrary bytes: only ConfigError",
    "config.load: deeply nested arrays: only ConfigError",
    "config.from_dict: NaN/inf never pass a numeric range",  # K4 (config), fixed 2026-11-30
    "McpServer.handle: wrongly typed params are -32602, never -32603 Internal error",
}


def test_every_general_property_has_a_mutant():
    covered = {prop(t, n).id for t, n, _ in MUTANTS}
    missing = [p.id for p in ALL if not p.known_bug and p.id not in covered and p.id not in REGRESSIONS]
    assert not missing, f"properties without a mutant: {missing}"


@pytest.mark.parametrize("target,name,mutant", MUTANTS, ids=[f"{t}:{m.__name__}" for t, _, m in MUTANTS])
def test_property_catches_its_mutant(target, name, mutant, monkeypatch):
    p = prop(target, name)
    count, clean = run_long(p, 20, seed=0, shrink=False)
    assert clean is None, f"{p.id} fails on the real code: {clean!r}"
    mutant(monkeypatch)
    count, failure = run_long(p, 2000, seed=0, shrink=False)
    assert failure is not None, f"{p.id} did not notice the mutant {mutant.__name__} in {count} inputs"
