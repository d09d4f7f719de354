"""Fuzzing the transport's pure parts and the endpoint's decoding (issue 7, part 5).

Claims, for any input:

- ``codec.decode`` returns a value or raises ``ValueError``; ``decode(encode(v))`` is ``v``.
- ``topics.parse`` never raises; what it parses rebuilds to the same topic; for valid ids and
  server-names every topic builder round-trips through ``parse``; ``check_id`` and
  ``check_server_name`` raise only ``ValueError`` and accept exactly what the rules allow.
- ``parse_broker_url`` raises only ``ValueError``; a result has a host and a port in
  1..65535; ``str()`` never shows the password; URLs built from parts parse back to the parts.
- ``Endpoint`` (the decoding between MQTT payloads and the server core, with a fake transport):
  every payload on a session's RPC topic, on the control topic, or from an unknown client,
  JSON or CBOR, gets at most one well-formed answer (exactly one for a request), encodable in
  the session's encoding, and nothing raises.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import quote

import cbor2
from hypothesis import strategies as st

from edge_agent.core import jsonrpc, topics
from edge_agent.device.endpoint import Endpoint
from edge_agent.mqtt import codec
from edge_agent.mqtt.broker_url import BrokerURL, parse_broker_url
from edge_agent.mqtt.server import Incoming, LinkStats
from tests.test_fuzz_common import Property, ci_test, json_values
from tests.test_fuzz_protocol import (
    UNDECODABLE,
    Harness,
    check_wire,
    expected,
    mutate_bytes,
    rpc_message,
    run,
    same_id,
    settle_all,
)

CONTENT_TYPES = [None, "", codec.JSON, "application/json; charset=utf-8", codec.CBOR, "text/plain",
                 "application/cbor ", "APPLICATION/JSON"]

# --------------------------------------------------------------------------- codec


@st.composite
def codec_inputs(draw) -> tuple[bytes, str | None]:
    ct = draw(st.sampled_from(CONTENT_TYPES) | st.text(max_size=20))
    kind = draw(st.integers(0, 2))
    if kind == 0:
        payload = draw(st.binary(max_size=300))
    else:
        value = draw(json_values | rpc_message())
        payload = cbor2.dumps(value) if kind == 1 else json.dumps(value).encode()
        if draw(st.booleans()):
            payload = mutate_bytes(payload, draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000),
                                                                     st.integers(0, 255)), min_size=1, max_size=3)))
    return payload, ct


def check_codec_decode(case: tuple[bytes, str | None]) -> None:
    payload, ct = case
    try:
        codec.decode(payload, ct)
    except ValueError:
        pass


def check_codec_roundtrip(case: tuple[Any, str | None]) -> None:
    value, ct = case
    assert codec.decode(codec.encode(value, ct), ct) == value


# --------------------------------------------------------------------------- topics

TRICKY_IDS = ["presence", "capability", "$mcp-rpc", "$mcp-server", "a b", "é", " ", ".", "-", "x" * 200]
ids_any = st.text(max_size=12) | st.sampled_from(TRICKY_IDS + ["", "a/b", "+", "#", "a+", "#b"])
valid_ids = (st.text(min_size=1, max_size=12).filter(lambda s: not any(c in s for c in "/+#"))
             | st.sampled_from(TRICKY_IDS))
# A server-id of "presence"/"capability" would make the control topic ambiguous: check_id refuses it.
valid_server_ids = valid_ids.filter(lambda s: s not in ("presence", "capability"))
levels = st.text(min_size=1, max_size=6).filter(lambda s: not any(c in s for c in "/+#"))
valid_names = st.lists(levels, min_size=2, max_size=4).map("/".join)
names_any = valid_names | st.text(max_size=16) | st.sampled_from(["", "/", "a", "a/", "/a/b", "a//b", "a/+/b", "a/#", "a/b"])


def rebuild(t: topics.Topic) -> str:
    return {
        "rpc": lambda: topics.rpc(t.client_id, t.server_id, t.server_name),
        "control": lambda: topics.server_control(t.server_id, t.server_name),
        "server-presence": lambda: topics.server_presence(t.server_id, t.server_name),
        "server-capability": lambda: topics.server_capability(t.server_id, t.server_name),
        "client-presence": lambda: topics.client_presence(t.client_id),
        "client-capability": lambda: topics.client_capability(t.client_id),
    }[t.kind]()


topic_strings = (st.text(max_size=40)
                 | st.builds(lambda head, rest: head + "/" + "/".join(rest),
                             st.sampled_from(["$mcp-rpc", "$mcp-server", "$mcp-client", "$mcp-server/presence",
                                              "$mcp-server/capability", "$mcp-client/presence", "$mcp-client/capability"]),
                             st.lists(st.text(max_size=5), max_size=6)))


def check_parse_any(topic: str) -> None:
    t = topics.parse(topic)
    if t is not None:
        assert rebuild(t) == topic, f"{topic!r} parsed as {t} which builds {rebuild(t)!r}"


def check_reserved_server_id(server_id: str) -> None:
    try:
        topics.check_id(server_id, "server-id")
    except ValueError as exc:
        assert "reserved" in str(exc), exc
    else:
        raise AssertionError(f"server-id {server_id!r} accepted")
    assert topics.check_id(server_id, "mcp-client-id") == server_id  # a client id may be anything valid


def check_roundtrips(case: tuple[str, str, str]) -> None:
    client_id, server_id, name = case
    assert topics.parse(topics.rpc(client_id, server_id, name)) == topics.Topic(
        "rpc", server_id=server_id, server_name=name, client_id=client_id)
    assert topics.parse(topics.server_control(server_id, name)) == topics.Topic("control", server_id, name)
    assert topics.parse(topics.server_presence(server_id, name)) == topics.Topic("server-presence", server_id, name)
    assert topics.parse(topics.server_capability(server_id, name)) == topics.Topic("server-capability", server_id, name)
    assert topics.parse(topics.client_presence(client_id)) == topics.Topic("client-presence", client_id=client_id)
    assert topics.parse(topics.client_capability(client_id)) == topics.Topic("client-capability", client_id=client_id)


def _mqtt_string(text: str) -> bool:
    try:
        return "\x00" not in text and len(text.encode("utf-8")) <= 65535
    except UnicodeEncodeError:
        return False


def check_validators(case: tuple[str, str]) -> None:
    ident, name = case
    id_ok = bool(ident) and not any(c in ident for c in "/+#") and _mqtt_string(ident)
    try:
        assert topics.check_id(ident) == ident
        assert id_ok, f"check_id accepted {ident!r}"
    except ValueError:
        assert not id_ok, f"check_id refused {ident!r}"
    lv = name.split("/")
    name_ok = len(lv) >= 2 and all(lv) and "+" not in name and "#" not in name and _mqtt_string(name)
    try:
        assert topics.check_server_name(name) == name
        assert name_ok, f"check_server_name accepted {name!r}"
    except ValueError:
        assert not name_ok, f"check_server_name refused {name!r}"


def check_accepted_ids_are_mqtt_topics(case: tuple[str, str]) -> None:
    """What check_id/check_server_name accept must make topics a broker accepts (MQTT 5
    1.5.4, 4.7.3: UTF-8 without U+0000, at most 65535 bytes)."""
    ident, name = case
    try:
        topics.check_id(ident)
        topics.check_server_name(name)
    except ValueError:
        return
    topic = topics.rpc(ident, ident, name)
    try:
        raw = topic.encode("utf-8")
    except UnicodeEncodeError:
        raise AssertionError(f"accepted {ident!r}/{name!r}: the topic is not UTF-8") from None
    assert "\x00" not in topic, f"accepted {ident!r}/{name!r}: U+0000 in a topic"
    assert len(raw) <= 65535, f"accepted an id/name making a {len(raw)}-byte topic"


mqtt_bad_ids = st.builds(lambda a, bad, b: a + bad + b, st.text(max_size=3),
                         st.sampled_from(["\x00", "\ud800", "\udfff"]) | st.just("x" * 70000), st.text(max_size=3))

# --------------------------------------------------------------------------- broker URLs

url_texts = (st.text(max_size=40)
             | st.builds(lambda s, rest: s + rest, st.sampled_from(["mqtt://", "mqtts://", "tcp://", "ssl://", "tls://",
                                                                   "ws://", "MQTT://", ""]),
                         st.text(alphabet=st.sampled_from(list("ab1:@[]/%.?#-_ ")) | st.characters(), max_size=30)))


def check_broker_url(url: str) -> None:
    try:
        b = parse_broker_url(url)
    except ValueError:
        return
    assert isinstance(b, BrokerURL) and b.host and 1 <= b.port <= 65535, b
    # str() is exactly scheme://[user@]host:port: no password field (a short password may of
    # course occur as a substring of the rest, e.g. ":" or "/")
    want = f"{'mqtts' if b.tls else 'mqtt'}://{b.username + '@' if b.username else ''}{b.host}:{b.port}"
    assert str(b) == want, (str(b), want)


hostnames = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8),
                     min_size=1, max_size=3).map(".".join)
secrets = st.text(min_size=1, max_size=16)


@st.composite
def url_parts(draw):
    scheme = draw(st.sampled_from(["mqtt", "mqtts", "tcp", "ssl", "tls"]))
    user = draw(st.none() | st.text(min_size=1, max_size=10))
    password = draw(st.none() | secrets) if user is not None else None
    host = draw(hostnames | st.sampled_from(["[::1]", "127.0.0.1", "[fe80::1]"]))
    port = draw(st.none() | st.integers(1, 65535))
    return scheme, user, password, host, port


def build_url(scheme, user, password, host, port) -> str:
    auth = ""
    if user is not None:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "") + "@"
    return f"{scheme}://{auth}{host}" + (f":{port}" if port is not None else "")


def check_url_roundtrip(parts) -> None:
    scheme, user, password, host, port = parts
    b = parse_broker_url(build_url(*parts))
    tls = scheme in ("mqtts", "ssl", "tls")
    assert b.tls == tls and b.host == host.strip("[]").lower(), b
    assert b.port == (port or (8883 if tls else 1883)), b
    assert b.username == user and b.password == password, b
    if password is not None:
        secret = parse_broker_url(build_url(scheme, user, "S3CRET-" + password, host, port))
        assert "S3CRET-" not in str(secret), f"str() shows the password: {str(secret)!r}"


def check_repr_hides_password(parts) -> None:
    scheme, user, password, host, port = parts
    b = parse_broker_url(build_url(scheme, user or "u", "SECRET-" + (password or "x"), host, port))
    for shown in (repr(b), f"{[b]}", str(b)):
        assert "SECRET-" not in shown, f"the password shows in {shown!r}"


def check_port_zero_refused(case: tuple[str, str]) -> None:
    scheme, host = case
    try:
        b = parse_broker_url(f"{scheme}://{host}:0")
    except ValueError:
        return
    raise AssertionError(f"{scheme}://{host}:0 accepted as {b} (docstring: a port outside 1..65535 is a ValueError)")


# --------------------------------------------------------------------------- endpoint


class FakeTransport:
    """What ``Endpoint`` uses of ``MqttServerTransport``, encoding like it does (so a reply the
    codec cannot encode raises here as it would there)."""

    def __init__(self) -> None:
        self.encodings: dict[str, str] = {}
        self.stats = LinkStats()
        self.clients: set[str] = set()
        self.sent: list[tuple[str, dict[str, Any], bytes]] = []

    def send_rpc(self, client_id: str, message: dict[str, Any], qos: int | None = None) -> None:
        self.sent.append((client_id, message, codec.encode(message, self.encodings.get(client_id))))

    def backlog(self, client_id: str) -> int:
        """Answers to ``client_id`` the broker has not acknowledged yet: none here (each is
        'sent' at once)."""
        return 0

    def crowded(self, client_id: str, in_flight: int, bound: int) -> int:
        """The busy lane's trigger: one connection here, nothing to move."""
        return bound

    def send_capability(self, message: dict[str, Any]) -> None:
        codec.encode(message)

    async def serve_client(self, client_id: str, timeout: float = 10.0) -> None:
        topics.check_id(client_id, "mcp-client-id")
        self.clients.add(client_id)

    def drop_client(self, client_id: str, notify: bool = False) -> None:
        self.clients.discard(client_id)
        self.encodings.pop(client_id, None)


