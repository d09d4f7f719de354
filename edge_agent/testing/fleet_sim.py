"""Simulated MCP-over-MQTT devices, many per process: for the gateway's tests and ``bench/fleet.py``.

Each :class:`SimDevice` is a real MCP server instance on the wire — its own MQTT 5 connection
(client id = server-id), retained ``notifications/server/online`` presence with an empty
retained will, control topic, per-client RPC topics with No Local, capability topic — and
serves this project's protocol core (:class:`~edge_agent.server.mcp.McpServer`) with a
small simulated registry. It is deliberately leaner than the agent's
:class:`~edge_agent.mqtt.server.MqttServerTransport` (no outbox, no SQLite, no
reconnection): a thousand of them must fit in one process.

Threads: none. paho's ``loop_start`` costs one thread per client; instead the MQTT adapter's
:class:`~edge_agent.mqtt.loop.LoopDriver` (the one the agent uses) drives every paho client
from the asyncio event loop (``add_reader`` / ``add_writer`` on each socket, one ``loop_misc``
sweep per second for keepalives), so paho's callbacks run on the event loop itself.

What a simulated device offers:

- tools ``echo(text)``, ``whoami()`` (its server-id and call count), ``set_relay(on)``,
  ``slow(seconds, steps)`` (progress per step; honours cancellation; counts cancellations
  in :attr:`SimDevice.cancelled`);
- resources ``sim://temperature`` (``{"value", "unit": "°C"}``, see
  :meth:`SimDevice.set_temperature`) and ``sim://relay``; template ``sim://history/{n}``;
- prompt ``status`` (optional argument ``detail``).

With ``profile="greenhouse"`` (:func:`greenhouse_registry`) it is a greenhouse controller
instead: tool ``vent_set(open)``, sensors ``sensor://soil/temperature`` (°C),
``sensor://air/humidity`` (%), state ``state://vent``; ``location`` goes into the presence meta.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent import __version__
from edge_agent.core import binding, jsonrpc, topics
from edge_agent.mqtt.broker_url import BrokerURL, parse_broker_url
from edge_agent.mqtt.loop import LoopDriver, PackedProperties
from edge_agent.server.catalog import META_KEY as CATALOG_DIGEST
from edge_agent.server.catalog import catalog_digest
from edge_agent.server.mcp import McpServer, ServerInfo
from edge_agent.server.registry import (
    Prompt,
    PromptArgument,
    Registry,
    Resource,
    ResourceTemplate,
    Tool,
    ToolContext,
)

log = logging.getLogger(__name__)

DISCONNECTED = jsonrpc.encode(binding.DISCONNECTED)
COMPONENT = topics.COMPONENT_SERVER


def _user_properties(props: Any) -> dict[str, str]:
    return dict(getattr(props, "UserProperty", None) or [])


def sim_registry(device: "SimDevice") -> Registry:
    """The tools, resources, template and prompt of a simulated device."""
    reg = Registry()

    async def echo(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        return {"text": args["text"], "server_id": device.server_id}

    async def whoami(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        return {"server_id": device.server_id, "server_name": device.server_name, "calls": device.calls}

    async def set_relay(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        device.relay = bool(args["on"])
        device.server.resource_updated("sim://relay")
        return {"on": device.relay}

    async def slow(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        steps = int(args.get("steps", 10))
        seconds = float(args.get("seconds", 1.0))
        try:
            for i in range(steps):
                await asyncio.sleep(seconds / steps)
                ctx.progress(i + 1, steps, f"step {i + 1} of {steps}")
        except asyncio.CancelledError:
            device.cancelled += 1
            raise
        return {"completed": steps, "server_id": device.server_id}

    def counted(handler: Any) -> Any:
        async def run(args: dict[str, Any], ctx: ToolContext) -> Any:
            device.calls += 1
            return await handler(args, ctx)
        return run

    obj = {"type": "object", "additionalProperties": False}
    reg.add_tool(Tool("echo", "Echo a text back (with the answering server-id).", handler=counted(echo),
                      input_schema={**obj, "properties": {"text": {"type": "string"}}, "required": ["text"]}))
    reg.add_tool(Tool("whoami", "Which replica answered: server-id, server-name, calls so far.",
                      handler=counted(whoami), input_schema={**obj, "properties": {}}, annotations={"readOnlyHint": True}))
    reg.add_tool(Tool("set_relay", "Switch the simulated relay.", handler=counted(set_relay),
                      input_schema={**obj, "properties": {"on": {"type": "boolean"}}, "required": ["on"]}))
    reg.add_tool(Tool("slow", "Take SECONDS in STEPS steps, reporting progress; cancellable.", handler=counted(slow),
                      input_schema={**obj, "properties": {
                          "seconds": {"type": "number", "minimum": 0, "maximum": 600},
                          "steps": {"type": "integer", "minimum": 1, "maximum": 1000}}}))

    async def read_temperature() -> str:
        return json.dumps({"value": device.temperature, "unit": "°C"})

    async def read_relay() -> str:
        return json.dumps({"value": device.relay})

    async def read_history(uri: str, variables: dict[str, str]) -> str:
        n = int(variables["n"])
        return json.dumps({"values": [device.temperature] * min(n, 100), "unit": "°C"})

    reg.add_resource(Resource("sim://temperature", "temperature", read_temperature,
                              description="Simulated temperature", meta={"unit": "°C"}))
    reg.add_resource(Resource("sim://relay", "relay", read_relay, description="Simulated relay state"))
    reg.add_template(ResourceTemplate("sim://history/{n}", "history", read_history,
                                      description="The last N temperature readings",
                                      complete=lambda var, prefix: [v for v in ("1", "10", "100") if v.startswith(prefix)]))

    async def status(arguments: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
        text = f"{device.server_name} is at {device.temperature} °C; relay {'on' if device.relay else 'off'}."
        if arguments.get("detail"):
            text += f" ({arguments['detail']})"
        return "Device status", [{"role": "user", "content": {"type": "text", "text": text}}]

    reg.add_prompt(Prompt("status", "Summarise the device's state.", status,
                          arguments=[PromptArgument("detail", "extra words to include")]))
    return reg


def greenhouse_registry(device: "SimDevice") -> Registry:
    """A simulated greenhouse controller: a roof vent and two sensors (see the module docstring).
    Sensor resources carry ``_meta.unit`` and ``_meta.kind`` like the agent's."""
    reg = Registry()

    async def vent_set(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        device.calls += 1
        device.vent_open = bool(args["open"])
        device.server.resource_updated("state://vent")
        return {"open": device.vent_open}

    obj = {"type": "object", "additionalProperties": False}
    reg.add_tool(Tool("vent_set", "Open (true) or close (false) the greenhouse roof vent.", handler=vent_set,
                      input_schema={**obj, "properties": {"open": {"type": "boolean"}}, "required": ["open"]},
                      annotations={"idempotentHint": True}))

    def reading(value: Any, unit: str | None) -> str:
        return json.dumps({"value": value, "unit": unit} if unit else {"value": value}, ensure_ascii=False)

    async def soil() -> str:
        return reading(device.temperature, "°C")

    async def humidity() -> str:
        return reading(device.humidity, "%")

    async def vent() -> str:
        return reading(device.vent_open, None)

    reg.add_resource(Resource("sensor://soil/temperature", "soil/temperature", soil, title="soil temperature",
                              description="Soil temperature at root depth (°C). JSON: {value, unit}.",
                              meta={"unit": "°C", "kind": "soil_temperature", "driver": "soil"}))
    reg.add_resource(Resource("sensor://air/humidity", "air/humidity", humidity, title="air humidity",
                              description="Relative air humidity (%). JSON: {value, unit}.",
                              meta={"unit": "%", "kind": "humidity", "driver": "air"}))
    reg.add_resource(Resource("state://vent", "vent", vent, title="roof vent",
                              description="Whether the roof vent is open. JSON: {value}."))
    return reg


PROFILES = {"sim": sim_registry, "greenhouse": greenhouse_registry}


class SimDevice:
    """One simulated MCP server instance. ``await start()``, then ``await stop()`` (clean) or
    ``kill()`` (the connection just drops: the broker publishes the empty retained will)."""

    def __init__(self, broker_url: str | BrokerURL, server_id: str, server_name: str, *,
                 driver: LoopDriver, description: str = "Simulated device", qos: int = 1, keepalive: int = 60,
                 profile: str = "sim", location: str | None = None):
        self.broker = broker_url if isinstance(broker_url, BrokerURL) else parse_broker_url(broker_url)
        self.server_id = topics.check_id(server_id, "server-id")
        self.server_name = topics.check_server_name(server_name)
        self.description = description
        self.driver = driver
        self.qos = qos
        self.keepalive = keepalive
        self.profile = profile
        self.location = location
        self.temperature = 21.5
        self.humidity = 60.0
        self.vent_open = False
        self.relay = False
        self.calls = 0
        self.cancelled = 0
        self.killed = False
        self.server = McpServer(PROFILES[profile](self), ServerInfo(name="edge-agent-sim", version=__version__),
                                broadcast=lambda msg: self._publish(self.capability_topic, msg))
        self.meta: dict[str, Any] = {"implementation": "edge-agent-sim",
                                     CATALOG_DIGEST: catalog_digest(self.server)}
        if location:
            self.meta["location"] = location
        self._connected: asyncio.Future | None = None
        self._subacks: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self.client = self._make_client()

    presence_topic = property(lambda self: topics.server_presence(self.server_id, self.server_name))
    control_topic = property(lambda self: topics.server_control(self.server_id, self.server_name))
    capability_topic = property(lambda self: topics.server_capability(self.server_id, self.server_name))

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.server_id, protocol=mqtt.MQTTv5,
                        reconnect_on_failure=False)
        if self.broker.username:
            c.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            c.tls_set()
        will_props = Properties(PacketTypes.WILLMESSAGE)
        will_props.UserProperty = [("MCP-COMPONENT-TYPE", COMPONENT), ("MCP-MQTT-CLIENT-ID", self.server_id)]
        c.will_set(self.presence_topic, None, qos=1, retain=True, properties=will_props)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self._props = PackedProperties(PacketTypes.PUBLISH)
        self._props.UserProperty = [("MCP-COMPONENT-TYPE", COMPONENT), ("MCP-MQTT-CLIENT-ID", self.server_id)]
        return c

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe the control topic, publish the retained online presence.

        Raises:
            ConnectionError: the broker refused or did not answer within ``timeout`` s.
        """
        loop = asyncio.get_running_loop()
        self._connected = loop.create_future()
        self.driver.attach(self.client)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        props.UserProperty = [("MCP-COMPONENT-TYPE", COMPONENT),
                              ("MCP-META", json.dumps({"implementation": "edge-agent-sim"}))]
        self.client.connect(self.broker.host, self.broker.port, keepalive=self.keepalive, clean_start=True,
                            properties=props)
        try:
            await asyncio.wait_for(self._connected, timeout)
        except asyncio.TimeoutError:
            raise ConnectionError(f"{self.server_id}: no CONNACK from {self.broker} within {timeout} s") from None

    async def stop(self, timeout: float = 5.0) -> None:
        """Clean shutdown: ``notifications/disconnected`` to every client, empty retained presence,
        DISCONNECT."""
        if self.killed or not self.client.is_connected():
            self.driver.detach(self.client)
            return
        for cid in list(self.server.sessions):
            self.client.publish(topics.rpc(cid, self.server_id, self.server_name), DISCONNECTED, qos=self.qos,
                                properties=self._props)
            self.server.close_session(cid)
        info = self.client.publish(self.presence_topic, b"", qos=1, retain=True, properties=self._props)
        deadline = asyncio.get_running_loop().time() + timeout
        while not info.is_published() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        self.client.disconnect()
        await asyncio.sleep(0)
        self.driver.detach(self.client)
        self._cancel_tasks()

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT, like a crash or a pulled plug."""
        self.killed = True
        sock: Any = self.client.socket()
        self.driver.detach(self.client)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for cid in list(self.server.sessions):
            self.server.close_session(cid)
        self._cancel_tasks()

    def drop_clients(self) -> None:
        """Server-initiated de-initialize of every client (spec "Server Disconnect"):
        ``notifications/disconnected`` on each RPC topic; the device stays online."""
        for cid in list(self.server.sessions):
            self._publish(topics.rpc(cid, self.server_id, self.server_name), DISCONNECTED)
            self._client_gone(cid)

    def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def restarted(self) -> "SimDevice":
        """A fresh device with the same identity (after :meth:`kill` or :meth:`stop`)."""
        twin = SimDevice(self.broker, self.server_id, self.server_name, driver=self.driver,
                         description=self.description, qos=self.qos, keepalive=self.keepalive,
                         profile=self.profile, location=self.location)
        twin.temperature = self.temperature
        return twin

    def set_temperature(self, value: float) -> None:
        """Change the reading; subscribers get ``notifications/resources/updated``."""
        self.temperature = value
        self.server.resource_updated("sim://temperature")

    # -- MQTT -----------------------------------------------------------------------------------

    def _publish(self, topic: str, message: dict[str, Any] | bytes, retain: bool = False) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message, separators=(",", ":")).encode()
        if self.client.is_connected() and not self.killed:
            self.client.publish(topic, payload, qos=self.qos, retain=retain, properties=self._props)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        fut = self._connected
        if rc.is_failure:
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError(f"{self.server_id}: broker refused the connection: {rc}"))
            return
        client.subscribe([(self.control_topic, SubscribeOptions(qos=self.qos))])
        self._publish_presence()
        if fut is not None and not fut.done():
            fut.set_result(None)

    def online_message(self) -> dict[str, Any]:
        """The retained ``notifications/server/online`` (meta with ``catalogDigest``)."""
        return {"jsonrpc": "2.0", "method": "notifications/server/online",
                "params": {"server_name": self.server_name, "description": self.description, "meta": self.meta}}

    def _publish_presence(self) -> None:
        self.client.publish(self.presence_topic, json.dumps(self.online_message()).encode(), qos=1, retain=True,
                            properties=self._props)

    def catalog_changed(self) -> None:
        """Call after changing :attr:`server`'s registry: like the agent, the retained presence is
        re-published with the new ``catalogDigest`` and ``notifications/{tools,resources,prompts}/list_changed``
        go to the capability topic."""
        digest = catalog_digest(self.server)
        if digest != self.meta.get(CATALOG_DIGEST):
            self.meta[CATALOG_DIGEST] = digest
            if self.client.is_connected() and not self.killed:
                self._publish_presence()
        self.server.list_changed("tools", "resources", "prompts")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(list(codes))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = topics.parse(message.topic)
        if parsed is None:
            return
        payload = bytes(message.payload)
        if parsed.kind == "control" and parsed.server_id == self.server_id:
            sender = binding.valid_client_id(_user_properties(message.properties).get(binding.CLIENT_ID))
            if sender is not None:
                self._spawn(self._initialize(sender, payload))
        elif parsed.kind == "rpc" and parsed.server_id == self.server_id and parsed.client_id:
            session = self.server.sessions.get(parsed.client_id)
            if session is None:
                self._unknown_client(parsed.client_id, payload)
                return
            if payload and binding.client_gone(payload):
                self._client_gone(parsed.client_id)
                return
            self._spawn(self.server.handle(session, payload))
        elif parsed.kind == "client-presence" and parsed.client_id in self.server.sessions:
            if binding.client_gone(payload):
                self._client_gone(parsed.client_id)

    def _unknown_client(self, cid: str, payload: bytes) -> None:
        """Like the agent: a request without a session gets -32600 so the client re-initializes."""
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        refusal = binding.no_session(msg)
        if refusal is not None:
            self._publish(topics.rpc(cid, self.server_id, self.server_name), refusal)

    def _client_filters(self, cid: str) -> list[tuple[str, SubscribeOptions]]:
        return [(topic, SubscribeOptions(qos=self.qos, noLocal=no_local))
                for topic, no_local in topics.client_topics(cid, self.server_id, self.server_name)]

    async def _initialize(self, cid: str, payload: bytes) -> None:
        """Spec "Initialization": subscribe the client's topics, wait for the SUBACK, then answer."""
        rpc_topic = topics.rpc(cid, self.server_id, self.server_name)
        session = self.server.open_session(cid, lambda msg: self._publish(rpc_topic, msg))
        rc, mid = self.client.subscribe(self._client_filters(cid))
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            fut = self._subacks[mid] = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(fut, 10.0)
            except asyncio.TimeoutError:
                log.warning("%s: no SUBACK for client %s", self.server_id, cid)
                return
        await self.server.handle(session, payload)

    def _client_gone(self, cid: str) -> None:
        self.server.close_session(cid)
        if self.client.is_connected():
            self.client.unsubscribe([t for t, _ in self._client_filters(cid)])


