"""The ``edge-agent gateway`` command line: its flags, defaults and exit codes (0 stopped, 1 a
broker or transport failure, 2 a bad flag). The gateway itself is :mod:`.command`."""

from __future__ import annotations

import argparse
import logging
import math
import sys

from edge_agent.client.cli import (
    CALL_TIMEOUT,
    INITIALIZE_TIMEOUT,
    PING_TIMEOUT,
    REQUEST_TIMEOUT,
    _leaf,
    _positive_float,
    _positive_int,
    add_tls_arguments,
    broker_tls,
)
from edge_agent.errors import TransportError
from edge_agent.mqtt.broker_url import ENV_BROKER, default_broker


def _host_port(text: str) -> tuple[str, int]:
    from edge_agent.gateway.command import parse_host_port

    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number of seconds, not {text}")
    return value


def _gateway(args: argparse.Namespace) -> int:
    """``edge-agent gateway``: run until the client closes stdin (stdio) or SIGINT/SIGTERM (HTTP)."""
    import asyncio

    from edge_agent.gateway.command import GatewayOptions, run
    from edge_agent.gateway.fleet import Timeouts

    # stderr only: on stdio, stdout is the MCP channel. Warnings by default, -v info, -vv debug.
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    broker = args.broker or default_broker()
    levels = args.filter.split("/")
    if not args.filter or any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels) \
            or "#" in levels[:-1]:
        print(f"edge-agent gateway: bad --filter {args.filter!r}: use whole-level wildcards, '#' last "
              "(e.g. 'devices/#', 'devices/+/pi-01')", file=sys.stderr)
        return 2
    try:
        tls = broker_tls(args)
        auth = _http_auth(args)
        device_tokens = None
        if args.device_token_key:
            from edge_agent.gateway.auth import DeviceTokens

            device_tokens = DeviceTokens.from_pem(args.device_token_key, issuer=args.device_token_issuer)
    except (ValueError, OSError) as bad:
        print(f"edge-agent gateway: {bad}", file=sys.stderr)
        return 2
    options = GatewayOptions(
        tls=tls, auth=auth, device_tokens=device_tokens,
        broker=broker, server_name_filter=args.filter, http=args.http, eager=args.eager, strategy=args.strategy,
        timeouts=Timeouts(initialize=args.timeout_initialize, ping=args.timeout_ping, call=args.timeout_call,
                          request=args.timeout_request, initialize_failover=args.timeout_initialize_failover),
        ping_interval=args.ping_interval, page_size=args.page_size, expose=args.expose,
        catalog_cache=None if args.catalog_cache in ("", "none") else args.catalog_cache)
    try:
        run(options)
    except KeyboardInterrupt:
        return 0
    except BaseException as group:
        exc = _leaf(group)
        if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
            return 0
        if isinstance(exc, (TransportError, OSError, ValueError)):
            print(f"edge-agent gateway: {exc}", file=sys.stderr)
            return 1 if not isinstance(exc, ValueError) else 2
        raise
    return 0


def _http_auth(args: argparse.Namespace):
    """``--auth-*`` flags → :class:`edge_agent.gateway.auth.HttpAuth` (None: none given).
    Raises ValueError: inconsistent flags, a bad token file, or a non-loopback --http without auth."""
    if not args.http:
        if args.auth_jwks or args.auth_tokens:
            raise ValueError("--auth-jwks and --auth-tokens protect --http; stdio needs none")
        return None
    from edge_agent.gateway.auth import http_auth, refuse_open_bind

    host, port = args.http
    shown = f"[{host}]" if ":" in host else host
    auth = http_auth(resource_url=args.public_url or f"http://{shown}:{port}/mcp", jwks=args.auth_jwks,
                     issuer=args.auth_issuer, audience=args.auth_audience, tokens_file=args.auth_tokens)
    refuse_open_bind(host, auth)
    return auth