def make_endpoint() -> tuple[Endpoint, FakeTransport, Harness]:
    h = Harness()
    ep = Endpoint(h.server)
    ep.transport = FakeTransport()  # type: ignore[assignment]
    h.server.broadcast = ep.transport.send_capability
    return ep, ep.transport, h


def decode_like_the_wire(payload: bytes, ct: str | None) -> Any:
    """The value a correct decoder gets from ``payload`` under Content Type ``ct``, or UNDECODABLE."""
    try:
        if ct in (None, "", codec.JSON) or ct.startswith("application/json"):
            return json.loads(payload)
        if ct == codec.CBOR:
            return cbor2.loads(payload)
    except Exception:  # noqa: BLE001 - any failure to decode
        return UNDECODABLE
    return UNDECODABLE


async def settle(ep: Endpoint, h: Harness) -> None:
    """Wait for every task the endpoint and the server spawned; re-raise what one raised."""
    await settle_all()


def check_answers(sent: list[dict[str, Any]], value: Any, *, control: bool = False, cbor: bool = False) -> None:
    """Compare what went out with what ``value`` (decoded, or UNDECODABLE) deserves."""
    for msg in sent:
        check_wire(msg, cbor)
    responses = [m for m in sent if "method" not in m]
    if value is UNDECODABLE:
        assert len(responses) == 1 and responses[0]["id"] is None, responses
        assert responses[0]["error"]["code"] == jsonrpc.PARSE_ERROR, responses
        return
    kind, msg_id, exact = expected(value)
    if kind == "reply" and value["method"] == "notifications/disconnected" and "id" not in value:
        kind = "none"
    if kind == "none":
        assert not responses, f"answered {value!r}: {responses}"
        return
    assert len(responses) == 1, f"{len(responses)} answers to {value!r}: {responses}"
    got = responses[0]
    assert same_id(got["id"], msg_id) or (not exact and got["id"] is None), (got, msg_id)
    if kind == "error":
        assert got["error"]["code"] in (jsonrpc.INVALID_REQUEST, jsonrpc.PARSE_ERROR), got
    elif "error" in got:
        assert got["error"]["code"] != jsonrpc.INTERNAL_ERROR, f"internal error for client input: {got}"
        if control and value["method"] != "initialize":
            assert got["error"]["code"] == jsonrpc.INVALID_REQUEST, got


