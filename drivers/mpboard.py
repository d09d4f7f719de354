"""A MicroPython board running edgemcp (``micropython/``), plugged into the Pi by USB or UART.

The board serves MCP as newline-delimited JSON-RPC on its serial line (MCP's stdio framing,
MCP specification 2025-11-25 ``basic/transports``). This driver is its client: it initializes
a session, lists the board's tools and resources **once, at construction** (the runtime takes
``tools()``/``sensors()`` once) and exposes them through the Pi's own MCP server:

- each board tool ``t`` becomes the Pi tool ``{driver}_{t}`` with the board's input schema
  and annotations; calling it calls the board. The board's ``isError`` result becomes a
  :class:`ToolInputError` (the caller sees the board's message; the driver stays ok).
- each board resource ``sensor://vent/angle`` becomes the sensor ``vent_angle``
  (``sensor://{driver}/vent_angle``) with the board's unit and poll interval; reading it reads
  the board. A reading the board marks ``stale`` is a :class:`DriverError`.

Unplugged board: a failed write or read (or no answer within ``timeout``) closes the port and
raises :class:`DriverError` (the runtime shows the driver degraded); the next call or poll
reopens the port, initializes again and carries on (the runtime shows it recovered). A
board that rebooted answers -32600 "not initialized": the driver initializes again and
retries once; a request that reached the board but got no answer is never resent (a tool
may have acted). A board absent at start makes the constructor raise :class:`DriverError`
(the runtime retries every 15 s).

Lines that are not JSON (a boot banner, a traceback on the console) are skipped.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from typing import Any

import serial

from edge_agent import __version__
from edge_agent.drivers.base import Driver, PinUse, SensorSpec, ToolSpec, no_arguments
from edge_agent.errors import DriverError, ToolInputError

PROTOCOL_VERSION = "2025-11-25"
READ_SLICE = 0.1  # s: pyserial read timeout; the request deadline is ``timeout``
START_TIMEOUT = 2.0  # s: at most this long per answer while the constructor lists the board
MAX_LINE = 256 * 1024  # bytes: a longer line is noise, dropped


class _WriteFailed(DriverError):
    """The request never reached the board (the port is gone): safe to resend."""


class BoardError(DriverError):
    """The board answered with a JSON-RPC error: ``code`` and the board's message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def sensor_name(uri: str) -> str:
    """``sensor://vent/angle`` -> ``vent_angle`` (the Pi's sensor name for a board resource)."""
    tail = uri.split("://", 1)[-1]
    name = re.sub(r"[^a-z0-9_]+", "_", tail.lower()).strip("_")
    return name or "value"


