"""edge_agent.core.methods: the one method table (capability, before initialize, durable,
access class) and the capabilities it implies."""

from __future__ import annotations

from edge_agent.core import methods
from edge_agent.core.methods import OPEN, READ, WRITE, MethodTable


async def handler(session, params, req):
    return {}


def test_known_methods_take_their_rules_from_the_table():
    t = MethodTable()
    for name in methods.KNOWN:
        t.add(name, handler)
    init, ping, level = t.get("initialize"), t.get("ping"), t.get("logging/setLevel")
    assert (init.capability, init.before_init, init.durable, init.access) == (None, True, True, OPEN)
    assert (ping.before_init, ping.durable, ping.access) == (True, False, OPEN)
    assert (level.capability, level.before_init, level.durable) == ("logging", True, True)
    sub = t.get("resources/subscribe")
    assert (sub.capability, sub.before_init, sub.durable, sub.access) == ("resources.subscribe", False, True, READ)
    assert t.get("tools/call").handler is handler and t.get("tools/call").name == "tools/call"
    # only what MCP lets precede initialize
    assert sorted(n for n, m in t.methods.items() if m.before_init) == ["initialize", "logging/setLevel", "ping"]
    assert sorted(n for n in t.methods if t.durable(n)) == [
        "initialize", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"]


def test_a_new_method_needs_its_rules_or_gets_safe_defaults():
    t = MethodTable()
    t.add("vendor/thing", handler)
    m = t.get("vendor/thing")
    assert (m.capability, m.before_init, m.durable, m.access) == (None, False, False, READ)
    t.add("vendor/reboot", handler, capability="experimental", before_init=False, durable=True, access=WRITE)
    m = t.get("vendor/reboot")
    assert (m.capability, m.durable, m.access) == ("experimental", True, WRITE)
    assert t.names(WRITE) == ["vendor/reboot"] and t.names() == ["vendor/thing", "vendor/reboot"]


def test_explicit_rules_override_known_ones_and_none_capability_is_kept():
    t = MethodTable()
    t.add("tools/list", handler, capability=None)  # 0 means "take KNOWN"; None means "none"
    assert t.get("tools/list").capability is None
    t.add("ping", handler, before_init=False, access=READ)
    assert t.get("ping").before_init is False and t.get("ping").access == READ
    t.add("tools/call", handler, durable=True)
    assert t.durable("tools/call")


def test_unknown_names():
    t = MethodTable()
    assert t.get("nope") is None and t.durable("nope") is False and t.names() == []


def test_capabilities_follow_the_served_methods():
    t = MethodTable()
    assert t.capabilities() == {}
    for name in ("initialize", "ping", "tools/list", "tools/call", "resources/read"):
        t.add(name, handler)
    assert t.capabilities() == {"tools": {}, "resources": {}}
    t.add("resources/subscribe", handler)
    t.add("logging/setLevel", handler)
    t.add("completion/complete", handler)
    assert t.capabilities() == {"tools": {}, "resources": {"subscribe": True}, "logging": {}, "completions": {}}


def test_capabilities_extra_only_for_served_capabilities():
    t = MethodTable()
    t.add("tools/list", handler)
    caps = t.capabilities({"tools": {"listChanged": True}, "prompts": {"listChanged": True}})
    assert caps == {"tools": {"listChanged": True}}  # no prompts served: not announced
    assert t.capabilities() == {"tools": {}}  # extra did not leak into the table


def test_lifecycle_notifications():
    assert set(methods.LIFECYCLE_NOTIFICATIONS) == {"notifications/initialized", "notifications/cancelled"}