def add_gateway_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``gateway``: one MCP endpoint (stdio or Streamable HTTP) for every device."""
    from edge_agent.gateway.balance import (  # pure: keeps building the parser free of ``mcp``
        INITIALIZE_FAILOVER,
        STRATEGIES,
    )
    from edge_agent.gateway.catalog import CACHE_ENV, default_cache_dir  # pure too

    t = argparse.Namespace(initialize=INITIALIZE_TIMEOUT, ping=PING_TIMEOUT, call=CALL_TIMEOUT, request=REQUEST_TIMEOUT,
                           initialize_failover=INITIALIZE_FAILOVER)
    help_ = "serve every MCP server at the broker as one MCP server (stdio, or Streamable HTTP with --http)"
    p = subparsers.add_parser("gateway", help=help_, description=help_ + ". See docs/gateway.md.")
    p.add_argument("--broker", metavar="URL", default=None,
                   help=f"broker URL (default: ${ENV_BROKER} or mqtt://localhost:1883)")
    p.add_argument("--filter", default="#", metavar="FILTER",
                   help="server-name filter with MQTT wildcards, e.g. 'devices/#' (default: #)")
    p.add_argument("--http", metavar="HOST:PORT", type=_host_port, default=None,
                   help="serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio")
    p.add_argument("--eager", action="store_true",
                   help="initialize a session with each server as soon as it is online (default: on first use)")
    p.add_argument("--strategy", choices=STRATEGIES, default="least-outstanding",
                   help="how a client session is put on one of several replicas of a server-name "
                        "(default: least-outstanding)")
    p.add_argument("--timeout-initialize", metavar="S", type=_positive_float, default=t.initialize,
                   help=f"seconds a device may take to answer initialize (default {t.initialize:g})")
    p.add_argument("--timeout-initialize-failover", metavar="S", type=_positive_float, default=t.initialize_failover,
                   help="seconds a device may take to answer initialize while another replica of its server-name "
                        f"is online to take the request instead (default {t.initialize_failover:g})")
    p.add_argument("--timeout-ping", metavar="S", type=_positive_float, default=t.ping,
                   help=f"seconds a device may take to answer ping (default {t.ping:g})")
    p.add_argument("--timeout-call", metavar="S", type=_positive_float, default=t.call,
                   help=f"seconds a tools/call may take (default {t.call:g})")
    p.add_argument("--timeout-request", metavar="S", type=_positive_float, default=t.request,
                   help=f"seconds any other request may take (default {t.request:g})")
    p.add_argument("--ping-interval", metavar="S", type=_non_negative_float, default=30.0,
                   help="ping each open device session this often; 0: never (default 30)")
    p.add_argument("--page-size", metavar="N", type=_positive_int, default=500,
                   help="items per page of the aggregated lists (default 500)")
    p.add_argument("--expose", choices=("flat", "catalog"), default="flat",
                   help="flat: every device's tools, resources and prompts (small fleets); catalog: the tools "
                        "find_devices, describe_device, call_device_tool, read_device (default: flat)")
    p.add_argument("--catalog-cache", metavar="DIR", default=str(default_cache_dir()),
                   help="folder of device catalogs by digest, kept across restarts; 'none': memory only "
                        f"(default ${CACHE_ENV} or $XDG_CACHE_HOME/edge-agent/catalogs)")
    add_tls_arguments(p)
    p.add_argument("--auth-jwks", metavar="FILE|URL", default=None,
                   help="--http: accept bearer JWTs signed by these keys (a JWKS file or https:// URL; with --auth-issuer)")
    p.add_argument("--auth-issuer", metavar="URL", default=None,
                   help="--http: the authorization server whose JWTs are accepted (their iss)")
    p.add_argument("--auth-audience", metavar="AUD", action="append", default=None,
                   help="--http: an accepted JWT aud (repeatable; default: the gateway's resource URL)")
    p.add_argument("--auth-tokens", metavar="FILE", default=None,
                   help="--http: accept the bearer tokens listed in FILE ('TOKEN-or-sha256:HEX SUBJECT ROLES' lines)")
    p.add_argument("--device-token-key", metavar="PEM", default=None,
                   help="--http: sign each forwarded request with a short-lived device token for its caller "
                        "(an Ed25519 or P-256 private key), so device roles apply per caller")
    p.add_argument("--device-token-issuer", metavar="ISS", default="edge-agent-gateway",
                   help="the iss of those device tokens, as devices' [[auth.issuers]] name it (default: edge-agent-gateway)")
    p.add_argument("--public-url", metavar="URL", default=None,
                   help="--http: the URL clients use for /mcp, behind a proxy (default: http://HOST:PORT/mcp)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)")
    p.set_defaults(func=_gateway, cmd_name="gateway")
    return p
