"""Running under systemd: readiness, watchdog, status, journald log lines, credentials.

The unit (``systemd/edge-agent.service``) is ``Type=notify`` with ``NotifyAccess=main`` and
``WatchdogSec=``. The agent speaks the ``sd_notify(3)`` protocol itself, without libsystemd: one
datagram of ``KEY=value`` lines per message, sent on an ``AF_UNIX``/``SOCK_DGRAM`` socket to
``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket). Every call is a no-op when
``$NOTIFY_SOCKET`` is unset (run by hand, in tests, in a container) and never raises: a lost
notification must not stop the agent.

What the agent sends (see :func:`supervise` and ``edge_agent.cli._run``):

- while connecting: ``EXTEND_TIMEOUT_USEC=`` (the start job waits for the broker as long as the
  event loop is alive) and ``STATUS=connecting to mqtt://... (N s)``;
- ``READY=1`` once ``Agent.start()`` returned, i.e. the retained presence is published;
- ``WATCHDOG=1`` every ``$WATCHDOG_USEC``/2 from an asyncio task, so only while the event loop
  runs; the MQTT link being down does *not* stop it (a restart cannot fix a broker outage and
  would only burn the unit's start limit; paho keeps reconnecting and ``STATUS=`` says so);
- ``STATUS=online as devices/x (id) on mqtt://...; 2 sessions; drivers: 9 ok`` when it changes;
- ``STOPPING=1`` on SIGTERM/SIGINT, before the clean stop;
- ``STATUS=bad config: FILE:LINE: KEY: message`` before exiting 2 on a bad config
  (:class:`StartupErrorStatus`).

Source: ``sd_notify(3)``, ``systemd.service(5)`` (``WatchdogSec=``, ``NotifyAccess=``),
``systemd.exec(5)`` (``$JOURNAL_STREAM``, ``$CREDENTIALS_DIRECTORY``), ``sd-daemon(3)`` (the
``<N>`` priority prefixes journald reads on stdout/stderr lines).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from edge_agent.device.runtime import Agent

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 5.0  # how often STATUS= is refreshed when there is no watchdog
START_EXTEND_S = 30.0  # EXTEND_TIMEOUT_USEC granted per tick while connecting (at least)
MAX_STATUS_CHARS = 480  # keep `systemctl status` readable


class Notifier:
    """Sends ``sd_notify`` messages to ``address`` (``$NOTIFY_SOCKET``); no-op if ``None``.

    ``address``: a file system path (``/run/systemd/notify``) or an abstract socket name
    written with a leading ``@``. Messages are UTF-8 ``KEY=value`` lines; newlines inside a
    value are replaced by spaces (a newline would start a new assignment).
    """

    def __init__(self, address: str | None):
        self.address = address or None
        self._sock: socket.socket | None = None
        if self.address is not None and not self.address.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%s is neither a path nor @abstract; not notifying systemd", self.address)
            self.address = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Notifier":
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: Any) -> bool:
        """Send one message with ``fields`` (``READY=1``, ``STATUS="..."``, ...) in that order.

        Returns True if the datagram was sent (False when disabled or on error).
        """
        if self.address is None or not fields:
            return False
        text = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode("utf-8", "replace"), target)
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(value: Any) -> str:
    return str(value).replace("\r", " ").replace("\n", " ")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as ``sd_watchdog_enabled(3)``
    recommends; ``None`` if no watchdog is configured or ``$WATCHDOG_PID`` names another process."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


def credential(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The systemd credential ``name`` (``LoadCredential=name:/path`` in the unit), stripped, or
    ``None`` when the unit passes none. Source: ``systemd.exec(5)``, "Credentials"."""
    env = os.environ if env is None else env
    folder = env.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return None


# ------------------------------------------------------------------------ logging
SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def stderr_is_journal(stream: Any = None, env: Mapping[str, str] | None = None) -> bool:
    """True if ``stream`` (stderr) is connected to journald: ``$JOURNAL_STREAM`` is
    ``device:inode`` of that very stream (``systemd.exec(5)``), not merely inherited."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """``<3>ERROR edge_agent.device.runtime: message``: no timestamp (journald adds one) and the
    syslog priority prefix journald turns into the entry's priority (``journalctl -p err``)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno)
        if priority is None:
            priority = 3 if record.levelno >= logging.ERROR else 4 if record.levelno >= logging.WARNING else 6
        return f"<{priority}>{super().format(record)}"