async def start_fleet(broker_url: str, n: int, *, driver: LoopDriver, name_prefix: str = "devices/sim",
                      id_prefix: str = "sim", batch: int = 100) -> list[SimDevice]:
    """Start ``n`` devices ``{name_prefix}/dev-0000…`` (server-ids ``{id_prefix}-0000…``), ``batch`` at a time."""
    width = max(4, len(str(n - 1)))
    devices = [SimDevice(broker_url, f"{id_prefix}-{i:0{width}d}", f"{name_prefix}/dev-{i:0{width}d}", driver=driver)
               for i in range(n)]
    return await start_all(devices, batch=batch)


async def start_all(devices: list[SimDevice], *, batch: int = 100) -> list[SimDevice]:
    """Start ``devices``, ``batch`` at a time; returns them.

    Raises:
        ConnectionError: one could not connect (as :meth:`SimDevice.start`)."""
    for i in range(0, len(devices), batch):
        await asyncio.gather(*(d.start() for d in devices[i:i + batch]))
    return devices


def plant_presences(broker_url: str, n: int, *, name_prefix: str = "devices/sim", id_prefix: str = "sim",
                    digest: str | None = None, meta: dict[str, Any] | None = None,
                    timeout: float = 120.0) -> list[tuple[str, str]]:
    """Publish ``n`` retained ``notifications/server/online`` presences from one paho client
    (server-ids ``{id_prefix}-00000…``, names ``{name_prefix}/dev-00000…``), as :func:`start_fleet`'s
    devices would, with ``meta`` plus ``catalogDigest`` (default: a simulated device's). The
    cheap way to put 10,000 devices in a broker's retained store for discovery and listing tests:
    nobody answers on their control topics. Blocking; returns the (server-id, server-name) pairs.

    Raises:
        TimeoutError: the broker did not acknowledge them within ``timeout`` s.
    """
    import time

    url = parse_broker_url(broker_url)
    if digest is None:
        digest = catalog_digest(McpServer(sim_registry(SimDevice.__new__(SimDevice)),
                                          ServerInfo(name="edge-agent-sim", version=__version__)))
    width = max(5, len(str(n - 1)))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"planter-{id_prefix}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if url.username:
        client.username_pw_set(url.username, url.password)
    client.connect(url.host, url.port)
    client.loop_start()
    pairs = []
    try:
        deadline = time.monotonic() + timeout
        for start in range(0, n, 5000):  # in batches: paho keeps every unacknowledged message
            infos = []
            for i in range(start, min(n, start + 5000)):
                sid, name = f"{id_prefix}-{i:0{width}d}", f"{name_prefix}/dev-{i:0{width}d}"
                online = {"jsonrpc": "2.0", "method": "notifications/server/online",
                          "params": {"server_name": name, "description": "Planted presence",
                                     "meta": {"implementation": "edge-agent-sim", **(meta or {}),
                                              CATALOG_DIGEST: digest}}}
                infos.append(client.publish(topics.server_presence(sid, name), json.dumps(online).encode(), qos=1,
                                            retain=True))
                pairs.append((sid, name))
            for info in infos:
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise TimeoutError(f"paho refused a presence: {mqtt.error_string(info.rc)}")
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                if not info.is_published():
                    raise TimeoutError(f"the broker did not acknowledge {n} presences within {timeout} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return pairs
