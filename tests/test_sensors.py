"""edge_agent.device.sensors.SensorChannel on a test clock: min_interval, poll interval, one
shared hardware read for concurrent readers, deadband, bounded history, errors leave the last
reading in place (the runtime serves it marked stale)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from edge_agent.device.sensors import Reading, SensorChannel, exceeds_deadband, iso


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Hardware:
    """Returns the queued values in turn (an exception instance is raised); counts reads.
    With ``gate`` set, each read waits for it (to hold a read in flight)."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)
        self.reads = 0
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def read(self) -> Any:
        self.reads += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        value = self.values.pop(0)
        if isinstance(value, BaseException):
            raise value
        return value


def channel(hw: Hardware, clock: Clock, *, min_interval: float = 1.0, poll_interval: float | None = None,
            deadband: float = 0.0, history_size: int = 10) -> SensorChannel:
    return SensorChannel(driver="soil", name="temperature", unit="°C", description="Soil temperature",
                         read_hw=hw.read, min_interval=min_interval, poll_interval=poll_interval,
                         deadband=deadband, history_size=history_size, clock=clock)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_min_interval_serves_the_cached_reading():
    async def go():
        clock, hw = Clock(), Hardware(20.0, 21.0, 22.0)
        ch = channel(hw, clock, min_interval=2.0)
        first, updated = await ch.get(fresh=True)
        assert (first.value, first.unit, first.ts, updated) == (20.0, "°C", clock.now, True)
        clock.now += 1.999
        again, updated = await ch.get(fresh=True)  # fresh cannot beat the hardware's limit
        assert again is first and updated is False and hw.reads == 1
        clock.now += 0.001
        second, updated = await ch.get(fresh=True)
        assert second.value == 21.0 and updated is True and hw.reads == 2 and ch.reads == 2
        assert ch.last is second
    run(go())


def test_poll_interval_caches_unless_fresh():
    async def go():
        clock, hw = Clock(), Hardware(1, 2, 3)
        ch = channel(hw, clock, min_interval=0.5, poll_interval=10.0)
        await ch.get()
        clock.now += 5
        assert (await ch.get())[0].value == 1 and hw.reads == 1  # younger than the poll interval
        assert (await ch.get(fresh=True))[0].value == 2 and hw.reads == 2  # older than min_interval
        clock.now += 10
        assert (await ch.get())[0].value == 3
    run(go())


def test_zero_min_interval_reads_every_time():
    async def go():
        clock, hw = Clock(), Hardware(1, 1, 1)
        ch = channel(hw, clock, min_interval=-3.0)  # clamped to 0
        assert ch.min_interval == 0.0
        for _ in range(3):
            await ch.get()
        assert hw.reads == 3
    run(go())


def test_concurrent_readers_share_one_hardware_read():
    async def go():
        clock, hw = Clock(), Hardware(7.5, 8.5)
        hw.gate = asyncio.Event()
        ch = channel(hw, clock)
        readers = [asyncio.create_task(ch.get(fresh=True)) for _ in range(5)]
        await hw.started.wait()
        hw.gate.set()
        results = await asyncio.gather(*readers)
        assert hw.reads == 1 and ch.reads == 1
        assert {id(r) for r, _ in results} == {id(results[0][0])} and results[0][0].value == 7.5
        assert all(updated for _, updated in results)  # each sees the read that was an update
    run(go())


def test_a_cancelled_reader_does_not_cancel_the_shared_read():
    async def go():
        clock, hw = Clock(), Hardware(3.0)
        hw.gate = asyncio.Event()
        ch = channel(hw, clock)
        impatient = asyncio.create_task(ch.get())
        patient = asyncio.create_task(ch.get())
        await hw.started.wait()
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        hw.gate.set()
        reading, _ = await patient
        assert reading.value == 3.0 and hw.reads == 1 and ch.last is reading
    run(go())


def test_deadband_compares_with_the_last_update_not_the_last_reading():
    async def go():
        clock, hw = Clock(), Hardware(20.0, 20.06, 20.12, 20.1, 19.95)
        ch = channel(hw, clock, min_interval=0, deadband=0.1)
        seen = []
        for _ in range(5):
            reading, updated = await ch.get()
            seen.append((reading.value, updated))
        # 20.12 is 0.12 from the reported 20.0 (a slow drift is reported); 20.1 is within 0.1 of
        # the new reported 20.12, 19.95 is not
        assert seen == [(20.0, True), (20.06, False), (20.12, True), (20.1, False), (19.95, True)]
        assert ch.reported is not None and ch.reported.value == 19.95
        assert ch.last is not None and ch.last.value == 19.95
        assert [r.value for r in ch.history] == [20.0, 20.12, 19.95]  # updates only
    run(go())