LOG_LINE_LIMIT = 2000  # characters of one log message (a traceback comes on top)


class TruncatingFilter(logging.Filter):
    """Cuts every log message to ``limit`` characters (``... (12345 characters)`` said at the end),
    so a hostile client's string or a huge payload quoted in a message cannot flood the journal
    or hold memory in it. A filter for handlers: the record is changed in place, once."""

    def __init__(self, limit: int = LOG_LINE_LIMIT) -> None:
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as logging does
            return True
        if len(message) > self.limit:
            record.msg, record.args = f"{message[:self.limit]}... ({len(message)} characters)", None
        return True


class StartupErrorStatus(logging.Handler):
    """Until removed, sends every ERROR record as ``STATUS=`` so ``systemctl status`` tells why
    the agent exits before it runs (the only errors logged then are config problems:
    ``config FILE:LINE: KEY: message`` becomes ``bad config: FILE:LINE: KEY: message``). With several
    problems the first is shown and the rest counted."""

    def __init__(self, notifier: Notifier):
        super().__init__(logging.ERROR)
        self.notifier = notifier
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must not break logging
            return
        if text.startswith("config "):
            text = "bad config: " + text[len("config "):]
        else:
            text = "error: " + text
        self.messages.append(text)
        more = f" (and {len(self.messages) - 1} more problem(s): journalctl -u edge-agent)" if len(self.messages) > 1 else ""
        self.notifier.status(self.messages[0][:MAX_STATUS_CHARS] + more)


def remove_startup_status_handlers() -> None:
    """Detach :class:`StartupErrorStatus` (the agent is running: :func:`supervise` owns STATUS now)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StartupErrorStatus):
            root.removeHandler(handler)


# ------------------------------------------------------------------------ the agent's status
def agent_status(agent: "Agent", *, link_down_since: float | None = None) -> str:
    """One line for ``systemctl status``: presence, broker, sessions, outbox, driver health.

    ``link_down_since``: Unix time since when the MQTT link is down (``None`` = up).
    """
    from edge_agent.mqtt.broker_url import parse_broker_url

    transport = agent.endpoint.transport if agent.endpoint else None
    link = transport.link_health() if transport is not None else {}
    broker = link.get("broker") or str(parse_broker_url(agent.broker_url))
    name = transport.server_name if transport else agent.config.device.server_name
    sessions = len(agent.server.sessions)
    by_status: dict[str, list[str]] = {}
    for driver, state in agent.drivers.items():
        by_status.setdefault(state.status, []).append(driver)
    health = ", ".join(
        f"{len(names)} {status}" + ("" if status == "ok" else f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")
        for status, names in sorted(by_status.items(), key=lambda kv: (kv[0] != "ok", kv[0]))) or "none"
    if link_down_since is None:
        head = f"online as {name} ({agent.config.device.server_id}) on {broker}"
    else:
        head = (f"reconnecting to {broker}: link down since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(link_down_since))}; server-name {name}")
    queued = (link.get("outbox") or {}).get("messages") or 0
    outbox = f"; outbox {queued} queued" if queued else ""
    text = f"{head}; {sessions} session{'' if sessions == 1 else 's'}{outbox}; drivers: {health}"
    return text[:MAX_STATUS_CHARS]


def _connecting_status(agent: "Agent", elapsed: float) -> str:
    from edge_agent.mqtt.broker_url import parse_broker_url

    transport = agent.endpoint.transport if agent.endpoint else None
    if transport is not None and transport.connected.is_set() and transport.refusals.by_topic:
        refused = "; ".join(f"{k}: {v}" for k, v in transport.refusals.by_topic.items())
        return f"cannot serve: {refused}"[:MAX_STATUS_CHARS]
    link = transport.link_health() if transport is not None else {}
    brokers = ", ".join(str(parse_broker_url(u)) for u in getattr(agent, "broker_urls", [agent.broker_url]))
    error = f"; last error: {link['last_error']}" if link.get("last_error") else ""
    return f"connecting to {brokers} ({elapsed:.0f} s{error})"[:MAX_STATUS_CHARS]


async def presence_sent(agent: "Agent", timeout: float = 2.0) -> bool:
    """Wait until paho has written every queued packet (the retained presence published on
    CONNACK) to the broker connection, at most ``timeout`` s: ``READY=1`` then means "the
    presence is on its way to the broker", not "queued in this process". Returns False on timeout."""
    transport = agent.endpoint.transport if agent.endpoint else None
    if transport is None:
        return False
    deadline = time.monotonic() + timeout
    while transport.client.want_write():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def refused(agent: "Agent", timeout: float = 10.0) -> str | None:
    """After connecting: wait (at most ``timeout`` s) for the broker's SUBACK of the control
    topic and PUBACK of the presence, then say what it refused (``"subscribe $mcp-server/...:
    Not authorized (0x87)"``), or None when the agent can serve. An agent the broker refuses
    must not report READY nor "serving": no client could find or reach it."""
    transport = agent.endpoint.transport if agent.endpoint else None
    if transport is None:
        return "not started"
    try:
        await asyncio.wait_for(transport.settled.wait(), timeout)
    except asyncio.TimeoutError:
        pass  # no answer is no refusal: a slow broker; the STATUS line keeps telling
    if transport.serving:
        return None
    if not transport.connected.is_set():
        return "the broker connection was lost"
    return "; ".join(f"{k}: {v}" for k, v in transport.refusals.by_topic.items()) or "the broker refused"


