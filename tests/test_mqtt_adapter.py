"""The MQTT adapter (edge_agent/mqtt/loop.py) and the one module that touches paho's privates.

The paho_private tests fail when a paho-mqtt upgrade moves, renames or changes the meaning of
an attribute we rely on: they drive a real client against the test broker and watch the
attribute do what paho_private's docstring says.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.mqtt import paho_private
from edge_agent.mqtt.broker_url import parse_broker_url
from edge_agent.mqtt.loop import Connection, LoopDriver
from edge_agent.mqtt.reconnect import ReconnectPolicy

ROOT = Path(__file__).resolve().parents[1]


def _client(cid: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)


def _pump_until(client: mqtt.Client, predicate, timeout: float = 5.0) -> None:
    """Drive a client by hand (no thread, no asyncio) until ``predicate()``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out driving paho by hand"
        if client.want_write():
            client.loop_write()
        client.loop_read()
        time.sleep(0.005)


# ---------------------------------------------------------------------------- paho's privates
def test_ping_sent_at_means_the_outstanding_pingreq(broker):
    """``_ping_t``: 0 on a fresh client, paho's clock at the PINGREQ, 0 again after the PINGRESP."""
    assert paho_private.clock is time.monotonic  # the clock _ping_t is measured on
    client = _client("adapter-ping")
    assert paho_private.ping_sent_at(client) == 0.0
    assert hasattr(client, "_ping_t"), "paho no longer has Client._ping_t: update edge_agent/mqtt/paho_private.py"
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", broker.port, keepalive=1)
    try:
        client.socket().setblocking(False)
        _pump_until(client, connected.is_set)
        assert paho_private.ping_sent_at(client) == 0.0
        time.sleep(1.05)  # one keepalive without traffic: loop_misc() sends the PINGREQ
        before = paho_private.clock()
        client.loop_misc()
        sent = paho_private.ping_sent_at(client)
        assert before <= sent <= paho_private.clock(), "PINGREQ sent, but _ping_t does not hold its time"
        _pump_until(client, lambda: paho_private.ping_sent_at(client) == 0.0)  # the PINGRESP clears it
    finally:
        client.disconnect()
        client.loop_write()


def test_in_callback_is_true_only_inside_a_paho_callback(broker):
    client = _client("adapter-cb")
    assert hasattr(client, "_in_callback_mutex"), "paho moved _in_callback_mutex: update paho_private.py"
    seen: list[bool] = []
    client.on_connect = lambda *a: seen.append(paho_private.in_callback(client))
    client.connect("127.0.0.1", broker.port, keepalive=30)
    try:
        assert not paho_private.in_callback(client)
        client.socket().setblocking(False)
        _pump_until(client, lambda: bool(seen))
        assert seen == [True]
        assert not paho_private.in_callback(client)
    finally:
        client.disconnect()
        client.loop_write()


def test_read_packets_reads_at_most_its_limit_and_leaves_the_rest_in_the_socket(broker):
    """``read_packets``: paho's ``_packet_read``/``_loop_rc_handle`` steps, bounded; what is left
    is read by the next call (the socket stays readable)."""
    client = _client("adapter-batch")
    for name in ("_packet_read", "_loop_rc_handle", "_sock"):
        assert hasattr(client, name), f"paho moved Client.{name}: update paho_private.read_packets"
    got: list[bytes] = []
    ready = threading.Event()
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.on_subscribe = lambda *a: ready.set()
    client.connect("127.0.0.1", broker.port, keepalive=30)
    sender = _client("adapter-batch-pub")
    sender.connect("127.0.0.1", broker.port, keepalive=30)
    try:
        client.socket().setblocking(False)
        client.subscribe("adapter/batch", qos=0)
        _pump_until(client, ready.is_set)
        sender.loop_start()
        for i in range(100):
            sender.publish("adapter/batch", str(i).encode(), qos=0)
        time.sleep(0.5)  # all 100 are in the socket by now
        assert paho_private.read_packets(client, 10) == mqtt.MQTT_ERR_SUCCESS
        assert len(got) == 10, len(got)
        deadline = time.monotonic() + 5
        while len(got) < 100 and time.monotonic() < deadline:
            paho_private.read_packets(client, 10)
        assert got == [str(i).encode() for i in range(100)]  # all of them, in order, none twice
    finally:
        sender.loop_stop()
        sender.disconnect()
        client.disconnect()
        client.loop_write()


