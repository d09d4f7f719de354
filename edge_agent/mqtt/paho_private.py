"""Every use of paho-mqtt's private attributes, in one place.

paho-mqtt (2.x) offers no public way to ask two things the adapter (:mod:`edge_agent.mqtt.loop`)
needs:

- when the unanswered PINGREQ was sent (``Client._ping_t``: the value of paho's clock at the
  PINGREQ, ``0`` while none is outstanding; reset to ``0`` by the PINGRESP and on reconnect),
  for the half-open check at 1.5x keepalive;
- whether paho is inside one of our callbacks right now (``Client._in_callback_mutex``, a
  ``threading.Lock`` held while paho calls ``on_message``, ``on_connect``, ...): a write from
  inside a callback must be left to the event loop, a write from outside may go out at once.

``tests/test_mqtt_adapter.py`` checks both against a real broker and fails if a paho upgrade
moves, renames or changes the meaning of either. Nothing else in ``edge_agent`` may touch an
underscore attribute of a paho object.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt

__all__ = ["clock", "in_callback", "ping_sent_at"]

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
