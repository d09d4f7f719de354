"""Presence on a broker the server left (issue 12 item 6, the device side).

The retained ``notifications/server/online`` presence is cleared by the server's will when its
connection dies, but not when the broker itself crashed (no will fires; with persistence the
broker comes back with the online presence) and not when the server failed over to another
broker while the first one never noticed the loss. A client of that broker then sees a server
online that will not answer. So after a failover the transport clears its presence on the
broker it left, when it can: :func:`clear_presence` connects there under a client id of its
own (``{server-id}-presence``: the server's persistent session there is left alone), publishes
the empty retained presence (the spec's "Service Unregistration"), and disconnects; the
transport retries every ``retry`` seconds until it succeeds, gives up after ``give_up``
seconds, or stops when the server connects to that broker again (its fresh presence replaces
the stale one anyway).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.mqtt.broker_url import BrokerURL
from edge_agent.mqtt.loop import LoopDriver

log = logging.getLogger(__name__)


async def clear_presence(driver: LoopDriver, url: BrokerURL, topic: str, client_id: str, *,
                         username: str | None = None, password: str | None = None, tls: Any = None,
                         timeout: float = 5.0) -> bool:
    """Publish an empty retained message on ``topic`` at ``url`` (QoS 1) and disconnect. True
    once the broker acknowledged it; False if it could not be reached, refused, or did not
    answer within ``timeout`` seconds (never raises for that)."""
    loop = driver.loop
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected: asyncio.Future[Any] = loop.create_future()
    acked: asyncio.Future[Any] = loop.create_future()
    def settle(fut: asyncio.Future[Any], reason: Any) -> None:
        if not fut.done():
            fut.set_result(reason)

    c.on_connect = lambda client, userdata, flags, reason, props: settle(connected, reason)
    c.on_publish = lambda client, userdata, mid, reason, props: settle(acked, reason)
    user = username or url.username
    if user:
        c.username_pw_set(user, password or url.password)
    if url.tls:
        import ssl

        c.tls_set(ca_certs=getattr(tls, "ca_file", None), certfile=getattr(tls, "cert_file", None),
                  keyfile=getattr(tls, "key_file", None),
                  cert_reqs=ssl.CERT_NONE if getattr(tls, "insecure", False) else ssl.CERT_REQUIRED)
        if getattr(tls, "insecure", False):
            c.tls_insecure_set(True)
    c.connect_timeout = timeout
    driver.attach(c)
    try:
        async with asyncio.timeout(timeout):
            await driver.connect(c, url.host, url.port, keepalive=max(5, int(timeout) * 2), clean_start=True)
            reason = await connected
            if getattr(reason, "is_failure", False):
                return False
            info = driver.publish(c, topic, b"", qos=1, retain=True)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
            reason = await acked
            ok = not getattr(reason, "is_failure", False)
            c.disconnect()
            driver.flush(c)
            return ok
    except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
        log.debug("could not clear the presence on %s: %s", url, exc)
        return False
    finally:
        driver.detach(c)
        sock = c.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
