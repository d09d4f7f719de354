"""Blocking work stays off the event loop (docs/architecture.md, "Concurrency"): driver
construction and close run in worker threads, the state store writes from its own thread, and
a device that needs no full JSON Schema never imports ``jsonschema``.

The loop checks use asyncio's debug mode: every callback or task step that holds the loop
longer than ``slow_callback_duration`` is logged by the ``asyncio`` logger ("Executing ...
took N seconds"); a driver that sleeps in its constructor and in ``close()`` must not appear
there, and a ``ping`` must be answered while such a driver is being (re)started."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import subprocess
import sys
import threading
import time

import anyio
import pytest

from edge_agent import drivers
from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device import runtime
from edge_agent.device.runtime import Agent
from edge_agent.device.store import Store
from edge_agent.drivers.base import Driver, SensorSpec, ToolSpec, no_arguments

SLOW_S = 0.6  # what the slow driver sleeps in its constructor and in close()
LOOP_LIMIT_S = 0.25  # a loop step longer than this is logged by asyncio's debug mode


@pytest.fixture
def anyio_backend():
    return "asyncio"


class SlowDriver(Driver):
    """Opening and closing its 'hardware' takes SLOW_S (think: a serial handshake). With
    ``fail_first``, its first start raises (the agent retries it while serving)."""

    kind = "test_slow_start"
    options_schema = {"type": "object", "properties": {"fail_first": {"type": "boolean"}},
                      "additionalProperties": False}
    starts = 0
    constructing = threading.Event()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cls = type(self)
        cls.starts += 1
        if self.options.get("fail_first") and cls.starts == 1:
            raise OSError("board not answering yet")
        cls.constructing.set()
        time.sleep(SLOW_S)

    def tools(self):
        return [ToolSpec("poke", "Do nothing", no_arguments(), lambda: {"ok": True})]

    def sensors(self):
        return [SensorSpec("value", "A constant", lambda: 1.0, unit="")]

    def close(self):
        time.sleep(SLOW_S)


@pytest.fixture
def slow_kind():
    SlowDriver.starts = 0
    SlowDriver.constructing = threading.Event()
    drivers.DRIVER_KINDS[SlowDriver.kind] = f"{__name__}:SlowDriver"
    yield
    drivers.DRIVER_KINDS.pop(SlowDriver.kind, None)


def _config(tmp_path, server_id: str, **options):
    return cfg.from_dict({
        "device": {"server_name": f"devices/test/{server_id}", "server_id": server_id, "simulate": True,
                   "state_dir": str(tmp_path / "state")},
        "drivers": [{"kind": SlowDriver.kind, "name": "slow", **options}, {"kind": "led", "name": "led", "pin": 17}],
    })


def _slow_steps(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.name == "asyncio" and " took " in r.getMessage()]


@pytest.mark.anyio
async def test_driver_construction_and_close_do_not_block_the_loop(broker, tmp_path, slow_kind, caplog):
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = LOOP_LIMIT_S
    caplog.set_level(logging.WARNING, logger="asyncio")
    await asyncio.sleep(0)  # debug mode times the loop's steps from the next one on
    try:
        agent = Agent(_config(tmp_path, "slow-1"), broker_url=broker.url)
        await agent.start(connect_timeout=10)
        try:
            async with connect(broker.url, "devices/test/slow-1") as session:
                result = await session.call_tool("slow_poke", {})
                assert not result.is_error
                health = json.loads((await session.read_resource("device://health")).contents[0].text)
                assert health["drivers"]["slow"]["status"] == "ok"
        finally:
            await agent.stop()
    finally:
        loop.set_debug(False)
    assert SlowDriver.starts == 1
    assert _slow_steps(caplog.records) == []


@pytest.mark.anyio
async def test_ping_is_answered_while_a_driver_is_being_restarted(broker, tmp_path, slow_kind, monkeypatch):
    monkeypatch.setattr(runtime, "DRIVER_RETRY_S", 0.2)
    agent = Agent(_config(tmp_path, "slow-2", fail_first=True), broker_url=broker.url)
    await agent.start(connect_timeout=10)
    try:
        assert agent.drivers["slow"].status == "failed"
        async with connect(broker.url, "devices/test/slow-2") as session:
            await session.send_ping()
            # the retry is now inside the driver's constructor, sleeping SLOW_S
            assert await anyio.to_thread.run_sync(SlowDriver.constructing.wait, 10)
            t0 = time.monotonic()
            await session.send_ping()
            took = time.monotonic() - t0
            assert took < SLOW_S / 2, f"ping took {took:.3f} s while a driver was starting: the loop was blocked"
            assert agent.drivers["slow"].status != "ok"  # the constructor had not finished yet
    finally:
        await agent.stop()


# ---------------------------------------------------------------------------------------------
# the state store's writer thread
# ---------------------------------------------------------------------------------------------

def test_store_writes_do_not_wait_for_a_locked_file(tmp_path):
    path = str(tmp_path / "s.sqlite3")
    store = Store(path)
    first = store.outbox_add("a/b", b"1", qos=1, retain=False, kind="telemetry")
    assert store.flush(5)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock (a backup, a sync...)
    try:
        t0 = time.monotonic()
        ids = [store.outbox_add("a/b", b"%d" % i, qos=1, retain=False, kind="telemetry") for i in range(100)]
        store.session_put("c1", {"state": "ready"})
        store.count("expired")
        took = time.monotonic() - t0
        assert took < 0.1, f"writes waited {took:.3f} s for the locked file"
        assert not store.flush(0.3)  # the writer is waiting for the lock
    finally:
        other.execute("COMMIT")
        other.close()
    assert store.flush(10)
    assert ids == list(range(first + 1, first + 101))
    assert [r.id for r in store.outbox_rows()] == [first, *ids]  # all of them, in order
    assert dict(store.sessions())["c1"] == {"state": "ready"} and store.counters() == {"expired": 1}
    store.close()


def test_store_acked_rows_skip_the_file_but_ids_are_never_reused(tmp_path):
    path = str(tmp_path / "s.sqlite3")
    store = Store(path)
    ids = []
    for i in range(50):  # added and acknowledged before the writer gets to them (mostly)
        ids.append(store.outbox_add("t", b"x", qos=1, retain=False, kind="response"))
        store.outbox_delete(ids[-1])
    kept = store.outbox_add("t", b"kept", qos=1, retain=False, kind="notification")
    store.close()
    store = Store(path)
    assert [(r.id, r.payload) for r in store.outbox_rows()] == [(kept, b"kept")]
    store.outbox_delete(kept)
    store.close()
    store = Store(path)  # the outbox is empty now: the next id still follows every id used
    assert store.outbox_add("t", b"y", qos=1, retain=False, kind="telemetry") == kept + 1
    assert sorted(set(ids)) == ids and ids[-1] < kept
    store.close()


def test_store_after_write_runs_once_the_row_is_on_disk(tmp_path):
    path = str(tmp_path / "s.sqlite3")
    store = Store(path)
    store.count("warm-up")  # creates the file
    assert store.flush(5)
    other = sqlite3.connect(path, isolation_level=None)
    seen: list[list[int]] = []
    done = threading.Event()

    def on_disk():  # what a reader of the file sees when the callback runs
        with sqlite3.connect(path) as reader:
            seen.append([r[0] for r in reader.execute("SELECT id FROM outbox")])
        done.set()

    other.execute("BEGIN IMMEDIATE")
    try:
        # a pinned row (an answer that goes out only once on disk); plain outbox rows are left to
        # the group commit and after_write does not wait for them (edge_agent/device/store.py)
        row = store.outbox_add("a/b", b"x", qos=1, retain=False, kind="response", pinned=True)
        store.after_write(on_disk)
        assert not done.wait(0.3)  # not before the row is committed
    finally:
        other.execute("COMMIT")
        other.close()
    assert done.wait(10) and seen == [[row]]
    store.close()
    called: list[int] = []
    Store(":memory:", write_behind=False).after_write(lambda: called.append(1))  # write-through: at once
    assert called == [1]


def test_store_never_written_creates_no_file(tmp_path):
    path = tmp_path / "state" / "s.sqlite3"
    store = Store(str(path))
    assert store.outbox_stats() == (0, 0) and store.outbox_rows() == [] and list(store.sessions()) == []
    store.close()
    assert not path.exists()


# ---------------------------------------------------------------------------------------------
# lazy jsonschema
# ---------------------------------------------------------------------------------------------

def test_a_valid_config_does_not_import_jsonschema(tmp_path):
    code = ("import sys\n"
            "from edge_agent.demo import demo_config\n"
            "from edge_agent.device.runtime import Agent\n"
            "config = demo_config()\n"
            "Agent(config)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jsonschema', 'cbor2', 'sqlite3')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _mutations(value, rng: random.Random, depth: int = 0):
    """Some values near ``value``: wrong types, out-of-range numbers, unknown keys, NaN."""
    odd = [None, True, 0, -1, 1.5, float("nan"), float("inf"), "", "x" * 1001, [], {}, [1], {"zz": 1}, 70000, 3]
    yield rng.choice(odd)
    if isinstance(value, dict):
        for k in list(value)[:6]:
            for m in _mutations(value[k], rng, depth + 1):
                yield {**value, k: m}
            yield {kk: vv for kk, vv in value.items() if kk != k}
        yield {**value, "unknown_key": 1}
    elif isinstance(value, list) and value:
        for m in _mutations(value[0], rng, depth + 1):
            yield [m, *value[1:]]


def test_surely_valid_never_passes_what_jsonschema_refuses():
    from jsonschema import Draft202012Validator

    from edge_agent.drivers import driver_class

    rng = random.Random(11)
    base = {"device": {"server_name": "a/b", "server_id": "x", "history_size": 5, "description": "d"},
            "broker": {"urls": ["mqtt://h:1883"], "keepalive": 30, "qos": 1, "password_credential": "a.b"},
            "link": {"profile": "lan", "reconnect_min": 0.5, "qos_rpc": 1},
            "store": {"synchronous": "FULL"},
            "rbac": {"roles": [{"name": "op", "allowed_tools": "all"}, {"name": "v", "allowed_tools": ["a"]}],
                     "rules": [{"client_id": "c", "role": "op"}]},
            "drivers": [{"kind": "led"}]}
    cases = [(cfg._SCHEMA, base)]
    for kind, options in (("led", {"pin": 17}), ("servo", {"pin": 12, "min_angle": -90}),
                          ("ads1115", {"channels": [{"channel": 0, "name": "soil"}]}), ("bme280", {"address": 0x76})):
        try:
            cases.append((driver_class(kind).options_schema, options))
        except ImportError:
            pass
    checked = passed = 0
    for schema, good in cases:
        assert cfg.surely_valid(schema, good), good
        for value in _mutations(good, rng):
            errors = list(Draft202012Validator(schema).iter_errors(value))
            checked += 1
            if cfg.surely_valid(schema, value):
                passed += 1
                assert errors == [], (value, [e.message for e in errors])
    assert checked > 50 and passed > 10  # it did say yes to some, and was right each time