cbor_extras = (st.binary(max_size=6) | st.datetimes(timezones=st.just(dt.timezone.utc))
               | st.builds(cbor2.CBORTag, st.integers(1000, 2000), st.integers())
               | st.frozensets(st.integers(), max_size=2) | st.lists(st.binary(max_size=2), max_size=2))


@st.composite
def wire_payloads(draw) -> tuple[bytes, str | None]:
    """A payload and its Content Type: a message JSON- or CBOR-encoded, mutated or not, or noise."""
    ct = draw(st.sampled_from([None, codec.JSON, codec.CBOR, codec.CBOR]))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=120)), ct
    value = draw(rpc_message() if kind < 3 else json_values)
    if ct == codec.CBOR and isinstance(value, dict) and draw(st.booleans()):
        # what only CBOR carries: byte strings, tags, dates, sets, as param values
        params = value.get("params") if isinstance(value.get("params"), dict) else {}
        value["params"] = {**params, draw(st.sampled_from(["x", "name", "uri", "arguments", "cursor"])): draw(cbor_extras)}
    payload = cbor2.dumps(value) if ct == codec.CBOR else json.dumps(value).encode()
    if kind == 2:
        payload = mutate_bytes(payload, draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000),
                                                                 st.integers(0, 255)), min_size=1, max_size=3)))
    return payload, ct