class MpBoard(Driver):
    """An edgemcp board on a serial port (``/dev/ttyUSB0``, ``/dev/ttyACM0``, ``/dev/serial0``).

    Tools and sensors: whatever the board declares (see the module docstring). Raises
    :class:`DriverError` from the constructor when the board does not answer ``initialize``
    and ``tools/list`` within ``timeout`` seconds (port missing, wrong baud rate, board not
    running edgemcp with ``"serial"`` configured).
    """

    kind = "mpboard"
    description = "MicroPython board running edgemcp on a serial line (USB or UART)"
    options_schema = {
        "type": "object",
        "properties": {
            "port": {"type": "string", "minLength": 1, "default": "/dev/ttyUSB0",
                     "description": "serial device path: /dev/ttyUSB0 or /dev/ttyACM0 (USB), /dev/serial0 (Pi UART)"},
            "baudrate": {"type": "integer", "enum": [9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600],
                         "default": 115200,
                         "description": "line speed (bit/s); the board's UART setting (USB CDC ignores it)"},
            "timeout": {"type": "number", "minimum": 0.5, "maximum": 120, "default": 5,
                        "description": "seconds to wait for each answer of the board (s)"},
        },
        "additionalProperties": False,
    }

    @classmethod
    def pin_uses(cls, options) -> list[PinUse]:
        """The serial port (opened exclusively); on the Pi UART also GPIO14/15."""
        from edge_agent.drivers.pins import uart_port

        port = options.get("port", "/dev/ttyUSB0")
        return [PinUse("port" if "port" in options else "", None, "uart" if uart_port(port) else "serial", port)]

    def __init__(self, name, options, *, context):
        super().__init__(name, options, context=context)
        self.port = self.options.get("port", "/dev/ttyUSB0")
        self.baudrate = self.options.get("baudrate", 115200)
        self.timeout = float(self.options.get("timeout", 5))
        self._lock = threading.Lock()
        self._serial: serial.Serial | None = None
        self._next_id = 0
        self._closed = False
        self.server_info: dict[str, Any] = {}
        self.reconnects = 0
        self._tools: list[dict[str, Any]] = []
        self._resources: list[dict[str, Any]] = []
        # The runtime builds drivers in a worker thread (the loop keeps serving), but before the
        # agent comes online: wait at most START_TIMEOUT per answer here (a board that is still
        # booting is retried by the runtime every 15 s).
        self.timeout, timeout = min(self.timeout, START_TIMEOUT), self.timeout
        try:
            self._tools = self._list("tools/list", "tools")
            self._resources = self._list("resources/list", "resources")
        except DriverError:
            self.close()
            raise
        finally:
            self.timeout = timeout

    # ------------------------------------------------------------------ the wire
    def _open(self) -> serial.Serial:
        if self._closed:
            raise DriverError(f"board on {self.port}: driver closed")
        # the board itself on the context's serial backend (no simulated board: a real one, even
        # on a simulated device)
        port = self.context.serial_port(self.port, baudrate=self.baudrate, timeout=READ_SLICE,
                                        write_timeout=self.timeout, exclusive=True)
        port.dtr = port.rts = False  # an ESP32 dev board's auto-reset circuit: opening must not reset it
        try:
            port.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DriverError(f"board on {self.port} not connected: {exc}") from None
        try:
            port.reset_input_buffer()
        except (serial.SerialException, OSError):
            pass
        self._serial = port
        try:
            result = self._transact("initialize", {
                "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                "clientInfo": {"name": "edge-agent-mpboard", "version": __version__}})
            self._write({"jsonrpc": "2.0", "method": "notifications/initialized"})
        except BaseException:
            self._drop_port()
            raise
        self.server_info = result.get("serverInfo") or {}
        self.reconnects += 1
        return port

    def _drop_port(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def _write(self, msg: dict[str, Any]) -> None:
        assert self._serial is not None
        try:
            self._serial.write(json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
            self._serial.flush()
        except (serial.SerialException, OSError) as exc:
            raise _WriteFailed(f"board on {self.port}: write failed: {exc}") from None

    def _transact(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its response (skipping notifications and noise)."""
        self._next_id += 1
        msg_id = self._next_id
        self._write({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        deadline = time.monotonic() + self.timeout
        pending = b""
        port = self._serial
        assert port is not None
        while time.monotonic() < deadline:
            try:
                chunk = port.readline()
            except (serial.SerialException, OSError) as exc:
                raise DriverError(f"board on {self.port}: read failed: {exc}") from None
            if not chunk:
                continue
            pending += chunk
            if not pending.endswith(b"\n"):
                if len(pending) > MAX_LINE:
                    pending = b""
                continue
            line, pending = pending.strip(), b""
            try:
                reply = json.loads(line)
            except ValueError:
                continue  # a boot banner, a print, a traceback: not for us
            if not isinstance(reply, dict) or reply.get("id") != msg_id or "method" in reply:
                continue  # a notification (resources/updated) or a stale answer
            if "error" in reply:
                err = reply["error"] if isinstance(reply["error"], dict) else {}
                raise BoardError(int(err.get("code", -32603)), f"board on {self.port}: {method}: "
                                 f"{err.get('message', 'error')} ({err.get('code')})")
            result = reply.get("result")
            return result if isinstance(result, dict) else {}
        raise DriverError(f"board on {self.port}: no answer to {method} within {self.timeout:g} s")

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One JSON-RPC request to the board, (re)opening the port and the session as needed.

        Raises:
            DriverError: the port is gone, the board does not answer, or it answers an error.
        """
        with self._lock:
            for attempt in (1, 2):
                if self._serial is None:
                    self._open()
                try:
                    return self._transact(method, params or {})
                except BoardError as exc:
                    if exc.code != -32600 or attempt == 2:  # -32600: the board rebooted, no session
                        raise
                    self._drop_port()
                except _WriteFailed:
                    self._drop_port()  # unplugged (and maybe plugged in again): reopen, resend
                    if attempt == 2:
                        raise
                except DriverError:
                    self._drop_port()  # sent but no answer: never resend (a tool may have acted)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _list(self, method: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.request(method, {"cursor": cursor} if cursor else {})
            items += [i for i in page.get(key) or [] if isinstance(i, dict)]
            cursor = page.get("nextCursor")
            if not cursor:
                return items

    # ------------------------------------------------------------------ tools
    def _call(self, tool: str, **arguments: Any) -> Any:
        result = self.request("tools/call", {"name": tool, "arguments": arguments})
        text = " ".join(c.get("text", "") for c in result.get("content") or [] if isinstance(c, dict))
        if result.get("isError"):
            raise ToolInputError(text or f"{tool} failed on the board")
        structured = result.get("structuredContent")
        if isinstance(structured, dict):
            return structured
        return text or None

    def tools(self) -> list[ToolSpec]:
        specs = []
        for t in self._tools:
            name = t.get("name")
            if not isinstance(name, str) or not name:
                continue
            specs.append(ToolSpec(
                name=name, description=t.get("description") or name,
                input_schema=t.get("inputSchema") or no_arguments(),
                handler=functools.partial(self._call, name), output_schema=t.get("outputSchema"),
                title=t.get("title"), annotations=dict(t.get("annotations") or {})))
        return specs

    # ------------------------------------------------------------------ sensors
    def _read(self, uri: str) -> Any:
        result = self.request("resources/read", {"uri": uri})
        contents = result.get("contents") or [{}]
        text = contents[0].get("text", "") if isinstance(contents[0], dict) else ""
        try:
            reading = json.loads(text)
        except ValueError:
            return text
        if not isinstance(reading, dict) or "value" not in reading:
            return reading
        if reading.get("stale"):
            raise DriverError(f"board on {self.port}: {uri}: {reading.get('error', 'read failed')}")
        return reading["value"]

    def sensors(self) -> list[SensorSpec]:
        specs, seen = [], set()
        for r in self._resources:
            uri = r.get("uri")
            if not isinstance(uri, str):
                continue
            name = sensor_name(uri)
            if name in seen:
                continue
            seen.add(name)
            meta: dict[str, Any] = r["_meta"] if isinstance(r.get("_meta"), dict) else {}
            poll = meta.get("poll_interval_s")
            specs.append(SensorSpec(
                name=name, description=f"{r.get('description') or r.get('name') or uri} (board {uri})",
                read=functools.partial(self._read, uri), unit=str(meta.get("unit") or ""),
                poll_interval=float(poll) if isinstance(poll, (int, float)) and poll > 0 else None,
                value_schema={"type": ["number", "boolean", "string", "object", "array", "null"]}))
        return specs

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._drop_port()
