"""``edge-agent``: run a device agent, check a config, and talk to devices from the cloud side.

Device side:  ``edge-agent run --config FILE`` | ``edge-agent run --demo`` | ``edge-agent check --config FILE``
Cloud side:   ``edge-agent devices | tools | call | read | watch | resources | prompts`` (``--broker URL``)
Demo:         ``edge-agent demo`` (local broker, simulated device, a cloud client walking through it)

Exit codes: 0 success, 1 runtime failure (broker unreachable, tool error), 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from . import __version__
from .errors import ConfigError, TransportError

log = logging.getLogger("edge_agent")


def setup_logging(level: str = "info") -> None:
    """Log to stderr; without timestamps under systemd (journald adds them)."""
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr)


def _load_config(args: argparse.Namespace):
    from . import config as cfg
    from .demo import demo_config

    if getattr(args, "demo", False):
        return demo_config(state_dir=getattr(args, "state_dir", None))
    if not args.config:
        raise ConfigError([("-", "--config", "give --config FILE (or --demo)")])
    return cfg.load(args.config)


def cmd_check(args: argparse.Namespace) -> int:
    from .transport.broker_url import parse_broker_url

    try:
        config = _load_config(args)
    except ConfigError as exc:
        for f, key, message in exc.problems:
            print(f"{f}: {key}: {message}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 2
    print(f"{config.path}: OK: {config.device.server_name} (server-id {config.device.server_id}), "
          f"{len(config.drivers)} driver(s), broker {', '.join(str(parse_broker_url(u)) for u in config.broker.urls)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        config = _load_config(args)
    except ConfigError as exc:
        for f, key, message in exc.problems:
            log.error("config %s: %s: %s", f, key, message)
        return 2
    try:
        return asyncio.run(_run(config, args))
    except KeyboardInterrupt:
        return 0


async def _run(config, args: argparse.Namespace) -> int:
    from .runtime import Agent

    agent = Agent(config, broker_url=args.broker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start(connect_timeout=args.connect_timeout)
    except TransportError as exc:
        log.error("%s", exc)
        await agent.stop()
        return 1
    log.info("serving %s as %s on %s with %d tools, %d resources", config.device.server_name,
             config.device.server_id, agent.broker_url, len(agent.registry.tools), len(agent.registry.resources))
    await stop.wait()
    log.info("stopping")
    await agent.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .demo import add_demo_command

    parser = argparse.ArgumentParser(prog="edge-agent", description="MCP over MQTT for edge devices.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the device agent")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="TOML config file")
    src.add_argument("--demo", action="store_true", help="built-in simulated greenhouse device")
    run.add_argument("--broker", help="broker URL (overrides the config's first URL)")
    run.add_argument("--state-dir", help="state folder for --demo (default: a temporary folder)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--connect-timeout", type=float, default=None,
                     help="give up if the broker does not answer within S seconds (default: keep trying)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config file (exit 2 on errors)")
    src = check.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="TOML config file")
    src.add_argument("--demo", action="store_true", help="check the built-in demo config")
    check.set_defaults(func=cmd_check)

    try:
        from .cloud.cli import add_client_commands
    except ImportError as exc:  # a device install without the [cloud] extra still runs and checks
        missing = str(exc)

        def need_cloud(args: argparse.Namespace) -> int:
            print(f"edge-agent {args.command}: needs the cloud extra (pip install 'edge-agent[cloud]'): {missing}",
                  file=sys.stderr)
            return 2

        for name in ("devices", "tools", "call", "read", "watch", "resources", "prompts"):
            sub.add_parser(name, help="(needs edge-agent[cloud])").set_defaults(func=need_cloud)
    else:
        add_client_commands(sub)
    add_demo_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
