"""Issue 13 item 3: the ACL file ``edge-agent acl`` writes, read back and run in a real Mosquitto
(password file made with mosquitto_passwd), proves each principal's rights against a matrix:
no one but a device writes its presence or capability, clients write only the fleet's control
topics under their filters and the topics of their own client ids, devices get exactly their
own topics; names that could inject a line are refused."""

from __future__ import annotations

import subprocess
import sys
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent import acl
from edge_agent.errors import ConfigError
from edge_agent.testing.broker import LocalBroker

A, A_NAME = "gh-a", "devices/greenhouse/a"
B, B_NAME = "lab-b", "devices/lab/b"
FLEET_TOML = f"""
[[devices]]
username = "dev1"
server_id = "{A}"
server_name = "{A_NAME}"

[[devices]]
username = "dev2"
server_id = "{B}"
server_name = "{B_NAME}"

[[clients]]
username = "ops"
server_name_filters = ["devices/#"]
client_ids = ["ops-1"]

[[clients]]
username = "viewer"
server_name_filters = ["devices/lab/#"]
client_ids = ["view-1"]

[[clients]]
username = "eve"
server_name_filters = ["devices/lab/#"]
"""
PASSWORDS = {"dev1": "p1", "dev2": "p2", "ops": "p3", "viewer": "p4", "eve": "p5", "probe": "p6"}
# the test's own writer, to see whether a message on a topic reaches a principal (Mosquitto 2.0
# grants every SUBSCRIBE and applies read rights on delivery)
PROBE = "\n# test harness only\nuser probe\ntopic readwrite $mcp-server/#\ntopic readwrite $mcp-rpc/#\n" \
        "topic readwrite $mcp-client/#\n"
# a topic each principal may read, published after each probe: when it arrives, the probe has too
SENTINEL = {"dev1": f"$mcp-server/{A}/{A_NAME}", "ops": "$mcp-rpc/ops-1/sentinel", "viewer":
            f"$mcp-server/presence/{B}/{B_NAME}", "eve": "$mcp-rpc/eve-7/sentinel"}