def endpoint_scenario(payload: bytes, ct: str | None, where: str, session_encoding: str | None) -> None:
    async def go():
        ep, tr, h = make_endpoint()
        await h.initialize()
        h.session.send = ep._sender("fuzz-client")  # from now on answers go through the transport
        if session_encoding:
            tr.encodings["fuzz-client"] = session_encoding
        value = decode_like_the_wire(payload, ct)
        if where == "rpc":
            ep.on_rpc("fuzz-client", payload, Incoming(content_type=ct))
        elif where == "control":
            ep.on_control("fuzz-client", payload, Incoming(content_type=ct))
        else:
            ep.on_rpc("stranger", payload, Incoming(content_type=ct))
        await settle(ep, h)
        sent = [m for cid, m, _ in tr.sent]
        if where == "unknown":
            for msg in sent:
                check_wire(msg)
            assert len(sent) <= 1, sent
            if sent:
                assert isinstance(value, dict) and "method" in value and "id" in value, sent
                assert sent[0]["error"]["code"] == jsonrpc.INVALID_REQUEST, sent
        else:
            check_answers(sent, value, control=where == "control", cbor=session_encoding == codec.CBOR)
        if where == "rpc" and "fuzz-client" in h.server.sessions:
            before = len(tr.sent)
            ping = {"jsonrpc": "2.0", "id": "after-fuzz-ping", "method": "ping"}
            ep.on_rpc("fuzz-client", codec.encode(ping, session_encoding), Incoming(content_type=session_encoding))
            await settle(ep, h)
            assert [m for _, m, _ in tr.sent[before:]] == [{"jsonrpc": "2.0", "id": "after-fuzz-ping", "result": {}}]
    run(go)