async def until_serving(agent: "Agent", notifier: Notifier, stop: asyncio.Event) -> bool:
    """While the broker refuses what the agent needs (:func:`refused`), log it once and keep
    ``STATUS=`` saying so (no ``READY=1``; the transport asks again every 30 s); True once it
    serves, False if ``stop`` was set first."""
    problem = await refused(agent)
    said = None
    while problem is not None:
        if problem != said:
            log.error("cannot serve: %s; not ready until the broker allows it (asked again every 30 s)", problem)
            notifier.status(f"cannot serve: {problem}"[:MAX_STATUS_CHARS])
            said = problem
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
            return False
        except asyncio.TimeoutError:
            pass
        problem = await refused(agent, 0.0)
    return True


async def supervise(notifier: Notifier, agent: "Agent", ready: asyncio.Event, *,
                    env: Mapping[str, str] | None = None) -> None:
    """Keep systemd informed until cancelled.

    Before ``ready`` is set: ``EXTEND_TIMEOUT_USEC`` (so ``TimeoutStartSec=`` only fires if the
    event loop itself hangs, not while the broker is unreachable) and a "connecting" STATUS.
    After: ``WATCHDOG=1`` every ``WATCHDOG_USEC``/2 (if the unit has ``WatchdogSec=``) and
    ``STATUS=`` whenever :func:`agent_status` changes. Runs on the event loop, so a blocked loop
    stops the pings and systemd restarts the agent (``Restart=on-failure``).
    """
    if not notifier.enabled:
        return
    wd = watchdog_interval(env)
    tick = wd if wd else STATUS_INTERVAL_S
    started = time.monotonic()
    last: str | None = None
    down_since: float | None = None
    while True:
        fields: dict[str, Any] = {}
        if ready.is_set():
            transport = agent.endpoint.transport if agent.endpoint else None
            if transport is not None and not transport.connected.is_set():
                if down_since is None:
                    outage = transport.link_health().get("current_outage_s") or 0.0
                    down_since = round(time.time() - outage)
            else:
                down_since = None
            if wd:
                fields["WATCHDOG"] = 1
            text = agent_status(agent, link_down_since=down_since)
        else:
            fields["EXTEND_TIMEOUT_USEC"] = int(max(3 * tick, START_EXTEND_S) * 1e6)
            text = _connecting_status(agent, time.monotonic() - started)
        if text != last:
            fields["STATUS"] = text
            last = text
        notifier.notify(**fields)
        await asyncio.sleep(tick)
