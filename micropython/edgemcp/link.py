# MCP over MQTT for the board: the server core on the MQTT 5 client, with the topics and the
# lifecycle of mqtt-ai/mcp-over-mqtt (specification/2025-03-26/basic/mqtt_transport.md), as
# the Pi agent does them (edge_agent/device/endpoint.py, edge_agent/mqtt/server.py).
import asyncio

from . import mcp
from .core import binding, jsonrpc, topics
from .mqtt import MQTTClient
from .mqtt5 import USER_PROPERTY, prop

_TYPE = binding.COMPONENT_TYPE
_CID = binding.CLIENT_ID
_GONE = binding.DISCONNECTED_METHOD


class MqttLink:
    """Serves ``server`` (an ``mcp.Server``) as ``server_name`` / ``server_id``.

    CONNECT carries ``MCP-COMPONENT-TYPE`` and ``MCP-META`` and the will: an empty retained
    payload on the presence topic. After every (re)connect: subscribe the control topic, the
    RPC topics of every client at once (``$mcp-rpc/+/{server-id}/{server-name}``: one
    subscription instead of one per client, and a client without a session is heard, e.g. its
    ``server/discover``) and every known client's presence and capability topics again, then
    publish the retained ``notifications/server/online``. ``client``: keyword arguments of
    ``mqtt.MQTTClient`` (``opener``, ``network``, ``username``, ``password``, ``keepalive``,
    ``qos``, ``queue_len``, ``max_packet``, ``clean``, ``expiry``: a persistent session).
    """

    def __init__(self, server, server_id, server_name, host, port=1883, description="", meta=None, **client):
        self.server = server
        self.sid = server_id
        self.description = description
        self.meta = meta or {}
        self.clients = set()
        self._name(server_name)
        pub = [(_TYPE, "mcp-server"), (_CID, server_id)]
        self.c = MQTTClient(server_id, host, port, publish_user=pub, log=server.log,
                            user=[(_TYPE, "mcp-server"), (binding.META, mcp.dumps(self.meta))],
                            will_topic=self.presence, will_payload=b"", will_retain=True, will_qos=1,
                            will_user=pub, **client)
        self.c.on_up = self._on_up

    def _name(self, name):
        self.name = name
        self.control = topics.server_control(self.sid, name)
        self.capability = topics.server_capability(self.sid, name)
        self.presence = topics.server_presence(self.sid, name)

    def rpc(self, cid):
        return topics.rpc(cid, self.sid, self.name)

    def _topics(self, cid):
        # the client's presence and capability topics; its RPC topic is in the wildcard
        return [t for t in topics.client_topics(cid, self.sid, self.name) if not t[0].startswith("$mcp-rpc/")]

    async def _on_up(self):
        from . import connect  # once per connection: unloaded again (edgemcp/connect.py)
        try:
            await connect.online(self)
        finally:
            connect.done()

    async def send(self, cid, msg):
        await self.c.publish(self.rpc(cid), mcp.encode(msg))

    async def broadcast(self, msg):
        await self.c.publish(self.capability, mcp.encode(msg))

    async def run(self):
        """Connect and serve until :meth:`stop`."""
        asyncio.create_task(self.c.run())
        while True:
            topic, payload, props = await self.c.get()
            try:
                await self._route(topic, payload, props)
            except Exception as e:  # one bad message never stops the board
                self.server.log("dropped a message on %s: %r" % (topic, e))

    async def _route(self, topic, payload, props):
        if topic == self.control:
            return await self._control(prop(props, USER_PROPERTY, _CID), payload)
        t = topics.parse(topic)  # by prefix, not by our subscriptions (interop checklist)
        if t is None:
            return
        if t.kind == "rpc":
            if t.server_id != self.sid or t.server_name != self.name:
                return
            cid = t.client_id
            s = self.server.sessions.get(cid)
            if payload and _GONE.encode() in payload and binding.client_gone(payload):
                await self.gone(cid)
            elif s and s.t is self:
                await self.server.handle(s, payload)
            else:  # a client without a session (the board restarted): tell it to initialize
                await self._refuse(cid, payload, binding.no_session)
        elif t.kind == "client-presence" and binding.client_gone(payload):
            await self.gone(t.client_id)

    async def _control(self, cid, payload):
        # without a valid client id (none, empty, a wildcard, a "/") there is no topic to answer
        # on, and subscribing its topics would hear other clients (or make the broker drop us)
        if binding.valid_client_id(cid) is None:
            return self.server.log("initialize with a bad " + _CID + " dropped: " + mcp.dumps(cid))
        try:
            msg = jsonrpc.loads(payload)
        except Exception:
            msg = None
        if not binding.opens_session(msg):
            return await self._refuse(cid, msg if msg is not None else payload, binding.control_refusal)
        auth = getattr(self.server, "auth", None)  # edgemcp.tokens (config "auth"): a valid token or no session
        s = await auth.open(self, cid, msg) if auth else self.server.open_session(cid, self)
        if not s:
            return
        self.clients.add(cid)
        codes = await self.c.subscribe(self._topics(cid))  # BEFORE the answer (spec)
        if codes is None or max(codes) >= 0x80:
            self.server.log("cannot subscribe the topics of " + cid)
            return await self.gone(cid)
        await self.server.handle(s, msg)

    async def _refuse(self, cid, payload, refusal):
        """Answer ``payload`` with ``refusal(msg)`` (a core binding rule), -32700 if not JSON."""
        try:
            msg = jsonrpc.loads(payload) if not isinstance(payload, dict) else payload
        except jsonrpc.RpcError as e:
            return await self.send(cid, jsonrpc.error(None, e))
        answer = binding.legacy_discover(msg, mcp.VERSIONS) or refusal(msg)
        if answer:
            await self.send(cid, answer)

    async def gone(self, cid, notify=False):
        """Client ``cid`` left (or, with ``notify``, is dropped): forget its session and
        unsubscribe its topics."""
        self.server.close_session(cid)
        if cid in self.clients:
            self.clients.discard(cid)
            if notify:
                await self.send(cid, binding.DISCONNECTED)
            await self.c.unsubscribe([t for t, _ in self._topics(cid)])

    async def stop(self):
        """Clean stop: tell every client, clear the retained presence, DISCONNECT."""
        if self.c.up:
            for cid in list(self.clients):
                await self.send(cid, binding.DISCONNECTED)
            await self.c.publish(self.presence, b"", True, 1)
        for cid in self.clients:
            self.server.close_session(cid)
        self.clients = set()
        await self.c.disconnect()
