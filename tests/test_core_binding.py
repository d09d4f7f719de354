"""edge_agent.core.binding: what opens and closes a session on MCP over MQTT, user properties,
presence and refusals (mqtt-ai/mcp-over-mqtt 2025-03-26 basic/mqtt_transport.md
"Initialization", "Server Presence", "Disconnection", "User Properties")."""

from __future__ import annotations

import pytest

from edge_agent.core import binding, jsonrpc


def test_user_property():
    props = [("MCP-COMPONENT-TYPE", "mcp-client"), ("MCP-MQTT-CLIENT-ID", "c1"), ("MCP-MQTT-CLIENT-ID", "c2")]
    assert binding.user_property(props, binding.CLIENT_ID) == "c1"  # the first one
    assert binding.user_property(props, binding.COMPONENT_TYPE) == "mcp-client"
    assert binding.user_property(props, "MCP-META") is None
    assert binding.user_property(None, binding.CLIENT_ID) is None and binding.user_property([], "x") is None


def test_is_disconnected_is_exact():
    assert binding.is_disconnected({"jsonrpc": "2.0", "method": "notifications/disconnected"})
    assert binding.is_disconnected({"jsonrpc": "2.0", "method": "notifications/disconnected", "params": {}})
    assert binding.is_disconnected(binding.DISCONNECTED)
    for not_it in ({"jsonrpc": "2.0", "id": 1, "method": "notifications/disconnected"},  # a request
                   {"method": "notifications/disconnected"},  # not JSON-RPC 2.0
                   {"jsonrpc": "2.0", "method": "notifications/disconnected/x"},
                   {"jsonrpc": "2.0", "method": "tools/call", "params": {"note": "notifications/disconnected"}},
                   "notifications/disconnected", None, []):
        assert not binding.is_disconnected(not_it)


def test_client_gone():
    assert binding.client_gone(b"")  # the will: empty payload
    assert binding.client_gone(b'{"jsonrpc":"2.0","method":"notifications/disconnected"}')
    assert not binding.client_gone(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    # a substring is not enough, and garbage never raises
    assert not binding.client_gone(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"notifications/disconnected"}}')
    assert not binding.client_gone(b"notifications/disconnected")
    assert not binding.client_gone(b"\xff\xfe")
    # another codec (the Pi passes JSON/CBOR): whatever it decodes is judged the same way
    assert binding.client_gone(b"x", decode=lambda b: dict(binding.DISCONNECTED))
    assert not binding.client_gone(b"x", decode=lambda b: 1 / 0)


def test_opens_session():
    assert binding.opens_session({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
    assert not binding.opens_session({"jsonrpc": "2.0", "method": "initialize"})  # a notification
    assert not binding.opens_session({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert not binding.opens_session([]) and not binding.opens_session(None)


@pytest.mark.parametrize("cid, ok", [("c1", True), ("my-cloud-client", True), ("", False), ("a/b", False),
                                     ("+", False), ("#", False), ("a\x00", False), (None, False), (5, False),
                                     ("x" * 256, True), ("x" * 257, False), ("x" * 65500, False)])
def test_valid_client_id(cid, ok):
    assert binding.valid_client_id(cid) == (cid if ok else None)


def test_online():
    assert binding.online("devices/a/b") == {"jsonrpc": "2.0", "method": "notifications/server/online",
                                             "params": {"server_name": "devices/a/b", "description": "", "meta": {}}}
    msg = binding.online("devices/a/b", "Greenhouse", {"location": "gh3"})
    assert msg["params"]["description"] == "Greenhouse" and msg["params"]["meta"] == {"location": "gh3"}


def test_no_session():
    out = binding.no_session({"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
    assert out["id"] == 4 and out["error"]["code"] == jsonrpc.INVALID_REQUEST
    assert "initialize" in out["error"]["message"] and "control topic" in out["error"]["message"]
    assert binding.no_session({"jsonrpc": "2.0", "id": 4, "method": "initialize"}) is None  # wrong topic: silence
    assert binding.no_session({"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
    assert binding.no_session({"jsonrpc": "2.0", "id": None, "method": "ping"}) is None
    assert binding.no_session({"jsonrpc": "2.0", "id": 4, "result": {}}) is None
    assert binding.no_session("ping") is None


def test_control_refusal():
    out = binding.control_refusal({"jsonrpc": "2.0", "id": "x", "method": "tools/call"})
    assert out == {"jsonrpc": "2.0", "id": "x", "error": {
        "code": -32600, "message": "only initialize is accepted on the control topic, not tools/call"}}
    assert binding.control_refusal({"jsonrpc": "2.0", "method": "notifications/x"}) is None
    assert binding.control_refusal({"jsonrpc": "2.0", "id": True, "method": "ping"}) is None
    assert binding.control_refusal(7) is None
    odd = binding.control_refusal({"jsonrpc": "2.0", "id": 1, "method": "\ud800"})
    odd["error"]["message"].encode("utf-8")  # client input quoted, safe for the wire


def test_legacy_discover_is_a_fast_method_not_found_naming_the_handshake_versions():
    answer = binding.legacy_discover({"jsonrpc": "2.0", "id": 3, "method": "server/discover"}, ("2025-11-25", "2024-11-05"))
    assert answer["id"] == 3 and answer["error"]["code"] == -32601
    assert "2025-11-25, 2024-11-05" in answer["error"]["message"]
    assert binding.legacy_discover({"jsonrpc": "2.0", "method": "server/discover"}, ("2025-11-25",)) is None
    assert binding.legacy_discover({"jsonrpc": "2.0", "id": 1, "method": "ping"}, ("2025-11-25",)) is None
