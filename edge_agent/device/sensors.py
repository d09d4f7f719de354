"""Sensor channels: caching, rate limiting, deadbands and short history for one reading.

A channel wraps a driver's :class:`drivers.base.SensorSpec`. It guarantees that the hardware is
never read more often than ``spec.min_interval`` (concurrent readers share one read), keeps the
last reading, decides with the deadband whether a new reading is an *update*, and records
updates in a bounded history. No MCP, no MQTT: the runtime turns updates into
``notifications/resources/updated``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable


@dataclass(frozen=True)
class Reading:
    """One reading: ``value`` in ``unit``, taken at ``ts`` (Unix time, s)."""

    value: Any
    unit: str
    ts: float

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "timestamp": iso(self.ts)}


def iso(ts: float) -> str:
    """RFC 3339 UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def exceeds_deadband(old: Any, new: Any, deadband: float) -> bool:
    """True if ``new`` differs from ``old`` enough to count as an update.

    Numbers: ``|new - old| >= deadband`` (and any change when deadband is 0); a change to or
    from NaN always counts, NaN after NaN does not. Dicts: any field
    that does; fields added or removed always count. Anything else: inequality.
    """
    if old is None:
        return True
    if isinstance(new, bool) or isinstance(old, bool):
        return new != old
    if isinstance(new, (int, float)) and isinstance(old, (int, float)):
        if isinstance(new, float) and math.isnan(new):
            return not (isinstance(old, float) and math.isnan(old))
        if isinstance(old, float) and math.isnan(old):
            return True  # back from NaN (|new - NaN| >= deadband is never true)
        return abs(new - old) >= deadband if deadband > 0 else new != old
    if isinstance(new, dict) and isinstance(old, dict):
        if new.keys() != old.keys():
            return True
        return any(exceeds_deadband(old[k], new[k], deadband) for k in new)
    return new != old


class SensorChannel:
    """One sensor reading exposed as a resource.

    ``read_hw`` is an async callable doing the actual (threaded) hardware read. ``read_now``: a
    synchronous read cheap enough for the event loop (a ``fast`` sensor), or None; when given,
    every read calls it directly (no task, no thread) and :meth:`get_now` may be used. ``poll_interval``
    (s, or None for on-demand only), ``deadband`` (in the sensor's unit), ``history_size``
    (updates kept). ``min_interval`` (s): the hardware's fastest allowed read rate. ``clock``:
    the time source of reading timestamps and ages (Unix s; tests pass their own).
    """

    def __init__(self, *, driver: str, name: str, unit: str, description: str,
                 read_hw: Callable[[], Awaitable[Any]], min_interval: float,
                 poll_interval: float | None, deadband: float, history_size: int,
                 value_schema: dict[str, Any] | None = None, clock: Callable[[], float] = time.time,
                 read_now: Callable[[], Any] | None = None):
        self.driver, self.name, self.unit, self.description = driver, name, unit, description
        self.uri = f"sensor://{driver}/{name}"
        self.read_hw = read_hw
        self.read_now = read_now
        self.clock = clock
        self.min_interval = max(0.0, min_interval)
        self.poll_interval = poll_interval
        self.deadband = deadband
        self.value_schema = value_schema or {}
        self.last: Reading | None = None  # the latest reading, updates or not
        self.reported: Reading | None = None  # the latest *update* (deadband passed)
        self.history: deque[Reading] = deque(maxlen=history_size)
        self.reads = 0
        self.last_error: str | None = None
        self._inflight: asyncio.Future[tuple[Reading, bool]] | None = None

    async def get(self, *, fresh: bool = False) -> tuple[Reading, bool]:
        """The current reading and whether it was an update.

        Returns the cached reading if it is younger than ``min_interval`` (or, unless ``fresh``,
        younger than the poll interval); otherwise reads the hardware once, sharing that read
        with concurrent callers. Raises what the driver raised (``DriverError``/``OSError``).
        """
        if self.read_now is not None:
            return self.get_now(fresh=fresh)
        cached = self._cached(fresh)
        if cached is not None:
            return cached, False
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._read())
        fut = self._inflight
        try:
            return await asyncio.shield(fut)
        finally:
            if self._inflight is fut and fut.done():
                self._inflight = None

    def get_now(self, *, fresh: bool = False) -> tuple[Reading, bool]:
        """:meth:`get` of a channel with ``read_now``, synchronously (same caching rules).
        Raises what the driver raised, or ``RuntimeError`` without ``read_now``."""
        if self.read_now is None:
            raise RuntimeError(f"{self.uri}: no synchronous read")
        cached = self._cached(fresh)
        if cached is not None:
            return cached, False
        try:
            value = self.read_now()
        except BaseException as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.reads += 1
        return self._record(value)

    def _cached(self, fresh: bool) -> Reading | None:
        """The last reading if it is still young enough to be returned instead of a read."""
        last = self.last
        if last is None:
            return None
        max_age = self.min_interval if fresh or not self.poll_interval else max(self.min_interval, self.poll_interval)
        return last if self.clock() - last.ts < max_age else None

    async def _read(self) -> tuple[Reading, bool]:
        try:
            value = await self.read_hw()
        except BaseException as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.reads += 1
        return self._record(value)

    def _record(self, value: Any) -> tuple[Reading, bool]:
        self.last_error = None
        reading = Reading(value, self.unit, self.clock())
        self.last = reading
        updated = exceeds_deadband(self.reported.value if self.reported else None, value, self.deadband)
        if updated:
            self.reported = reading
            self.history.append(reading)
        return reading, updated

    def history_json(self, limit: int | None = None) -> dict[str, Any]:
        """``{"uri", "unit", "samples": [{"value", "timestamp"}...]}``, oldest first."""
        items = list(self.history)
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return {"uri": self.uri, "unit": self.unit, "deadband": self.deadband,
                "samples": [{"value": r.value, "timestamp": iso(r.ts)} for r in items]}
