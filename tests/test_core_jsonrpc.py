"""edge_agent.core.jsonrpc: framing checks, error codes, builders, quoting (JSON-RPC 2.0;
MCP basic/index: ids are strings or integers, no batches)."""

from __future__ import annotations

import json

import pytest

from edge_agent.core import jsonrpc
from edge_agent.core.jsonrpc import RpcError


def test_error_codes():
    assert (jsonrpc.PARSE_ERROR, jsonrpc.INVALID_REQUEST, jsonrpc.METHOD_NOT_FOUND, jsonrpc.INVALID_PARAMS,
            jsonrpc.INTERNAL_ERROR) == (-32700, -32600, -32601, -32602, -32603)
    assert jsonrpc.RESOURCE_NOT_FOUND == -32002
    assert -32099 <= jsonrpc.FORBIDDEN <= -32000  # implementation-defined server error range


def test_rpc_error_to_error():
    err = RpcError(-32602, "bad", {"field": "x"})
    assert isinstance(err, Exception) and str(err) == "bad"
    assert err.to_error() == {"code": -32602, "message": "bad", "data": {"field": "x"}}
    assert RpcError(-32601, "nope").to_error() == {"code": -32601, "message": "nope"}  # no data key
    assert RpcError(1, "falsy data", 0).to_error()["data"] == 0


@pytest.mark.parametrize("value, ok", [("a", True), ("", True), (0, True), (-5, True), (2**70, True),
                                       (True, False), (False, False), (None, False), (1.0, False),
                                       ([1], False), ({}, False)])
def test_is_id(value, ok):
    assert jsonrpc.is_id(value) is ok


def test_check_accepts_requests_notifications_and_responses():
    for msg in ({"jsonrpc": "2.0", "id": 1, "method": "ping"},
                {"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": {"name": "x"}},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 3, "result": {}},
                {"jsonrpc": "2.0", "id": 4, "error": {"code": 1, "message": "m"}}):
        assert jsonrpc.check(msg) is msg


@pytest.mark.parametrize("msg, words, answer_id", [
    ([{"jsonrpc": "2.0", "id": 1, "method": "ping"}], "batches", None),
    ("ping", "JSON object", None),
    (None, "JSON object", None),
    ({"id": 1, "method": "ping"}, '"jsonrpc" must be "2.0"', 1),
    ({"jsonrpc": "1.0", "id": "x", "method": "ping"}, '"jsonrpc" must be "2.0"', "x"),
    ({"jsonrpc": "2.0", "id": None, "method": "ping"}, "id must be", None),
    ({"jsonrpc": "2.0", "id": True, "method": "ping"}, "id must be", None),
    ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, "id must be", None),
    ({"jsonrpc": "2.0", "id": 7, "method": ""}, "non-empty string", 7),
    ({"jsonrpc": "2.0", "id": 7, "method": 5}, "non-empty string", 7),
    ({"jsonrpc": "2.0", "id": 8, "method": "x", "params": [1, 2]}, "params must be an object", 8),
    ({"jsonrpc": "2.0", "method": "x", "params": None}, "params must be an object", None),
    ({"jsonrpc": "2.0", "id": 9}, "neither", None),
    ({"jsonrpc": "2.0", "result": {}}, "neither", None),
])
def test_check_refusals_and_the_id_to_answer(msg, words, answer_id):
    with pytest.raises(RpcError) as exc:
        jsonrpc.check(msg)
    err = exc.value
    assert err.code == -32600 and words in err.message
    assert jsonrpc.error_id(err) == answer_id
    assert err.data is None  # error_id cleared the internal id: it is not for the wire
    assert "data" not in err.to_error()


def test_decode():
    assert jsonrpc.decode(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')["id"] == 1
    assert jsonrpc.decode('{"jsonrpc":"2.0","method":"x"}')["method"] == "x"
    for bad in (b"{not json", b"\xff\xfe", b"", "[" * 100000):
        with pytest.raises(RpcError) as exc:
            jsonrpc.decode(bad)
        assert exc.value.code == -32700 and exc.value.message == "Parse error: not UTF-8 JSON"
    with pytest.raises(RpcError) as exc:
        jsonrpc.decode(b"[]")  # JSON, but a batch
    assert exc.value.code == -32600


def test_builders():
    assert jsonrpc.result(5, {"a": 1}) == {"jsonrpc": "2.0", "id": 5, "result": {"a": 1}}
    assert jsonrpc.error("r", RpcError(-32601, "Method not found")) == \
        {"jsonrpc": "2.0", "id": "r", "error": {"code": -32601, "message": "Method not found"}}
    assert jsonrpc.notification("notifications/x") == {"jsonrpc": "2.0", "method": "notifications/x"}
    assert jsonrpc.notification("n", {}) == {"jsonrpc": "2.0", "method": "n", "params": {}}


def test_dumps_and_encode_keep_non_ascii():
    assert jsonrpc.dumps({"unit": "°C", "v": [1, 2]}) == '{"unit": "°C", "v": [1, 2]}'
    wire = jsonrpc.encode({"unit": "°C", "v": [1, 2]})
    assert wire == '{"unit":"°C","v":[1,2]}'.encode() and isinstance(wire, bytes)
    assert len(jsonrpc.encode("°")) == 4  # quotes + 2 UTF-8 bytes, not a \u00b0 escape


def test_quote_and_shown_never_echo_raw_input():
    assert jsonrpc.quote("a\nb") == '"a\\nb"'
    assert jsonrpc.quote("\ud800") == '"\\ud800"'  # a lone surrogate is escaped
    assert jsonrpc.quote({1, 2}).startswith("{")  # not JSON: its repr
    assert jsonrpc.shown("tools/call") == "tools/call" and jsonrpc.shown("°C") == "°C"
    assert jsonrpc.shown("\udcff") == '"\\udcff"'
    assert jsonrpc.shown(5) == "5" and jsonrpc.shown(None) == "null"
    json.dumps(jsonrpc.shown("\udcff")).encode("utf-8")  # safe for the wire


def test_resource_not_found():
    err = jsonrpc.resource_not_found("sensor://x/y")
    assert (err.code, err.message, err.data) == (-32002, "Resource not found: sensor://x/y", {"uri": "sensor://x/y"})
    odd = jsonrpc.resource_not_found("\ud800")
    assert odd.data == {"uri": '"\\ud800"'}
    odd.message.encode("utf-8")
