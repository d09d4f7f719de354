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
import signal
import sys

from edge_agent import __version__
from edge_agent.errors import ConfigError, TransportError

log = logging.getLogger("edge_agent")


def setup_logging(level: str = "info") -> None:
    """Log to stderr. When stderr is journald's stream: no timestamps (journald adds them) and
    ``<N>`` syslog priority prefixes (``journalctl -p err`` works). Under systemd
    (``$NOTIFY_SOCKET``) errors logged before the agent runs (a bad config) also become
    ``STATUS=`` so ``systemctl status`` shows why it exited (:mod:`edge_agent.device.service`)."""
    from edge_agent.device import service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(service.JournalFormatter() if service.stderr_is_journal() else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(service.TruncatingFilter())  # no log line longer than 2000 characters
    handlers: list[logging.Handler] = [handler]
    notifier = service.Notifier.from_env()
    if notifier.enabled:
        handlers.append(service.StartupErrorStatus(notifier))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=handlers)


def _load_config(args: argparse.Namespace):
    from edge_agent.demo import demo_config
    from edge_agent.device import config as cfg

    if getattr(args, "demo", False):
        return demo_config(state_dir=getattr(args, "state_dir", None))
    if not args.config:
        raise ConfigError([("-", "--config", "give --config FILE (or --demo)")])
    return cfg.load(args.config)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config, then what run would meet on this machine (:mod:`edge_agent.device.preflight`):
    ``FILE:LINE: KEY: message`` per problem on stderr and exit 2, or one OK line and exit 0."""
    from edge_agent.device import preflight
    from edge_agent.mqtt.broker_url import parse_broker_url

    try:
        config = _load_config(args)
        found = preflight.problems(config)
        if found:
            locator = config.locator
            raise ConfigError(found, lines=[locator.line(k) if locator else 0 for _, k, _ in found])
    except ConfigError as exc:
        for line in exc.formatted():
            print(line, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 2
    for warning in preflight.plugin_warnings(config):  # installed driver plugins this config does not use
        print(f"warning: {warning}", file=sys.stderr)
    for warning in preflight.insecure_warnings(config):  # a remote broker without TLS, credentials or roles
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config.path}: OK: {config.device.server_name} (server-id {config.device.server_id}), "
          f"{len(config.drivers)} driver(s), broker {', '.join(str(parse_broker_url(u)) for u in config.broker.urls)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        config = _load_config(args)
    except ConfigError as exc:
        for line in exc.formatted():  # FILE:LINE: KEY: message, as `edge-agent check` prints it
            log.error("config %s", line)
        return 2
    try:
        return asyncio.run(_run(config, args))
    except KeyboardInterrupt:
        return 0


async def _run(config, args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT; tell systemd READY/WATCHDOG/STATUS/STOPPING
    (:mod:`edge_agent.device.service`; no-ops without ``$NOTIFY_SOCKET``). Returns the exit code:
    0 after a clean stop (also when stopped before a broker answered), 1 if no broker took
    us within ``--connect-timeout`` (without it, the agent keeps trying)."""
    from edge_agent.device import service
    from edge_agent.device.runtime import Agent
    from edge_agent.mqtt.broker_url import parse_broker_url

    service.remove_startup_status_handlers()
    from edge_agent.device.preflight import insecure_warnings

    for warning in insecure_warnings(config, [args.broker] if args.broker else None):  # loudly, once
        log.warning("%s", warning)
    notifier = service.Notifier.from_env()
    broker = parse_broker_url(args.broker or config.broker.urls[0])
    if config.broker.password is None and broker.password is None:
        config.broker.password = service.credential("broker-password")  # LoadCredential= in the unit
    agent = Agent(config, broker_url=args.broker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.Event()
    supervisor = loop.create_task(service.supervise(notifier, agent, ready))
    starting = loop.create_task(agent.start(connect_timeout=args.connect_timeout))
    stopped = loop.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # SIGTERM while the broker has not answered: stop now, cleanly
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            supervisor.cancel()
            notifier.stopping(f"stopping before {broker} answered")
            log.info("stopping before %s answered", broker)
            await agent.stop()
            return 0
        try:
            starting.result()
        except TransportError as exc:
            log.error("%s", exc)
            supervisor.cancel()
            notifier.status(f"failed: {exc}")
            await agent.stop()
            return 1
        except Exception as exc:  # a bug or an unusable setting: say so in `systemctl status`, then crash
            notifier.status(f"failed: {type(exc).__name__}: {exc}")
            raise
        await service.presence_sent(agent)
        if not await service.until_serving(agent, notifier, stop):  # the broker refuses us: no READY
            supervisor.cancel()
            notifier.stopping("stopping: it never could serve")
            await agent.stop()
            return 0
        ready.set()
        notifier.ready(service.agent_status(agent))
        log.info("serving %s as %s on %s with %d tools, %d resources", config.device.server_name,
                 config.device.server_id, broker, len(agent.registry.tools), len(agent.registry.resources))
        await stopped
        supervisor.cancel()
        notifier.stopping(f"stopping: telling {len(agent.server.sessions)} client(s), clearing the presence")
        log.info("stopping")
        await agent.stop()
        return 0
    finally:
        supervisor.cancel()
        stopped.cancel()
        notifier.close()


def cmd_acl(args: argparse.Namespace) -> int:
    from edge_agent import acl

    try:
        fleet = acl.load_fleet(args.fleet)
    except ConfigError as exc:
        for f, key, message in exc.problems:
            print(f"{f}: {key}: {message}", file=sys.stderr)
        return 2
    text = acl.mosquitto_acl(fleet)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
        print(f"wrote {args.out}: {len(fleet.devices)} device(s), {len(fleet.clients)} client user(s)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.dynsec:
        with open(args.dynsec, "w") as fh:
            fh.write(acl.dynsec_json(fleet))
        print(f"wrote {args.dynsec} (Mosquitto dynamic-security JSON)", file=sys.stderr)
    if args.emqx:
        with open(args.emqx, "w") as fh:
            fh.write(acl.emqx_acl(fleet))
        print(f"wrote {args.emqx} (EMQX acl.conf)", file=sys.stderr)
    unbound = [c.username for c in fleet.clients if not c.client_ids]
    if unbound:
        print(f"note: client user(s) {', '.join(unbound)} list no client_ids: they may use any client id (%c), "
              "so a role rule on client ids cannot tell them apart (docs/security.md, \"Binding client ids\")"
              + ("; and Mosquitto 2.0's dynamic security does not substitute %c: give them client_ids there"
                 if args.dynsec else ""), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from edge_agent.demo import add_demo_command

    parser = argparse.ArgumentParser(prog="edge-agent", description="MCP over MQTT for edge devices.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    h = "run the device agent (until SIGTERM or Ctrl-C)"
    run = sub.add_parser("run", help=h, description=h + ".")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="TOML config file")
    src.add_argument("--demo", action="store_true", help="built-in simulated greenhouse device")
    run.add_argument("--broker", help="broker URL (overrides the config's first URL)")
    run.add_argument("--state-dir", help="state folder for --demo (default: a temporary folder)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                     help="least severe log messages written to stderr (default: info)")
    run.add_argument("--connect-timeout", metavar="S", type=float, default=None,
                     help="give up if the broker does not answer within S seconds (default: keep trying)")
    run.set_defaults(func=cmd_run)

    h = "validate a config file (exit 2 on errors)"
    check = sub.add_parser("check", help=h, description=h + ".")
    src = check.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="TOML config file")
    src.add_argument("--demo", action="store_true", help="check the built-in demo config")
    check.set_defaults(func=cmd_check)

    h = "write a Mosquitto ACL file (and dynsec JSON) from a fleet description"
    acl = sub.add_parser("acl", help=h, description=h + ".")
    acl.add_argument("--fleet", required=True, help="fleet TOML: [[devices]] and [[clients]] (see docs/security.md)")
    acl.add_argument("--out", help="ACL file to write (default: stdout)")
    acl.add_argument("--dynsec", help="also write Mosquitto dynamic-security JSON here")
    acl.add_argument("--emqx", help="also write an EMQX acl.conf here")
    acl.set_defaults(func=cmd_acl)

    try:
        from edge_agent.client.cli import add_client_commands
        from edge_agent.gateway.cli import add_gateway_command
    except ImportError as exc:  # a device install without the [cloud] extra still runs and checks
        missing = str(exc)

        def need_cloud(args: argparse.Namespace) -> int:
            print(f"edge-agent {args.command}: needs the cloud extra (pip install 'edge-agent-mcp[cloud]'): {missing}",
                  file=sys.stderr)
            return 2

        for name in ("devices", "tools", "call", "read", "watch", "resources", "prompts", "gateway"):
            sub.add_parser(name, help="(needs edge-agent-mcp[cloud])").set_defaults(func=need_cloud)
    else:
        add_client_commands(sub)
        add_gateway_command(sub)
    add_demo_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit code.

    When the reader of stdout goes away (``edge-agent tools X | head -1``) the command ends
    quietly with status 141 (128 + SIGPIPE, as a shell reports a tool killed by SIGPIPE),
    with no traceback: see :func:`edge_agent.termio.stdout_gone`. Ctrl-C that no command
    handles itself (e.g. while modules load) ends it quietly with status 130 (128 + SIGINT).
    """
    from edge_agent.termio import stdout_gone

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        return stdout_gone()
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