def test_a_sensor_back_from_nan_is_reported():
    async def go():
        clock, hw = Clock(), Hardware(20.0, math.nan, math.nan, 20.0, 20.2)
        ch = channel(hw, clock, min_interval=0, deadband=0.5)
        updates = [(await ch.get())[1] for _ in range(5)]
        # before the fix, every reading after a NaN compared as "no change" for ever
        assert updates == [True, True, False, True, False]
    run(go())


def test_exceeds_deadband_rules():
    assert exceeds_deadband(None, 1.0, 5.0)  # the first reading is always an update
    assert not exceeds_deadband(1.0, 1.0, 0.0) and exceeds_deadband(1.0, 1.0000001, 0.0)
    assert exceeds_deadband(1.0, 1.5, 0.5) and not exceeds_deadband(1.0, 1.4999, 0.5)  # >= deadband
    assert exceeds_deadband(1.0, 0.5, 0.5)  # either direction
    assert exceeds_deadband(True, False, 10.0) and not exceeds_deadband(True, True, 0.0)
    assert exceeds_deadband(0, True, 5.0)  # a bool is not a number with a deadband
    assert exceeds_deadband(1.0, math.nan, 5.0) and not exceeds_deadband(math.nan, math.nan, 5.0)
    assert exceeds_deadband(math.nan, 1.0, 5.0)
    assert not exceeds_deadband({"t": 20.0, "h": 50}, {"t": 20.05, "h": 50.5}, 1.0)
    assert exceeds_deadband({"t": 20.0, "h": 50}, {"t": 21.5, "h": 50}, 1.0)
    assert exceeds_deadband({"t": 20.0}, {"t": 20.0, "h": 50}, 1.0)  # a field appeared
    assert exceeds_deadband("open", "closed", 1.0) and not exceeds_deadband("open", "open", 1.0)


def test_history_is_bounded_and_oldest_first():
    async def go():
        clock, hw = Clock(), Hardware(*range(6))
        ch = channel(hw, clock, min_interval=0, history_size=3)
        for _ in range(6):
            clock.now += 1
            await ch.get()
        assert [r.value for r in ch.history] == [3, 4, 5]
        out = ch.history_json()
        assert out["uri"] == "sensor://soil/temperature" and out["unit"] == "°C" and out["deadband"] == 0.0
        assert [s["value"] for s in out["samples"]] == [3, 4, 5]
        assert out["samples"][-1]["timestamp"] == iso(clock.now)
        assert [s["value"] for s in ch.history_json(limit=2)["samples"]] == [4, 5]
        assert ch.history_json(limit=0)["samples"] == [] and ch.history_json(limit=-1)["samples"] == []
        assert len(ch.history_json(limit=99)["samples"]) == 3
    run(go())


def test_a_failed_read_keeps_the_last_reading_and_is_retried():
    async def go():
        clock, hw = Clock(), Hardware(20.0, OSError("I2C bus 1: remote I/O error"), 21.0)
        ch = channel(hw, clock, min_interval=1.0)
        good, _ = await ch.get()
        clock.now += 1
        with pytest.raises(OSError, match="remote I/O"):
            await ch.get(fresh=True)
        assert ch.last is good and ch.reported is good  # what the runtime serves, marked stale
        assert ch.last_error == "OSError: I2C bus 1: remote I/O error" and ch.reads == 2
        assert list(ch.history) == [good]
        # the error is not cached: the next read goes to the hardware at once
        recovered, updated = await ch.get(fresh=True)
        assert recovered.value == 21.0 and updated and ch.last_error is None and hw.reads == 3
    run(go())


def test_concurrent_readers_all_see_the_shared_failure():
    async def go():
        clock, hw = Clock(), Hardware(ValueError("checksum mismatch"))
        hw.gate = asyncio.Event()
        ch = channel(hw, clock)
        readers = [asyncio.create_task(ch.get()) for _ in range(3)]
        await hw.started.wait()
        hw.gate.set()
        results = await asyncio.gather(*readers, return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results) and hw.reads == 1
        assert ch.last is None and ch.last_error == "ValueError: checksum mismatch"
    run(go())


def test_reading_json_and_iso_timestamps():
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"
    r = Reading(18.25, "°C", 1_700_000_000.5)
    assert r.to_json() == {"value": 18.25, "unit": "°C", "timestamp": "2023-11-14T22:13:20.500Z"}
    with pytest.raises(AttributeError):
        r.value = 1  # type: ignore[misc]  # frozen
