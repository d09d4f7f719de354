"""edge_agent.core.topics: MCP-over-MQTT topic names, id and server-name rules, parsing
(mqtt-ai/mcp-over-mqtt 2025-03-26 basic/mqtt_transport.md "Message Topics")."""

from __future__ import annotations

import pytest

from edge_agent.core import topics
from edge_agent.core.topics import Topic

NAME = "devices/greenhouse/pi-01"


def test_builders():
    assert topics.server_control("s1", NAME) == "$mcp-server/s1/devices/greenhouse/pi-01"
    assert topics.server_capability("s1", NAME) == "$mcp-server/capability/s1/devices/greenhouse/pi-01"
    assert topics.server_presence("s1", NAME) == "$mcp-server/presence/s1/devices/greenhouse/pi-01"
    assert topics.presence_filter() == "$mcp-server/presence/+/#"
    assert topics.presence_filter("devices/#") == "$mcp-server/presence/+/devices/#"
    assert topics.client_presence("c1") == "$mcp-client/presence/c1"
    assert topics.client_capability("c1") == "$mcp-client/capability/c1"
    assert topics.rpc("c1", "s1", NAME) == "$mcp-rpc/c1/s1/devices/greenhouse/pi-01"
    assert topics.client_topics("c1", "s1", NAME) == [
        ("$mcp-client/presence/c1", False), ("$mcp-client/capability/c1", False),
        ("$mcp-rpc/c1/s1/devices/greenhouse/pi-01", True)]  # No Local on the RPC topic only


@pytest.mark.parametrize("value", ["c1", "pi-01_ü", "x" * 256, "é" * 128])
def test_valid_ids(value):
    assert topics.check_id(value) == value


@pytest.mark.parametrize("value, words", [
    ("", "non-empty"), ("a/b", "non-empty"), ("a+", "non-empty"), ("#", "non-empty"), ("a\x00", "non-empty"),
    (None, "non-empty"), (5, "non-empty"), ("x" * 257, "257 bytes"), ("é" * 129, "258 bytes"),
    ("x" * 65500, "65500 bytes"),
    ("\ud800", "not valid UTF-8"),
])
def test_invalid_ids(value, words):
    with pytest.raises(ValueError, match=words):
        topics.check_id(value)


def test_reserved_server_ids():
    for reserved in ("presence", "capability"):
        with pytest.raises(ValueError, match="reserved"):
            topics.check_id(reserved, "server-id")
        assert topics.check_id(reserved, "mcp-client-id") == reserved  # only a server-id collides


@pytest.mark.parametrize("name", [NAME, "a/b", "devices/ü/x", "a/" + "b" * 65010])
def test_valid_server_names(name):
    assert topics.check_server_name(name) == name


@pytest.mark.parametrize("name, words", [
    ("", "must not be empty"), ("/a/b", "start or end"), ("a/b/", "start or end"), ("flat", "hierarchical"),
    ("a/+/b", "wildcards"), ("a/#", "wildcards"), ("a/\x00", "NUL"), ("a//b", "empty level"),
    ("a/" + "b" * 65011, "65013 bytes"), ("a/\ud800", "not valid UTF-8"), (None, "must not be empty"),
])
def test_invalid_server_names(name, words):
    with pytest.raises(ValueError, match=words):
        topics.check_server_name(name)


@pytest.mark.parametrize("topic, expected", [
    ("$mcp-server/s1/" + NAME, Topic("control", server_id="s1", server_name=NAME)),
    ("$mcp-server/capability/s1/" + NAME, Topic("server-capability", server_id="s1", server_name=NAME)),
    ("$mcp-server/presence/s1/" + NAME, Topic("server-presence", server_id="s1", server_name=NAME)),
    ("$mcp-client/presence/c1", Topic("client-presence", client_id="c1")),
    ("$mcp-client/capability/c1", Topic("client-capability", client_id="c1")),
    ("$mcp-rpc/c1/s1/" + NAME, Topic("rpc", server_id="s1", server_name=NAME, client_id="c1")),
])
def test_parse_round_trips_the_builders(topic, expected):
    assert topics.parse(topic) == expected


@pytest.mark.parametrize("topic", [
    "", "devices/x", "$mcp-server", "$mcp-server/s1", "$mcp-server/presence/s1", "$mcp-server/capability/s1/x",
    "$mcp-client/presence", "$mcp-client/presence/", "$mcp-client/other/c1", "$mcp-client/presence/c1/x",
    "$mcp-rpc/c1/s1/x", "$mcp-rpc/c1/s1",
])
def test_parse_refuses_other_topics(topic):
    assert topics.parse(topic) is None


def test_topic_value_semantics():
    a = Topic("rpc", server_id="s", server_name="a/b", client_id="c")
    b = Topic("rpc", server_id="s", server_name="a/b", client_id="c")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Topic("rpc", server_id="s", server_name="a/b", client_id="d") and a != "rpc"
    assert repr(a) == "Topic(kind='rpc', server_id='s', server_name='a/b', client_id='c')"
    assert Topic("control").client_id is None


def test_the_longest_topic_fits_an_mqtt_string():
    """Ids and server-name at their limits: every topic built from them is at most 65535 bytes."""
    cid, sid, name = "c" * topics.MAX_ID, "s" * topics.MAX_ID, "a/" + "n" * (topics.MAX_NAME - 2)
    for value in (topics.check_id(cid), topics.check_id(sid, "server-id"), topics.check_server_name(name)):
        assert value
    built = [topics.rpc(cid, sid, name), topics.server_control(sid, name), topics.server_presence(sid, name),
             topics.server_capability(sid, name), topics.client_presence(cid), topics.client_capability(cid)]
    assert max(len(t.encode()) for t in built) == 65535