def test_no_module_but_paho_private_touches_paho_privates():
    """Every ``client._something`` (and the like) on a paho object is in paho_private.py."""
    pattern = re.compile(r"\b(?:client|c|_client|mqtt_client)\._[a-z]\w*")
    offenders = []
    for path in (ROOT / "edge_agent").rglob("*.py"):
        if path.name == "paho_private.py" or "drivers" in path.relative_to(ROOT / "edge_agent").parts[:1]:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) or "_ping_t" in line or "_in_callback_mutex" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ---------------------------------------------------------------------------- the driver
def test_callbacks_run_on_the_event_loop_thread(broker):
    """No network thread: paho's callbacks run on the loop's own thread, and a publish from the
    loop goes out without a hop."""

    async def go():
        loop = asyncio.get_running_loop()
        driver = LoopDriver(loop, misc_interval=0.1)
        client = _client("adapter-thread")
        got: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        threads: set[int] = set()

        def on_connect(c, u, flags, rc, props):
            threads.add(threading.get_ident())
            c.subscribe("adapter/echo", qos=1)

        def on_subscribe(c, u, mid, rcs, props):
            threads.add(threading.get_ident())
            c.publish("adapter/echo", b"hello", qos=1)

        def on_message(c, u, m):
            if not got.done():
                got.set_result((threading.get_ident(), m.payload))

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        driver.attach(client)
        await driver.connect(client, "127.0.0.1", broker.port, keepalive=30)
        ident, payload = await asyncio.wait_for(got, 5)
        assert payload == b"hello"
        assert threads == {ident} == {threading.get_ident()}
        assert client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        client.disconnect()
        driver.flush(client)
        driver.close()

    asyncio.run(go())


def test_connack_timeout_fails_the_attempt_and_fails_over(broker):
    """A server that accepts TCP but never answers CONNECT: the attempt fails after the CONNACK
    timeout, the next URL (the real broker) is tried and accepted."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    urls = [parse_broker_url(f"mqtt://127.0.0.1:{silent.getsockname()[1]}"), parse_broker_url(broker.url)]

    async def go():
        loop = asyncio.get_running_loop()
        driver = LoopDriver(loop, misc_interval=0.1)
        failures: list[str] = []
        up = asyncio.Event()
        conn = Connection(_client("adapter-connack"), urls, driver=driver, keepalive=30, connack_timeout=0.5,
                          policy=ReconnectPolicy(0.05, 0.1), on_attempt_failed=failures.append,
                          on_connected=lambda flags, props: up.set())
        started = time.monotonic()
        conn.start()
        await asyncio.wait_for(up.wait(), 10)
        assert conn.broker == urls[1]
        assert len(failures) == 1 and "no CONNACK within 0.5 s" in failures[0], failures
        assert time.monotonic() - started >= 0.5
        await conn.stop()
        assert not conn.up
        driver.close()

    try:
        asyncio.run(go())
    finally:
        silent.close()


def test_stop_during_a_refused_attempt_ends_at_once():
    """Nothing listens: attempts fail with backoff; stop() wakes the backoff sleep at once."""
    from edge_agent.testing.broker import free_port

    async def go():
        driver = LoopDriver(asyncio.get_running_loop())
        failures: list[str] = []
        failed = asyncio.Event()

        def on_failed(text: str) -> None:
            failures.append(text)
            failed.set()

        conn = Connection(_client("adapter-refused"), [parse_broker_url(f"mqtt://127.0.0.1:{free_port()}")],
                          driver=driver, keepalive=30, connack_timeout=1, policy=ReconnectPolicy(5, 10),
                          on_attempt_failed=on_failed)
        conn.start()
        await asyncio.wait_for(failed.wait(), 5)
        t0 = time.monotonic()
        await conn.stop()
        assert time.monotonic() - t0 < 1.0
        assert "ConnectionRefusedError" in failures[0]

    asyncio.run(go())


def test_connection_rejects_an_empty_broker_list():
    async def go():
        with pytest.raises(ValueError):
            Connection(_client("x"), [], driver=LoopDriver(asyncio.get_running_loop()), keepalive=30,
                       connack_timeout=1, policy=ReconnectPolicy(1, 2))

    asyncio.run(go())



# ---------------------------------------------------------------------------- the links on it
def _paho_threads() -> list[str]:
    """Threads paho's loop_start() or our old network thread would have started."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("paho-mqtt-client-", "mqtt-"))]