def check_endpoint_rpc(case: tuple[bytes, str | None]) -> None:
    endpoint_scenario(*case, "rpc", case[1] if case[1] == codec.CBOR else None)


def check_endpoint_control(case: tuple[bytes, str | None]) -> None:
    endpoint_scenario(*case, "control", None)


def check_endpoint_unknown(case: tuple[bytes, str | None]) -> None:
    endpoint_scenario(*case, "unknown", None)


def no_known_bugs(case: tuple[bytes, str | None]) -> bool:
    """Inputs outside the known bugs (so the general properties stay green while they are
    open): no map key that is not a string (K7), no clientInfo that is not an object (K8)."""
    value = decode_like_the_wire(*case)

    def walk(v, depth=0):
        if isinstance(v, dict):
            return all(isinstance(k, str) and walk(x, depth + 1) for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return all(walk(x, depth + 1) for x in v)
        return True

    if isinstance(value, dict):
        params = value.get("params")
        if isinstance(params, dict) and "clientInfo" in params and not isinstance(params["clientInfo"], dict):
            return False
        if isinstance(params, dict):
            ri = params.get("requestId")
            if isinstance(ri, (list, dict)):
                return False  # K3
    return walk(value)


# ---- known bugs

@st.composite
def cbor_non_string_keys(draw) -> tuple[bytes, str | None]:
    """A CBOR request whose params carry a non-string map key (legal CBOR)."""
    method = draw(st.sampled_from(["ping", "tools/list", "resources/list", "tools/call"]))
    params = {"name": "bus_read", draw(st.integers(0, 9) | st.binary(max_size=2)): draw(st.integers())}
    return cbor2.dumps({"jsonrpc": "2.0", "id": draw(st.integers(1, 99)), "method": method, "params": params}), codec.CBOR


def check_cbor_keys(case: tuple[bytes, str | None]) -> None:
    endpoint_scenario(*case, "rpc", codec.CBOR)


@st.composite
def initialize_with_odd_client_info(draw) -> tuple[bytes, str | None]:
    info = draw(st.text(max_size=5) | st.lists(st.integers(), max_size=2) | st.integers())
    msg = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
           "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": info}}
    return json.dumps(msg).encode(), None


