"""edge_agent.core.lifecycle: version negotiation, session states, the initialize result,
logging levels (MCP 2025-11-25 basic/lifecycle, server/utilities/logging)."""

from __future__ import annotations

import pytest

from edge_agent.core import lifecycle
from edge_agent.core.jsonrpc import RpcError
from edge_agent.core.lifecycle import INITIALIZING, NEW, READY, Session

INFO = {"name": "edge-agent", "version": "1"}


def test_versions_newest_first():
    assert lifecycle.VERSIONS[0] == "2025-11-25"
    assert list(lifecycle.VERSIONS) == sorted(lifecycle.VERSIONS, reverse=True)
    assert "2024-11-05" in lifecycle.VERSIONS


@pytest.mark.parametrize("asked, answered", [("2025-11-25", "2025-11-25"), ("2025-06-18", "2025-06-18"),
                                             ("2024-11-05", "2024-11-05"), ("2099-01-01", "2025-11-25"),
                                             ("", "2025-11-25"), ("garbage", "2025-11-25")])
def test_negotiate(asked, answered):
    assert lifecycle.negotiate({"protocolVersion": asked}) == answered


@pytest.mark.parametrize("params", [{}, {"protocolVersion": None}, {"protocolVersion": 20251125},
                                    {"protocolVersion": ["2025-11-25"]}])
def test_negotiate_refuses_a_missing_version(params):
    with pytest.raises(RpcError) as exc:
        lifecycle.negotiate(params)
    assert exc.value.code == -32602 and exc.value.data == {"supported": list(lifecycle.VERSIONS)}


def test_a_new_session():
    s = Session("c1")
    assert (s.id, s.state, s.protocol_version, s.log_level) == ("c1", NEW, None, "warning")
    assert s.subscriptions == set() and s.inflight == {} and not s.initialized


def test_initialize_applies_to_the_session():
    s = Session("c1")
    s.subscriptions.add("sensor://a/b")
    params = {"protocolVersion": "2025-06-18", "clientInfo": {"name": "t", "version": "2"},
              "capabilities": {"roots": {}}}
    out = lifecycle.initialize(s, params, INFO, {"tools": {}}, "Be careful")
    assert out == {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": INFO,
                   "instructions": "Be careful"}
    assert s.state == INITIALIZING and s.initialized and s.protocol_version == "2025-06-18"
    assert s.client_info == {"name": "t", "version": "2"} and s.client_capabilities == {"roots": {}}
    assert s.subscriptions == set()  # a re-initialize starts over


def test_initialize_tolerates_odd_client_fields_and_omits_empty_instructions():
    s = Session("c1")
    out = lifecycle.initialize(s, {"protocolVersion": "2025-11-25", "clientInfo": "me", "capabilities": [1]},
                               INFO, {}, "")
    assert "instructions" not in out and s.client_info == {} and s.client_capabilities == {}


def test_initialize_with_a_bad_version_leaves_the_session_alone():
    s = Session("c1")
    with pytest.raises(RpcError):
        lifecycle.initialize(s, {}, INFO, {})
    assert s.state == NEW and not s.initialized


def test_set_level():
    s = Session("c1")
    assert lifecycle.set_level(s, {"level": "debug"}) == {} and s.log_level == "debug"
    for bad in ("loud", None, "DEBUG", 3):
        with pytest.raises(RpcError) as exc:
            lifecycle.set_level(s, {"level": bad})
        assert exc.value.code == -32602 and "debug, info" in exc.value.message
    assert s.log_level == "debug"


def test_log_allowed():
    s = Session("c1")
    assert not lifecycle.log_allowed(s, "emergency")  # not initialized: nothing
    s.state = READY
    assert [lvl for lvl in lifecycle.LOG_LEVELS if lifecycle.log_allowed(s, lvl)] == \
        ["warning", "error", "critical", "alert", "emergency"]
    s.log_level = "debug"
    assert all(lifecycle.log_allowed(s, lvl) for lvl in lifecycle.LOG_LEVELS)
    assert not lifecycle.log_allowed(s, "verbose")  # not a level
    s.log_level = "emergency"
    assert not lifecycle.log_allowed(s, "alert") and lifecycle.log_allowed(s, "emergency")


def test_levels_are_rfc5424_order():
    assert lifecycle.LOG_LEVELS == ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
