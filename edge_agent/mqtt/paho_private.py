"""Every use of paho-mqtt's private attributes, in one place.

paho-mqtt (2.x) offers no public way to ask two things the adapter (:mod:`edge_agent.mqtt.loop`)
needs:

- when the unanswered PINGREQ was sent (``Client._ping_t``: the value of paho's clock at the
  PINGREQ, ``0`` while none is outstanding; reset to ``0`` by the PINGRESP and on reconnect),
  for the half-open check at 1.5x keepalive;
- whether paho is inside one of our callbacks right now (``Client._in_callback_mutex``, a
  ``threading.Lock`` held while paho calls ``on_message``, ``on_connect``, ...): a write from
  inside a callback must be left to the event loop, a write from outside may go out at once;
- how many packets paho holds that are not written to the socket yet (``Client._out_packet``,
  a deque), for the adapter's read backpressure;
- how to read a bounded number of packets: ``loop_read`` reads as many as paho has messages
  queued in and out (thousands under a flood, all in one event-loop callback, while every other
  socket and task waits); :func:`read_packets` reads at most ``limit`` with the same
  ``_packet_read``/``_loop_rc_handle`` steps ``loop_read`` takes;
- which class its packet decoders build properties with (``paho.mqtt._packet.Properties``), so
  the adapter can give them its own (:class:`edge_agent.mqtt.loop.DecodedProperties`): cheaper,
  and for a PUBLISH it marks what paho would refuse (U+FEFF, NUL, invalid UTF-8) instead of
  raising, which would make paho close the connection (``tests/test_poison.py`` fails if paho
  stops refusing, or if the adapter stops dropping such a message).

``tests/test_mqtt_adapter.py`` checks both against a real broker and fails if a paho upgrade
moves, renames or changes the meaning of either. Nothing else in ``edge_agent`` may touch an
underscore attribute of a paho object.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt

__all__ = ["clock", "in_callback", "ping_sent_at", "read_packets", "unwritten_packets", "use_properties_class"]

clock = mqtt.time_func
"""paho's clock (``time.monotonic``), the one :func:`ping_sent_at` is measured on; seconds."""


def ping_sent_at(client: mqtt.Client) -> float:
    """When the outstanding PINGREQ was sent, on :data:`clock` (seconds), or 0.0 when none is
    outstanding (no PINGREQ yet, or its PINGRESP arrived)."""
    return float(getattr(client, "_ping_t", 0.0) or 0.0)


def in_callback(client: mqtt.Client) -> bool:
    """True while paho is calling one of the client's callbacks (then paho must not be asked to
    write: ``loop_write`` would take the same lock). Conservatively True if the lock is gone."""
    lock = getattr(client, "_in_callback_mutex", None)
    return lock is None or lock.locked()


def unwritten_packets(client: mqtt.Client) -> int:
    """Packets paho has queued for the socket and not written yet (0 if paho has no such queue)."""
    queue = getattr(client, "_out_packet", None)
    return len(queue) if queue is not None else 0


def read_packets(client: mqtt.Client, limit: int) -> mqtt.MQTTErrorCode:
    """``client.loop_read()``, but reading at most ``limit`` packets (>= 1); what is left stays
    in the socket, whose readiness brings the caller back. Falls back to ``loop_read`` (no
    bound) if paho lacks the steps."""
    step, handle = getattr(client, "_packet_read", None), getattr(client, "_loop_rc_handle", None)
    if step is None or handle is None or not hasattr(client, "_sock"):
        return client.loop_read()
    for _ in range(max(1, limit)):
        if client._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
        rc = step()
        if rc > 0:
            return handle(rc)
        if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
            break
    return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


def use_properties_class(cls: type) -> bool:
    """Make paho build the properties of every packet it decodes with ``cls``, a subclass of
    ``paho.mqtt.properties.Properties`` (``paho.mqtt._packet.Properties``, the name its packet
    decoders look up; process-wide). False, and nothing changed, if paho has no such name."""
    from paho.mqtt.properties import Properties

    try:
        from paho.mqtt import _packet
    except ImportError:
        return False
    current = getattr(_packet, "Properties", None)
    if not (isinstance(current, type) and issubclass(current, Properties) and issubclass(cls, Properties)):
        return False
    setattr(_packet, "Properties", cls)  # noqa: B010 - a module global paho reads at call time
    return True