def check_initialize_answered(case: tuple[bytes, str | None]) -> None:
    endpoint_scenario(*case, "control", None)


@st.composite
def unknown_client_odd_ids(draw) -> tuple[bytes, str | None]:
    msg_id = draw(st.booleans() | st.none() | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=2))
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/list"}).encode(), None


PROPERTIES = [
    Property("codec.decode", "JSON/CBOR/unknown content types: a value or ValueError", codec_inputs(),
             check_codec_decode, 250),
    Property("codec.decode", "decode(encode(v)) == v (JSON and CBOR)",
             st.tuples(json_values, st.sampled_from([None, codec.JSON, codec.CBOR])), check_codec_roundtrip, 150),
    Property("topics.parse", "never raises; a parsed topic rebuilds to itself", topic_strings, check_parse_any, 300),
    Property("topics.parse", "builders round-trip for valid ids and server-names",
             st.tuples(valid_ids, valid_server_ids, valid_names), check_roundtrips, 150),
    Property("topics.check_*", "only ValueError; accept exactly the spec's rules",
             st.tuples(ids_any, names_any), check_validators, 300),
    Property("broker_url", "only ValueError; host and port 1..65535; str() is scheme://[user@]host:port", url_texts,
             check_broker_url, 250),
    Property("broker_url", "URLs built from parts parse back to the parts; str() hides the password", url_parts(),
             check_url_roundtrip, 150),
    Property("Endpoint.on_rpc", "JSON/CBOR payloads on a session's RPC topic: at most one answer, right id",
             wire_payloads().filter(no_known_bugs), check_endpoint_rpc, 80),
    Property("Endpoint.on_control", "payloads on the control topic: one answer to a request, nothing raises",
             wire_payloads().filter(no_known_bugs), check_endpoint_control, 60),
    Property("Endpoint.on_rpc", "unknown client: at most one -32600, nothing raises",
             wire_payloads().filter(no_known_bugs), check_endpoint_unknown, 60),
    Property("codec.decode", "deeply nested JSON is a ValueError",
             st.integers(1_000, 100_000), lambda n: check_codec_decode((b"[" * n + b"]" * n, None)), 5),
    Property("topics.check_id", "a server-id named presence/capability is refused (its control topic would be "
             "another server's presence or capability topic)",
             st.sampled_from(["presence", "capability"]), check_reserved_server_id, 2),
    Property("topics.check_*", "accepted ids/names make valid MQTT topics",
             st.tuples(mqtt_bad_ids, valid_names) | st.tuples(valid_ids, st.builds(lambda b: "a/" + b, mqtt_bad_ids)),
             check_accepted_ids_are_mqtt_topics, 20),
    Property("broker_url", "repr() and str() of a list never show the password", url_parts(),
             check_repr_hides_password, 20),
    Property("broker_url", "an explicit port 0 is refused", st.tuples(st.sampled_from(["mqtt", "mqtts"]), hostnames),
             check_port_zero_refused, 5),
    Property("Endpoint.on_rpc", "CBOR params with a non-string map key are answered",
             cbor_non_string_keys(), check_cbor_keys, 10),
    Property("Endpoint.on_control", "initialize with a clientInfo that is not an object is answered",
             initialize_with_odd_client_info(), check_initialize_answered, 10),
    Property("Endpoint.on_rpc", "unknown client: the -32600 answer carries a valid id",
             unknown_client_odd_ids(), check_endpoint_unknown, 10),
]

for _p in PROPERTIES:
    _name = "test_fuzz_" + "".join(c if c.isalnum() else "_" for c in f"{_p.target}_{_p.name}").lower()[:80]
    assert _name not in globals(), _name
    globals()[_name] = ci_test(_p)
del _p, _name
