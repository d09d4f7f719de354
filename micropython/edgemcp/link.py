# MCP over MQTT for the board: the server core on the MQTT 5 client, with the topics and the
# lifecycle of mqtt-ai/mcp-over-mqtt (specification/2025-03-26/basic/mqtt_transport.md), as
# the Pi agent does them (edge_agent/device/endpoint.py, edge_agent/mqtt/server.py).
import asyncio

from . import mcp, unload
from .core import topics
from .mqtt import MQTTClient


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
        from .core import binding as b
        pub = [(b.COMPONENT_TYPE, "mcp-server"), (b.CLIENT_ID, server_id)]
        self.c = MQTTClient(server_id, host, port, publish_user=pub, log=server.log,
                            user=[(b.COMPONENT_TYPE, "mcp-server"), (b.META, mcp.dumps(self.meta))],
                            will_topic=self.presence, will_payload=b"", will_retain=True, will_qos=1,
                            will_user=pub, **client)
        self.c.on_up = self._on_up
        unload("core.binding")  # (connect.py and session.py import it again)

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

    def send(self, cid, msg):
        # not waiting for the PUBACK (mqtt.MQTTClient.publish keeps the message until then), and
        # not a coroutine itself: the caller awaits the publish, one frame less per answer
        return self.c.publish(self.rpc(cid), mcp.encode(msg), wait=False)

    def broadcast(self, msg):
        return self.c.publish(self.capability, mcp.encode(msg), wait=False)

    async def run(self):
        """Connect and serve until :meth:`stop`."""
        asyncio.create_task(self.c.run())
        while True:
            topic, payload, props = await self.c.get()
            try:
                await self._route(topic, payload, props)
            except Exception as e:  # one bad message never stops the board
                self.server.log("dropped a message on %s: %r" % (topic, e))
            topic = payload = props = None  # (not kept alive while the next one is awaited)
            await asyncio.sleep_ms(0)  # the request's task runs before the next message is taken

    async def _route(self, topic, payload, props):
        if topic == self.control:
            return await self._rare("control", props, payload)
        t = topics.parse(topic)  # by prefix, not by our subscriptions (interop checklist)
        if t is None:
            return
        if t.kind == "rpc":
            if t.server_id != self.sid or t.server_name != self.name:
                return
            cid = t.client_id
            s = self.server.sessions.get(cid)
            if s and s.t is self and payload and b"/disconnected" not in payload:
                await self.server.handle(s, payload)  # a request of its session: the hot path
            else:  # its end, or a client without a session: edgemcp/session.py
                await self._rare("rpc", cid, payload)
        elif t.kind == "client-presence":
            await self._rare("presence", t.client_id, payload)

    async def _rare(self, step, *args):
        # the session rules (edgemcp/session.py; edgemcp/initialize.py for an initialize) with
        # the core's binding rules: imported for this message, unloaded again
        name = "initialize" if step == "control" else "session"
        mod = __import__("edgemcp." + name, None, None, (name,))
        try:
            await getattr(mod, step)(self, *args)
        finally:
            unload(name, "session", "core.binding")  # (an initialize may have needed session.refuse)

    async def gone(self, cid, notify=False):
        """Client ``cid`` left (or, with ``notify``, is dropped): forget its session and
        unsubscribe its topics."""
        await self._rare("gone", cid, notify)

    async def stop(self):
        """Clean stop: tell every client, clear the retained presence, DISCONNECT."""
        await self._rare("stop")