class Principal:
    """A raw paho MQTT 5 client: may it publish (PUBACK reason) or subscribe (SUBACK reason)?"""

    def __init__(self, port: int, user: str, client_id: str):
        self.user, self.got, self.cond = user, [], threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, PASSWORDS[user])
        self.acks: dict[int, tuple[threading.Event, list]] = {}
        self.c.on_publish = lambda c, u, mid, rc, props: self._ack(mid, rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self._ack(mid, rcs[0])
        self.c.on_message = self._on_message
        connected = threading.Event()
        self.c.on_connect = lambda *a: connected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert connected.wait(5)

    def _on_message(self, c, u, m) -> None:
        with self.cond:
            self.got.append((m.topic, m.payload))
            self.cond.notify_all()

    def _ack(self, mid, rc) -> None:
        self.acks.setdefault(mid, (threading.Event(), []))
        self.acks[mid][1].append(rc)
        self.acks[mid][0].set()

    def _wait(self, mid) -> int:
        self.acks.setdefault(mid, (threading.Event(), []))
        assert self.acks[mid][0].wait(5), "no ack"
        return self.acks[mid][1][0].value

    def may_write(self, topic: str) -> bool:
        info = self.c.publish(topic, b"x", qos=1)
        return self._wait(info.mid) < 0x80

    def may_read(self, topic: str, probe: "Principal") -> bool:
        """Subscribe ``topic`` (or the sentinel), let ``probe`` publish on it, then on the
        sentinel: did the first message arrive before the sentinel?"""
        sentinel = SENTINEL[self.user].replace("ops-1", self.c._client_id.decode()) if self.user == "ops" else \
            SENTINEL[self.user]
        for t in (topic, sentinel):
            _, mid = self.c.subscribe([(t, SubscribeOptions(qos=1))])
            self._wait(mid)
        token = f"probe-{id(self)}-{len(self.got)}".encode()
        probe.c.publish(topic if "+" not in topic and "#" not in topic else topic.replace("+", "x").replace("#", "y"),
                        token, qos=1).wait_for_publish(5)
        probe.c.publish(sentinel, token + b"-end", qos=1).wait_for_publish(5)
        with self.cond:
            assert self.cond.wait_for(lambda: (sentinel, token + b"-end") in self.got, 5), f"no sentinel on {sentinel}"
            seen = any(p == token for _, p in self.got)
        self.c.unsubscribe(topic)
        return seen

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def ctl(sid, name):
    return f"$mcp-server/{sid}/{name}"


def pres(sid, name):
    return f"$mcp-server/presence/{sid}/{name}"


def cap(sid, name):
    return f"$mcp-server/capability/{sid}/{name}"


# (user, client id, "w" or "r", topic, allowed)
MATRIX = [
    # device A: its own topics only
    ("dev1", A, "w", pres(A, A_NAME), True),
    ("dev1", A, "w", cap(A, A_NAME), True),
    ("dev1", A, "w", f"$mcp-rpc/ops-1/{A}/{A_NAME}", True),
    ("dev1", A, "r", ctl(A, A_NAME), True),
    ("dev1", A, "r", "$mcp-client/presence/ops-1", True),
    ("dev1", A, "w", pres(B, B_NAME), False),           # forge another device's presence
    ("dev1", A, "w", cap(B, B_NAME), False),
    ("dev1", A, "w", pres(A, "devices/rogue/a"), False),  # a rogue replica under another name
    ("dev1", A, "w", ctl(B, B_NAME), False),
    ("dev1", A, "w", f"$mcp-rpc/ops-1/{B}/{B_NAME}", False),
    ("dev1", A, "r", ctl(B, B_NAME), False),
    ("dev1", A, "w", f"$mcp-rpc/{A}/{B}/{B_NAME}", False),  # the %c pattern, taken back
    ("dev1", A, "w", f"$mcp-client/presence/{A}", False),
    ("dev1", A, "w", "$mcp-client/presence/ops-1", False),
    # device A under ops' fixed client id: no RPC to another device as ops (the %c pattern, taken back)
    ("dev1", "ops-1", "w", f"$mcp-rpc/ops-1/{B}/{B_NAME}", False),
    ("dev1", "ops-1", "w", f"$mcp-rpc/ops-1/{A}/{A_NAME}", True),   # (its own RPC topics, as always)
    # ops (client id ops-1, all devices)
    ("ops", "ops-1", "w", ctl(A, A_NAME), True),
    ("ops", "ops-1", "w", ctl(B, B_NAME), True),
    ("ops", "ops-1", "r", pres(A, A_NAME), True),
    ("ops", "ops-1", "r", "$mcp-server/presence/+/devices/#", True),
    ("ops", "ops-1", "w", f"$mcp-rpc/ops-1/{A}/{A_NAME}", True),
    ("ops", "ops-1", "r", f"$mcp-rpc/ops-1/{A}/{A_NAME}", True),
    ("ops", "ops-1", "w", "$mcp-client/presence/ops-1", True),
    ("ops", "ops-1", "w", pres(A, A_NAME), False),       # the presence forgery of issue 13
    ("ops", "ops-1", "w", cap(A, A_NAME), False),
    ("ops", "ops-1", "w", pres("x", "devices/greenhouse/a"), False),
    ("ops", "ops-1", "w", ctl("rogue", "devices/greenhouse/a"), False),  # not a fleet device
    ("ops", "ops-1", "w", f"$mcp-rpc/view-1/{B}/{B_NAME}", False),
    ("ops", "ops-1", "r", f"$mcp-rpc/view-1/{B}/{B_NAME}", False),
    ("ops", "ops-1", "w", "$mcp-client/presence/view-1", False),
    # viewer (client id view-1, lab devices only)
    ("viewer", "view-1", "w", ctl(B, B_NAME), True),
    ("viewer", "view-1", "r", pres(B, B_NAME), True),
    ("viewer", "view-1", "w", ctl(A, A_NAME), False),
    ("viewer", "view-1", "r", pres(A, A_NAME), False),
    ("viewer", "view-1", "w", f"$mcp-rpc/ops-1/{A}/{A_NAME}", False),
    # viewer under ops' client id (it takes over the connection, not the rights)
    ("viewer", "ops-1", "w", f"$mcp-rpc/ops-1/{A}/{A_NAME}", False),
    ("viewer", "ops-1", "r", f"$mcp-rpc/ops-1/{A}/{A_NAME}", False),
    ("viewer", "ops-1", "w", ctl(A, A_NAME), False),
    # eve: no fixed ids, so her own client id (%c) only
    ("eve", "eve-7", "w", f"$mcp-rpc/eve-7/{B}/{B_NAME}", True),
    ("eve", "eve-7", "w", ctl(B, B_NAME), True),
    ("eve", "eve-7", "w", f"$mcp-rpc/ops-1/{A}/{A_NAME}", False),
    ("eve", "eve-7", "w", pres(B, B_NAME), False),
]


@pytest.fixture
def acl_broker(tmp_path):
    (tmp_path / "fleet.toml").write_text(FLEET_TOML)
    out = subprocess.run([sys.executable, "-m", "edge_agent", "acl", "--fleet", str(tmp_path / "fleet.toml"),
                          "--out", str(tmp_path / "acl"), "--dynsec", str(tmp_path / "dynsec.json"),
                          "--emqx", str(tmp_path / "acl.conf")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "eve" in out.stderr and "client_ids" in out.stderr  # told which users are not bound
    pwfile = tmp_path / "passwords"
    pwfile.write_text("")
    for user, pw in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, pw], check=True, capture_output=True)
    (tmp_path / "acl-run").write_text((tmp_path / "acl").read_text() + PROBE)
    with LocalBroker(allow_anonymous=False, workdir=tmp_path / "broker",
                     extra_conf=f"password_file {pwfile}\nacl_file {tmp_path / 'acl-run'}\n") as broker:
        yield broker, tmp_path


def test_each_principal_against_the_matrix(acl_broker):
    broker, tmp_path = acl_broker
    text = (tmp_path / "acl").read_text()
    assert "$mcp-server/+/" not in text
    got, principals = [], {}
    probe = Principal(broker.port, "probe", "probe-1")
    try:
        for user, cid, op, topic, allowed in MATRIX:
            if (user, cid) not in principals:
                for key in [k for k in principals if k[1] == cid]:  # same client id: taken over
                    principals.pop(key).close()
                principals[(user, cid)] = Principal(broker.port, user, cid)
            p = principals[(user, cid)]
            result = p.may_write(topic) if op == "w" else p.may_read(topic, probe)
            got.append((user, cid, op, topic, result))
    finally:
        for p in [probe, *principals.values()]:
            p.close()
    wrong = [g for g, m in zip(got, MATRIX) if g[4] != m[4]]
    assert not wrong, f"rights that differ from the matrix: {wrong}"


@pytest.mark.parametrize("bad,key", [
    ({"devices": [{"username": "d", "server_id": "x", "server_name": "devices/a\ntopic readwrite #"}]}, "devices[0]"),
    ({"devices": [{"username": "d\nuser x", "server_id": "x", "server_name": "devices/a"}]}, "devices[0]"),
    ({"devices": [{"username": "d", "server_id": "x y", "server_name": "devices/a"}]}, "devices[0]"),
    ({"clients": [{"username": "c", "server_name_filters": ["devices/#\ntopic readwrite #"]}]},
     "clients[0].server_name_filters"),
    ({"clients": [{"username": "c", "server_name_filters": ["#"]}]}, "clients[0].server_name_filters"),
    ({"clients": [{"username": "c", "server_name_filters": ["+/greenhouse/#"]}]}, "clients[0].server_name_filters"),
    ({"clients": [{"username": "c", "server_name_filters": ["devices/gr+/#"]}]}, "clients[0].server_name_filters"),
    ({"clients": [{"username": "c", "server_name_filters": ["devices/%u/#"]}]}, "clients[0].server_name_filters"),
    ({"clients": [{"username": "c", "server_name_filters": ["devices/#"], "client_ids": ["a/b"]}]},
     "clients[0].client_ids"),
    ({"clients": [{"username": "c"}]}, "clients[0].server_name_filters"),  # nothing to narrow to
])
def test_names_that_could_inject_are_refused(bad, key):
    with pytest.raises(ConfigError) as exc:
        acl.fleet_from_dict(bad)
    assert key in {k for _, k, _ in exc.value.problems}


def test_default_filters_are_narrowed_and_dynsec_binds_ids():
    fleet = acl.fleet_from_dict({"devices": [{"username": "d", "server_id": A, "server_name": A_NAME}],
                                 "clients": [{"username": "c", "client_ids": ["c-1"]}]})
    assert fleet.clients[0].server_name_filters == (A_NAME,)
    assert not fleet.needs_patterns and "pattern " not in acl.mosquitto_acl(fleet)
    dyn = acl.dynsec(fleet)
    assert {c["username"]: c.get("clientid") for c in dyn["clients"]} == {"d": A, "c": "c-1"}
    assert not any("%c" in a["topic"] for r in dyn["roles"] for a in r["acls"])
