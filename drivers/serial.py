"""Serial-port drivers on pyserial: an NMEA-0183 GPS receiver (u-blox NEO-6M/M8N and the like).

A daemon thread owns the port: it reads lines, drops those with a bad checksum (counted), keeps
the latest GGA/RMC data, and when the port fails (USB GPS unplugged) records the error and tries
to reopen it every few seconds. Sensor reads only look at that state. Simulated (the backend's
``nmea_gps`` model, :class:`GpsSimulator`): a pty whose master a thread feeds with GGA + RMC
sentences once per second for a position slowly circling a greenhouse; the driver opens the
pty's slave like a real port.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import threading
import time
import tty
from typing import Any

import serial

from edge_agent.drivers import nmea
from edge_agent.drivers.base import Driver, DriverContext, PinUse, SensorSpec, simulated_model
from edge_agent.errors import DriverError

METRES_PER_DEGREE = 111_320  # of latitude (and of longitude at the equator)


class GpsSimulator:
    """A pty that emits a GPS receiver's GGA and RMC sentences every ``interval`` s.

    The position circles ``center`` (lat, lon in °) at ``radius_m`` (m) once per ``period`` s;
    ``port`` is the slave's device path for pyserial. ``close()`` stops the thread and closes
    the pty (a reader then sees the port fail, as with an unplugged receiver).
    """

    def __init__(self, center=(51.99012, 4.21365), altitude_m=2.0, radius_m=20.0, period=600.0, interval=1.0):
        self.center, self.altitude_m, self.radius_m, self.period, self.interval = (
            center, altitude_m, radius_m, period, interval)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gps-sim", daemon=True)
        self._thread.start()

    def position(self, t: float) -> tuple[float, float, float, float]:
        """(lat °, lon °, speed m/s, course °) at Unix time ``t``."""
        angle = 2 * math.pi * (t % self.period) / self.period
        lat = self.center[0] + self.radius_m * math.cos(angle) / METRES_PER_DEGREE
        lon = self.center[1] + self.radius_m * math.sin(angle) / (
            METRES_PER_DEGREE * math.cos(math.radians(self.center[0])))
        speed = 2 * math.pi * self.radius_m / self.period
        return lat, lon, speed, (math.degrees(angle) + 90) % 360

    def sentences(self, when: dt.datetime) -> list[str]:
        """The GGA and RMC sentences for UTC time ``when``."""
        lat, lon, speed, course = self.position(when.timestamp())
        return [nmea.gga_sentence(when, lat, lon, self.altitude_m, satellites=9, hdop=0.8),
                nmea.rmc_sentence(when, lat, lon, speed, course)]

    def _run(self) -> None:
        while True:
            lines = self.sentences(dt.datetime.now(dt.timezone.utc))
            try:
                os.write(self.master, "".join(s + "\r\n" for s in lines).encode("ascii"))
            except BlockingIOError:
                pass  # nobody reads the port; drop this second's sentences like a UART would
            except OSError:
                return
            if self._stop.wait(self.interval):
                return

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self.master)
        os.close(self.slave)


@simulated_model("nmea_gps")
def _simulated_gps(context: DriverContext, **where: Any) -> GpsSimulator:
    return GpsSimulator()  # ``port`` (the configured one) is replaced by the pty's


class NmeaGps(Driver):
    """A GPS receiver speaking NMEA-0183 on a serial port (``/dev/serial0``, ``/dev/ttyUSB0``).

    Sensors: ``position`` (``{"lat": °, "lon": °, "altitude_m": m}``, nulls without a fix; unit
    ``°``), ``fix`` (``{"fix": bool, "quality": int (GGA fix quality, 0 = none), "satellites":
    int, "hdop": float|null, "time": ISO-8601 UTC|null}``), ``speed`` (m/s over ground from RMC
    knots; null without a fix), ``stats`` (``{"sentences": int, "dropped": int}``: valid sentences,
    and lines dropped for a bad checksum or framing).
    Reads raise ``DriverError`` "GPS on <port>: no data for N s ..." when nothing valid arrived
    for ``stale_after`` s, naming the port error ("port closed ...") if the port failed; the
    reader keeps reopening the port every 3 s. Simulated: ``port`` is ignored; the GPS model's pty
    is opened instead (``device.port``).
    """

    kind = "nmea_gps"
    description = "GPS receiver (NMEA-0183 over a serial port)"
    options_schema = {
        "type": "object",
        "properties": {
            "port": {"type": "string", "minLength": 1, "default": "/dev/serial0",
                     "description": "serial device path, e.g. /dev/serial0 (Pi UART) or /dev/ttyUSB0"},
            "baudrate": {"type": "integer", "enum": [4800, 9600, 19200, 38400, 57600, 115200], "default": 9600,
                         "description": "line speed (bit/s); most modules ship at 9600"},
            "stale_after": {"type": "number", "minimum": 1, "maximum": 3600, "default": 5,
                            "description": "seconds without a valid sentence before readings are errors (s)"},
        },
        "additionalProperties": False,
    }
    REOPEN_INTERVAL = 3.0  # s between attempts to reopen a failed port

    @classmethod
    def pin_uses(cls, options) -> list[PinUse]:
        """The serial port (opened exclusively); on the Pi UART also GPIO14/15."""
        from edge_agent.drivers.pins import uart_port

        port = options.get("port", "/dev/serial0")
        return [PinUse("port" if "port" in options else "", None, "uart" if uart_port(port) else "serial", port)]

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.baudrate = self.options.get("baudrate", 9600)
        self.stale_after = self.options.get("stale_after", 5)
        # hardware: the configured port; simulated: a GpsSimulator and its pty
        self.device = context.attach("nmea_gps", port=self.options.get("port", "/dev/serial0"))
        self.port: str = self.device.port
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._got_data = threading.Event()
        self._serial: serial.Serial | None = None
        self._error: str | None = None
        self._started = time.monotonic()
        self._last_data: float | None = None
        self._good = self._bad = 0
        self._gga: nmea.GGA | None = None
        self._rmc: nmea.RMC | None = None
        self._latlon: tuple[float, float] | None = None
        self._thread = threading.Thread(target=self._run, name=f"gps-{name}", daemon=True)
        self._thread.start()

    # --- reader thread -------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.context.serial_port(self.port, baudrate=self.baudrate, timeout=0.5,
                                              exclusive=True) as port:
                    self._serial = port
                    self._read_lines(port)
            except (serial.SerialException, OSError, ValueError, TypeError) as exc:
                if not self._stop.is_set():
                    with self._lock:
                        self._error = str(exc) or type(exc).__name__
            finally:
                self._serial = None
            self._stop.wait(self.REOPEN_INTERVAL)

    def _read_lines(self, port: serial.Serial) -> None:
        pending = b""
        while not self._stop.is_set():
            chunk = port.readline()
            if not chunk:
                continue
            if self._error is not None:
                with self._lock:
                    self._error = None
            pending += chunk
            if pending.endswith(b"\n"):
                self.handle_line(pending.decode("ascii", "replace"))
                pending = b""
            elif len(pending) > 1024:  # noise, not NMEA (sentences are at most 82 characters)
                pending = b""

    def handle_line(self, line: str) -> None:
        """Take one received line: parse it and update the fix, or count it as bad."""
        if not line.strip():
            return
        try:
            s = nmea.parse(line)
        except nmea.NMEAError:
            with self._lock:
                self._bad += 1
            return
        with self._lock:
            self._good += 1
            self._last_data = time.monotonic()
            if isinstance(s, (nmea.GGA, nmea.RMC)):
                if isinstance(s, nmea.GGA):
                    self._gga = s
                else:
                    self._rmc = s
                if s.lat is not None and s.lon is not None:
                    self._latlon = (s.lat, s.lon)
        self._got_data.set()

    # --- sensors -------------------------------------------------------------------------
    def _snapshot(self):
        """(gga, rmc, latlon, has_fix), after checking that data is flowing."""
        startup = self._started + min(self.stale_after, 2.0) - time.monotonic()
        if startup > 0:  # just started: give the receiver time for its first sentence
            self._got_data.wait(startup)
        with self._lock:
            error, last, bad = self._error, self._last_data, self._bad
            gga, rmc, latlon = self._gga, self._rmc, self._latlon
        age = time.monotonic() - (last if last is not None else self._started)
        if error is not None:
            raise DriverError(f"GPS on {self.port}: no data for {age:.0f} s: port closed ({error}); "
                              f"reopening every {self.REOPEN_INTERVAL:g} s")
        if age > self.stale_after:
            raise DriverError(f"GPS on {self.port}: no data for {age:.0f} s: check the wiring (GPS TX to Pi RX), "
                              f"the baud rate ({self.baudrate}) and that the serial console is disabled "
                              f"({bad} lines dropped for bad checksums)")
        has_fix = gga.quality > 0 if gga is not None else bool(rmc and rmc.valid)
        return gga, rmc, latlon, has_fix

    def position(self) -> dict:
        gga, _, latlon, has_fix = self._snapshot()
        if not has_fix or latlon is None:
            return {"lat": None, "lon": None, "altitude_m": None}
        return {"lat": round(latlon[0], 7), "lon": round(latlon[1], 7),
                "altitude_m": gga.altitude_m if gga is not None else None}

    def fix(self) -> dict:
        gga, rmc, _, has_fix = self._snapshot()
        return {"fix": has_fix, "quality": gga.quality if gga else int(has_fix),
                "satellites": gga.satellites if gga else 0, "hdop": gga.hdop if gga else None,
                "time": rmc.time.isoformat().replace("+00:00", "Z") if rmc and rmc.time else None}

    def speed(self) -> float | None:
        _, rmc, _, has_fix = self._snapshot()
        if not has_fix or rmc is None or rmc.speed_m_s is None:
            return None
        return round(rmc.speed_m_s, 2)

    def stats(self) -> dict:
        with self._lock:
            return {"sentences": self._good, "dropped": self._bad}

    def sensors(self) -> list[SensorSpec]:
        nullable = {"type": ["number", "null"]}
        return [
            SensorSpec("position", "latitude, longitude (°, WGS 84) and altitude above sea level (m)",
                       self.position, unit="°", min_interval=1.0, poll_interval=5.0,
                       value_schema={"type": "object", "properties": {"lat": nullable, "lon": nullable,
                                                                      "altitude_m": nullable}}),
            SensorSpec("fix", "fix status, GGA quality, satellites in use, HDOP, UTC time", self.fix,
                       min_interval=1.0, poll_interval=10.0,
                       value_schema={"type": "object", "properties": {
                           "fix": {"type": "boolean"}, "quality": {"type": "integer"},
                           "satellites": {"type": "integer"}, "hdop": nullable,
                           "time": {"type": ["string", "null"]}}}),
            SensorSpec("speed", "speed over ground (m/s)", self.speed, unit="m/s", min_interval=1.0,
                       poll_interval=5.0, deadband=0.2, value_schema=nullable),
            SensorSpec("stats", "valid sentences received, and lines dropped (bad checksum or not NMEA)", self.stats,
                       poll_interval=60.0, value_schema={"type": "object", "properties": {
                           "sentences": {"type": "integer"}, "dropped": {"type": "integer"}}}),
        ]

    def close(self) -> None:
        self._stop.set()
        port = self._serial
        if port is not None:
            try:
                port.cancel_read()
            except (OSError, AttributeError, TypeError, ValueError):
                pass
        self._thread.join(timeout=3)
        self.device.close()
