"""``edge-agent gateway``: one MCP endpoint for a whole fleet, over stdio or Streamable HTTP.

    edge-agent gateway --broker mqtt://broker:1883 [--filter 'devices/#'] [--http 127.0.0.1:8000]

Over stdio (the default) an MCP client starts the gateway as its server process; with
``--http HOST:PORT`` it serves Streamable HTTP at ``http://HOST:PORT/mcp``. The parts:

- :mod:`.fleet` — presence, replicas, one MCP session per device (lazy or eager);
- :mod:`.channel` — those sessions multiplexed on one MQTT connection;
- :mod:`.balance` — choosing a replica (random, round-robin, least-outstanding);
- :mod:`.names` — reversible tool/prompt names and resource URIs;
- :mod:`.server` — the MCP server (official ``mcp`` SDK) that aggregates and routes;
- :mod:`.cli` — the command line (flags, defaults, exit codes);
- :mod:`edge_agent.testing.fleet_sim` — simulated devices for tests and ``bench/fleet.py``.

See ``docs/gateway.md`` for the naming scheme, the failover rules and the benchmark.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

import anyio

from edge_agent.gateway.catalog import CatalogStore
from edge_agent.gateway.fleet import Fleet, Timeouts
from edge_agent.gateway.server import Gateway

log = logging.getLogger(__name__)

HTTP_PATH = "/mcp"


@dataclass
class GatewayOptions:
    """Everything ``edge-agent gateway`` takes (see ``edge-agent gateway --help``)."""

    broker: str
    server_name_filter: str = "#"
    http: tuple[str, int] | None = None
    eager: bool = False
    strategy: str = "least-outstanding"
    timeouts: Timeouts = field(default_factory=Timeouts)
    ping_interval: float = 30.0
    page_size: int = 500
    init_concurrency: int = 64
    expose: str = "flat"  # or "catalog" (gateway/expose.py)
    catalog_cache: str | None = None  # folder of catalogs by digest (gateway/catalog.py); None: memory only
    tls: Any = None  # edge_agent.mqtt.server.TlsSettings: CA, client certificate and key (mTLS brokers)
    auth: Any = None  # gateway/auth.py HttpAuth: bearer tokens on --http (None: loopback only)
    device_tokens: Any = None  # gateway/auth.py DeviceTokens: each request carries its caller's device token


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6; a bare ``PORT`` means 127.0.0.1).

    Raises:
        ValueError: no valid port.
    """
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--http wants HOST:PORT, not {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--http port {number} is out of range")
    return host, number


def build(options: GatewayOptions) -> Gateway:
    fleet = Fleet(options.broker, server_name_filter=options.server_name_filter, eager=options.eager,
                  strategy=options.strategy, timeouts=options.timeouts, ping_interval=options.ping_interval,
                  init_concurrency=options.init_concurrency, catalogs=CatalogStore(options.catalog_cache),
                  tls=options.tls)
    gateway = Gateway(fleet, page_size=options.page_size, expose=options.expose)
    gateway.device_tokens = options.device_tokens
    return gateway


async def _on_signals(action) -> None:
    """Call ``action()`` on the first SIGINT or SIGTERM (so the fleet leaves cleanly, exit 0)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            action()
            return


def _pollable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


class _NonBlockingFd:
    def __init__(self, fd: int):
        self.fd = fd
        self._was_blocking = os.get_blocking(fd)
        os.set_blocking(fd, False)

    def restore(self) -> None:
        with contextlib.suppress(OSError):
            os.set_blocking(self.fd, self._was_blocking)


class _StdinLines(_NonBlockingFd):
    """Lines of stdin for the SDK's ``stdio_server``, read on the event loop.

    The SDK reads stdin in a worker thread, which a cancellation cannot interrupt: on SIGTERM
    the process would hang until the client closed the pipe. This reader waits with
    ``anyio.wait_readable`` instead, so it stops at once (and saves a thread hop per message).
    """

    def __init__(self, fd: int = 0):
        super().__init__(fd)
        self._buf = b""

    def __aiter__(self) -> "_StdinLines":
        return self

    async def __anext__(self) -> str:
        while b"\n" not in self._buf:
            await anyio.wait_readable(self.fd)
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                if not self._buf:
                    raise StopAsyncIteration
                line, self._buf = self._buf, b""
                return line.decode("utf-8", "replace")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace")


class _StdoutWriter(_NonBlockingFd):
    """The SDK's ``stdout`` (``write`` + ``flush``), written on the event loop, not a worker thread."""

    def __init__(self, fd: int = 1):
        super().__init__(fd)

    async def write(self, text: str) -> None:
        data = memoryview(text.encode())
        while data:
            try:
                data = data[os.write(self.fd, data):]
            except BlockingIOError:
                await anyio.wait_writable(self.fd)

    async def flush(self) -> None:
        pass


async def serve_stdio(options: GatewayOptions) -> None:
    """Serve one client on stdin/stdout until it closes stdin (or SIGINT/SIGTERM).

    Raises:
        TransportError: the broker cannot be reached at start.
    """
    from mcp.server.stdio import stdio_server

    async with build(options) as gateway, anyio.create_task_group() as tg:
        tg.start_soon(_on_signals, tg.cancel_scope.cancel)
        log.info("gateway serving MCP on stdio")
        ours = _pollable(0) and _pollable(1)  # else (e.g. files): the SDK's thread-based streams
        stdin, stdout = (_StdinLines(), _StdoutWriter()) if ours else (None, None)
        try:
            async with stdio_server(stdin, stdout) as (read_stream, write_stream):  # type: ignore[arg-type]
                await gateway.server.run(read_stream, write_stream, gateway.init_options)
        finally:
            for fd in (stdin, stdout):
                if fd is not None:
                    fd.restore()
        tg.cancel_scope.cancel()


async def serve_http(options: GatewayOptions) -> None:
    """Serve Streamable HTTP at ``http://HOST:PORT/mcp`` until SIGINT/SIGTERM.

    Raises:
        TransportError: the broker cannot be reached at start.
        OSError: the port is taken.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # ours (below): uvicorn's re-raises the signal after shutdown
            yield

    from edge_agent.gateway.auth import refuse_open_bind

    assert options.http is not None
    host, port = options.http
    refuse_open_bind(host, options.auth)  # ValueError: MCP on a LAN address without authentication
    auth = {"auth": options.auth.settings, "token_verifier": options.auth.verifier} if options.auth else {}
    async with build(options) as gateway, anyio.create_task_group() as tg:
        app = gateway.server.streamable_http_app(streamable_http_path=HTTP_PATH, host=host, **auth)
        server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        tg.start_soon(_on_signals, lambda: setattr(server, "should_exit", True))
        shown = f"[{host}]" if ":" in host else host

        async def announce() -> None:
            while not server.started:
                await anyio.sleep(0.02)
            print(f"edge-agent gateway: serving MCP (Streamable HTTP) at http://{shown}:{port}{HTTP_PATH}",
                  file=sys.stderr, flush=True)

        tg.start_soon(announce)
        try:
            await server.serve()
        except SystemExit:  # uvicorn's answer to a failed startup (e.g. the port is taken)
            raise OSError(f"cannot serve HTTP on {shown}:{port} (see the error above)") from None
        tg.cancel_scope.cancel()


def run(options: GatewayOptions) -> None:
    """Run the gateway in the foreground (asyncio backend; uvicorn needs it)."""
    body = serve_http if options.http else serve_stdio
    anyio.run(body, options)