def test_device_link_and_cloud_link_run_without_a_network_thread(broker):
    """The device transport and the cloud client's MqttLink talk to each other through the
    broker with every callback on the event loop's thread and no network thread anywhere."""
    from edge_agent.client.link import MqttLink
    from edge_agent.core import topics
    from edge_agent.mqtt.server import MqttServerTransport

    async def go():
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, int]] = []
        answered = asyncio.Event()

        def on_rpc(client_id, payload, incoming):
            seen.append(("device", threading.get_ident()))
            t.publish(t.rpc_topic(client_id), payload, kind="response")

        t = MqttServerTransport(server_id="adapter-dev", server_name="adapter/dev", description="d", meta={},
                                broker=parse_broker_url(broker.url), loop=loop, on_control=lambda *a: None,
                                on_rpc=on_rpc, on_client_gone=lambda *a: None)
        await t.start(5)
        try:
            async with MqttLink(broker.url, client_id="adapter-cli") as link:
                def on_message(m):
                    seen.append(("client", threading.get_ident()))
                    answered.set()

                link.on_message = on_message
                await t.serve_client("adapter-cli")
                rpc = topics.rpc("adapter-cli", "adapter-dev", "adapter/dev")
                await link.subscribe([(rpc, True)])
                assert not _paho_threads(), _paho_threads()
                link.publish(rpc, b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
                await asyncio.wait_for(answered.wait(), 5)
        finally:
            await t.stop()
        assert seen == [("device", threading.get_ident()), ("client", threading.get_ident())]

    asyncio.run(go())


def test_stop_while_the_connect_worker_is_blocked_returns_at_once_and_leaves_no_connection():
    """paho's connect blocks in a worker thread (here: a TLS handshake the server never answers).
    stop() does not wait for it; when the worker gives up, its socket is closed, unused."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted: list[socket.socket] = []
    closed = threading.Event()
    inside: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def serve() -> None:
        conn, _ = silent.accept()
        accepted.append(conn)
        loop, event = inside[0]
        loop.call_soon_threadsafe(event.set)
        conn.settimeout(10)
        try:
            while conn.recv(4096):  # the ClientHello, then EOF when the client closes
                pass
        except OSError:
            pass
        closed.set()

    async def go():
        loop = asyncio.get_running_loop()
        inside.append((loop, asyncio.Event()))
        threading.Thread(target=serve, daemon=True).start()
        driver = LoopDriver(loop, misc_interval=0.1)
        client = _client("adapter-blocked")
        client.tls_set()
        failures: list[str] = []
        conn = Connection(client, [parse_broker_url(f"mqtts://127.0.0.1:{silent.getsockname()[1]}")], driver=driver,
                          keepalive=30, connack_timeout=1.5, policy=ReconnectPolicy(1, 2),
                          on_attempt_failed=failures.append)
        conn.start()
        await asyncio.wait_for(inside[0][1].wait(), 5)  # the worker is inside the handshake
        t0 = time.monotonic()
        await conn.stop()
        assert time.monotonic() - t0 < 0.5, "stop() waited for the blocked worker"
        assert await loop.run_in_executor(None, closed.wait, 5), "the worker's socket was never closed"
        assert failures == []  # a stopped link reports no failed attempt
        driver.close()

    try:
        asyncio.run(go())
    finally:
        silent.close()
        for c in accepted:
            c.close()
