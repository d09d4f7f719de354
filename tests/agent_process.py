"""Run the real agent as a child process (``python -m edge_agent run``) for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.mqtt.broker_url import parse_broker_url


class RawSubscriber:
    """A plain paho MQTT 5 client recording every message on ``filters`` (no MCP code)."""

    def __init__(self, broker_url: str, filters: list[str], client_id: str | None = None):
        url = parse_broker_url(broker_url)
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"raw-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(url.host, url.port)
        self.client.loop_start()
        self.client.subscribe([(f, SubscribeOptions(qos=1)) for f in filters])
        assert subscribed.wait(5), "no SUBACK"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append(message)

    def wait_for(self, predicate, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for m in self.messages:
                    if predicate(m):
                        return m
            time.sleep(0.02)
        raise AssertionError(f"no matching message within {timeout} s; got {[(m.topic, m.payload[:80]) for m in self.messages]}")

    def close(self) -> None:
        self.client.disconnect()  # first: it wakes paho's network thread, which loop_stop() joins at once
        self.client.loop_stop()


def write_config(path: Path, *, server_name: str, server_id: str, drivers: str, page_size: int = 50,
                 state_dir: Path | None = None) -> Path:
    path.write_text(f"""
[device]
server_name = "{server_name}"
server_id = "{server_id}"
description = "Test bench device"
location = "lab bench 1"
simulate = true
state_dir = "{state_dir or path.parent / 'state'}"
page_size = {page_size}

[broker]
urls = ["mqtt://127.0.0.1:1"]
keepalive = 10
{drivers}
""")
    return path


class AgentProcess:
    """``python -m edge_agent run --config FILE --broker URL`` with its presence awaited."""

    def __init__(self, config: Path, broker_url: str, server_id: str, server_name: str):
        self.config, self.broker_url = config, broker_url
        self.server_id, self.server_name = server_id, server_name
        self.presence_topic = f"$mcp-server/presence/{server_id}/{server_name}"
        self.proc: subprocess.Popen | None = None
        self.log_path = config.parent / f"agent-{server_id}.log"

    def start(self, timeout: float = 20.0) -> "AgentProcess":
        watcher = RawSubscriber(self.broker_url, [self.presence_topic])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(self.config),
                                      "--broker", self.broker_url, "--log-level", "info"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"), env=env)
        try:
            watcher.wait_for(lambda m: m.payload and json.loads(m.payload)["method"] == "notifications/server/online",
                             timeout)
        except AssertionError:
            raise AssertionError(f"agent did not come online; log:\n{self.log()}") from None
        finally:
            watcher.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
