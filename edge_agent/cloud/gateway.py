"""``edge-agent gateway``: one MCP endpoint for a whole fleet, over stdio or Streamable HTTP.

    edge-agent gateway --broker mqtt://broker:1883 [--filter 'devices/#'] [--http 127.0.0.1:8000]

Over stdio (the default) an MCP client starts the gateway as its server process; with
``--http HOST:PORT`` it serves Streamable HTTP at ``http://HOST:PORT/mcp``. The parts:

- :mod:`.gateway_fleet` — presence, replicas, one MCP session per device (lazy or eager);
- :mod:`.gateway_channel` — those sessions multiplexed on one MQTT connection;
- :mod:`.gateway_balance` — choosing a replica (random, round-robin, least-outstanding);
- :mod:`.gateway_names` — reversible tool/prompt names and resource URIs;
- :mod:`.gateway_server` — the MCP server (official ``mcp`` SDK) that aggregates and routes;
- :mod:`.gateway_sim` — simulated devices for tests and ``bench/fleet.py``.

See ``docs/gateway.md`` for the naming scheme, the failover rules and the benchmark.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import anyio

from .gateway_fleet import Fleet, Timeouts
from .gateway_server import Gateway

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
                  init_concurrency=options.init_concurrency)
    return Gateway(fleet, page_size=options.page_size)


async def serve_stdio(options: GatewayOptions) -> None:
    """Serve one client on stdin/stdout until it closes stdin.

    Raises:
        TransportError: the broker cannot be reached at start.
    """
    from mcp.server.stdio import stdio_server

    async with build(options) as gateway:
        log.info("gateway serving MCP on stdio")
        async with stdio_server() as (read_stream, write_stream):
            await gateway.server.run(read_stream, write_stream, gateway.init_options)


async def serve_http(options: GatewayOptions) -> None:
    """Serve Streamable HTTP at ``http://HOST:PORT/mcp`` until interrupted (SIGINT/SIGTERM).

    Raises:
        TransportError: the broker cannot be reached at start.
        OSError: the port is taken.
    """
    import uvicorn

    assert options.http is not None
    host, port = options.http
    async with build(options) as gateway:
        app = gateway.server.streamable_http_app(streamable_http_path=HTTP_PATH, host=host)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        shown = f"[{host}]" if ":" in host else host
        print(f"edge-agent gateway: serving MCP (Streamable HTTP) at http://{shown}:{port}{HTTP_PATH}",
              file=sys.stderr, flush=True)
        await server.serve()


def run(options: GatewayOptions) -> None:
    """Run the gateway in the foreground (asyncio backend; uvicorn needs it)."""
    body = serve_http if options.http else serve_stdio
    anyio.run(body, options)
