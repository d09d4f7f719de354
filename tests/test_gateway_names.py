"""The gateway's naming scheme and replica choice: pure functions, no broker."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.gateway.balance import Balancer
from edge_agent.gateway.names import (
    Namer,
    decode_server_name,
    encode_server_name,
    join_name,
    resource_uri,
    split_name,
    split_resource_uri,
    template_uri,
)

TOOL_RULE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

level = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/+#"), min_size=1,
                 max_size=12)
server_names = st.lists(level, min_size=2, max_size=4).map("/".join)
tool_names = st.from_regex(r"[A-Za-z0-9_.-]{1,40}", fullmatch=True)


def test_readable_form():
    assert join_name("devices/greenhouse/gh3-pi", "pump_relay_on") == "devices.greenhouse.gh3-pi__pump_relay_on"
    assert split_name("devices.greenhouse.gh3-pi__pump_relay_on") == ("devices/greenhouse/gh3-pi", "pump_relay_on")
    # '.' and '_' in a server-name are escaped, so the first '__' is always the separator
    assert encode_server_name("a.b/c_d") == "a_2eb.c_5fd"
    assert split_name(join_name("a.b/c_d", "x__y")) == ("a.b/c_d", "x__y")


@given(server_names, tool_names)
def test_names_round_trip_and_follow_the_tool_name_rule(server_name, tool):
    namer = Namer()
    joined = namer.join(server_name, tool)
    assert TOOL_RULE.match(joined), joined
    assert namer.split(joined) == (server_name, tool)


@given(server_names)
def test_server_name_encoding_round_trips(server_name):
    encoded = encode_server_name(server_name)
    assert "__" not in encoded
    assert decode_server_name(encoded) == server_name


def test_long_names_use_a_digest_and_the_table():
    namer = Namer()
    long_name = "devices/" + "x" * 120 + "/pi"
    joined = namer.join(long_name, "pump_relay_on")
    assert len(joined) <= 128 and TOOL_RULE.match(joined) and "__" not in joined
    assert namer.split(joined) == (long_name, "pump_relay_on")
    with pytest.raises(ValueError):
        Namer().split(joined)  # another gateway never made it
    with pytest.raises(ValueError):
        split_name("no-separator")


@given(server_names, st.text(min_size=1, max_size=40))
def test_resource_uris_round_trip(server_name, uri):
    gateway_uri = resource_uri(server_name, uri)
    assert gateway_uri.startswith("mcp-mqtt://")
    assert split_resource_uri(gateway_uri) == (server_name, uri)
    assert split_resource_uri(gateway_uri, [server_name, server_name.split("/")[0] + "/z"]) == (server_name, uri)


def test_templates_keep_their_expressions_and_expand_back():
    template = template_uri("devices/greenhouse/gh3-pi", "sensor://{driver}/{sensor}/history")
    assert template == "mcp-mqtt://devices/greenhouse/gh3-pi/sensor%3A%2F%2F{driver}%2F{sensor}%2Fhistory"
    expanded = template.replace("{driver}", "soil_temp").replace("{sensor}", "temperature")
    assert split_resource_uri(expanded, ["devices/greenhouse/gh3-pi"]) == (
        "devices/greenhouse/gh3-pi", "sensor://soil_temp/temperature/history")
    # a {+path} or {?query} expansion adds '/' or '?': the known server-name still finds the split
    assert split_resource_uri("mcp-mqtt://devices/a/b/x%3A%2F%2Fh/q?limit=1", ["devices/a/b"]) == (
        "devices/a/b", "x://h/q?limit=1")
    with pytest.raises(ValueError):
        split_resource_uri("sensor://x/y")


@dataclass
class R:
    server_id: str
    outstanding: int = 0


def test_round_robin_cycles_per_server_name():
    b = Balancer("round-robin")
    rs = [R("c"), R("a"), R("b")]
    assert [b.choose("n", rs).server_id for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert b.choose("other", rs).server_id == "a"


def test_least_outstanding_prefers_idle_replicas_and_spreads_ties():
    b = Balancer("least-outstanding")
    rs = [R("a", 2), R("b", 0), R("c", 1)]
    assert b.choose("n", rs).server_id == "b"
    idle = [R("a"), R("b"), R("c")]
    assert sorted(b.choose("m", idle).server_id for _ in range(3)) == ["a", "b", "c"]


def test_random_uses_every_replica():
    b = Balancer("random", rng=random.Random(7))
    counts = Counter(b.choose("n", [R("a"), R("b"), R("c")]).server_id for _ in range(300))
    assert set(counts) == {"a", "b", "c"} and min(counts.values()) > 60
    with pytest.raises(ValueError):
        Balancer("fastest")
    with pytest.raises(ValueError):
        b.choose("n", [])
