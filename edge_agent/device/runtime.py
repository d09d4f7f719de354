"""The agent: config → drivers → tools/resources/prompts → MCP server → MQTT.

Wires everything together and runs the loops: one poll task per sensor, a retry task for
drivers that failed to start. Driver code runs in worker threads (the event loop never
blocks on hardware), except handlers and reads a driver declares ``fast`` (a GPIO write or
level: microseconds), which run on the loop; tool calls of one driver run one at a time.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent import __version__
from edge_agent.device import prompts, sensor_tools
from edge_agent.device.config import Config, DriverConfig
from edge_agent.device.endpoint import Endpoint
from edge_agent.device.ratelimit import RateLimits
from edge_agent.device.sensors import SensorChannel, iso
from edge_agent.device.store import Store
from edge_agent.device.tasks import TaskManager, TaskStore
from edge_agent.drivers import Driver, DriverContext, driver_class
from edge_agent.drivers.base import SensorSpec, ToolSpec
from edge_agent.errors import ToolInputError
from edge_agent.mqtt.broker_url import parse_broker_url
from edge_agent.mqtt.server import TlsSettings
from edge_agent.server import (
    McpServer,
    Registry,
    Resource,
    ResourceTemplate,
    ServerInfo,
    Tool,
    ToolContext,
)
from edge_agent.server.catalog import META_KEY as CATALOG_DIGEST
from edge_agent.server.catalog import catalog_digest
from edge_agent.server.mcp import stale_message

log = logging.getLogger(__name__)

DRIVER_RETRY_S = 15.0


@dataclass
class DriverState:
    """Health of one driver: ``status`` is ``ok``, ``degraded`` (calls or reads fail) or
    ``failed`` (it could not start; retried every 15 s)."""

    config: DriverConfig
    driver: Driver | None = None
    status: str = "starting"
    error: str | None = None
    failures: int = 0
    last_ok: float | None = None
    last_error_at: float | None = None
    lock: asyncio.Lock | None = None
    channels: list[SensorChannel] = field(default_factory=list)  # its sensors (refreshed after a call)
    job: Any = None  # the cancel flag of a task's job running on it (a later command supersedes the job)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.config.kind, "status": self.status, "error": self.error, "failures": self.failures,
                "last_ok": iso(self.last_ok) if self.last_ok else None,
                "last_error": iso(self.last_error_at) if self.last_error_at else None}


class Agent:
    """One device agent. ``await agent.start()``, then ``await agent.stop()``.

    ``broker_url`` overrides the config's first broker URL (``--broker``).
    """

    def __init__(self, config: Config, *, broker_url: str | None = None):
        self.config = config
        self.broker_urls = [broker_url] if broker_url else list(config.broker.urls)
        self.broker_url = self.broker_urls[0]
        self.store: Store | None = None
        self.registry = Registry()
        self.channels: dict[str, SensorChannel] = {}
        self.drivers: dict[str, DriverState] = {}
        self.started_at = time.time()
        dev = config.device
        self.server = McpServer(
            self.registry,
            ServerInfo(name="edge-agent", version=__version__, title=dev.title or dev.server_name,
                       instructions=_instructions(config)),
            page_size=dev.page_size, on_tool_error=self._tool_failed, reply_cache=config.link.reply_cache,
            policy=config.rbac,
        )
        self.limits = RateLimits(config.limits.client_rate, config.limits.client_burst)  # per output, per client
        self.context = _driver_context(config, config.device.simulate)
        self._contexts = {config.device.simulate: self.context}  # simulated? -> context (a driver may differ)
        self.endpoint: Endpoint | None = None
        self._tasks: list[asyncio.Task] = []
        self._refreshing: set[asyncio.Task] = set()  # sensor refreshes after a tool call
        self._refresh_due: set[str] = set()  # channel URIs with a refresh task not yet reading
        self.jobs: dict[str, ToolSpec] = {}  # tool name -> spec of tools that may run as tasks
        self.task_manager: TaskManager | None = None  # MCP tasks (device/tasks.py), when a driver has jobs

    # ---------------------------------------------------------------- build
    async def _build(self) -> None:
        self._add_device_resources()
        prompts.register(self)
        for dc in self.config.drivers:
            state = DriverState(dc, lock=asyncio.Lock())
            self.drivers[dc.name] = state
            await self._start_driver(state)
        if any(dc.sensor_tools for dc in self.config.drivers) and sensor_tools.DEVICE_STATE not in self.registry.tools:
            self.registry.add_tool(sensor_tools.device_state_tool(self))

    async def _start_driver(self, state: DriverState) -> bool:
        """Construct the driver and list its tools and sensors in a worker thread (opening
        hardware blocks: a serial handshake, a 1-Wire scan), then register them on the loop."""
        dc = state.config
        try:
            simulated = self.config.device.simulate if dc.simulate is None else dc.simulate
            if simulated not in self._contexts:
                self._contexts[simulated] = _driver_context(self.config, simulated)
            context = self._contexts[simulated]
            state.driver, tools, sensors = await asyncio.get_running_loop().run_in_executor(
                None, lambda: _construct(driver_class(dc.kind), dc, context))
        except Exception as exc:
            state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
            state.failures += 1
            state.last_error_at = time.time()
            log.error("driver %s (%s) could not start: %s", dc.name, dc.kind, state.error)
            state.driver = None  # _construct closed it
            return False
        state.channels = []
        for spec in tools:
            self.registry.add_tool(self._tool(state, spec))
        for sensor in sensors:
            self._add_sensor(state, sensor)
        read_tool = sensor_tools.driver_tool(self, state)  # <driver>_read, for tools-only hosts
        if read_tool is not None:
            self.registry.add_tool(read_tool)
        state.status, state.error = "ok", None
        state.last_ok = time.time()
        return True

    def _tool(self, state: DriverState, spec: ToolSpec) -> Tool:
        name = f"{state.config.name}_{spec.name}"
        handler: Any = functools.partial(self._call_tool, state, spec)  # (arguments, ctx) -> coroutine
        meta: dict[str, Any] = {"driver": state.config.name, "kind": state.config.kind}
        rate = state.config.rate_limit
        limits = self.limits
        if (rate is not None or limits.client_rate is not None) and not spec.annotations.get("readOnlyHint"):
            output = state.config.name  # one bucket per physical output: all tools of the driver share it
            if rate is not None:
                meta["rateLimit"] = {"rate": rate[0], "burst": rate[1], "output": output}

            async def limited(arguments: dict[str, Any], ctx: ToolContext) -> Any:
                subject = ctx.subject  # a per-request token's (a gateway's caller), else the session's
                limits.take(name, f"subject {subject}" if subject else f"client {ctx.session_id}", output, rate)
                return await self._call_tool(state, spec, arguments, ctx)

            handler = limited

        if spec.job:
            self.jobs[name] = spec
        return Tool(name=name, description=f"{_label(state.config)}: {spec.description}", input_schema=spec.input_schema, handler=handler,
                    title=spec.title, output_schema=spec.output_schema, annotations=dict(spec.annotations),
                    meta=meta, task_support=spec.task_support if spec.job else None,
                    version=str(getattr(type(state.driver), "version", None) or __version__))

    async def _call_tool(self, state: DriverState, spec: ToolSpec, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        lock = state.lock
        assert lock is not None
        inline = spec.fast and not spec.long_running
        if inline and not lock.locked():
            # On the loop thread with no await until it returns: no other call of this driver
            # can run meanwhile, so the lock is not needed (a fast handler takes microseconds).
            _check_deadline(state, spec, ctx)
            result = spec.handler(**arguments)
        else:
            if state.job is not None and self.task_manager is not None and not spec.annotations.get("readOnlyHint"):
                # a command to hardware a task's job is driving wins: the job stops now (pump_relay_off
                # during pump_relay_run), instead of the command waiting for the job's end
                self.task_manager.supersede(state.job, f"{state.config.name}_{spec.name}")
            async with lock:
                _check_deadline(state, spec, ctx)
                if spec.job and self.task_manager is not None and self.task_manager.owns(ctx.cancelled):
                    state.job = ctx.cancelled
                try:
                    result = spec.handler(**arguments) if inline else await self._call_in_thread(spec, arguments, ctx)
                finally:
                    if state.job is ctx.cancelled:
                        state.job = None
        self._driver_ok(state)
        self._refresh(state)
        return result

    async def _call_in_thread(self, spec: ToolSpec, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        loop = asyncio.get_running_loop()
        kwargs = dict(arguments)
        if spec.long_running:
            kwargs["progress"] = lambda *a, **k: loop.call_soon_threadsafe(functools.partial(ctx.progress, *a, **k))
            kwargs["cancel"] = ctx.cancelled
        fut = loop.run_in_executor(None, functools.partial(spec.handler, **kwargs))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            ctx.cancelled.set()  # the handler polls this and stops early
            try:
                await fut
            except Exception:
                pass
            raise

    def _refresh(self, state: DriverState) -> None:
        """An actuator moved: refresh its sensors now, so a read-back and subscribers see it.
        A fast sensor is read at once; a threaded one gets one refresh task at a time (the calls
        made before that task starts reading share it)."""
        for ch in state.channels:
            if ch.read_now is not None:
                try:
                    _, updated = ch.get_now(fresh=True)
                except Exception:
                    continue  # recorded in the driver's health by _read_sensor_now
                if updated:
                    self.server.resource_updated(ch.uri)
            elif ch.uri not in self._refresh_due:
                self._refresh_due.add(ch.uri)
                task = asyncio.get_running_loop().create_task(self._refresh_later(ch))
                self._refreshing.add(task)
                task.add_done_callback(self._refreshing.discard)

    async def _refresh_later(self, ch: SensorChannel) -> None:
        self._refresh_due.discard(ch.uri)  # a call from now on needs a read that starts after it
        await self._poll_once(ch, fresh=True)

    def _add_sensor(self, state: DriverState, spec: SensorSpec) -> None:
        dc = state.config
        loop_read = functools.partial(self._read_sensor, state, spec)
        ch = SensorChannel(
            driver=dc.name, name=spec.name, unit=spec.unit, description=spec.description, read_hw=loop_read,
            min_interval=spec.min_interval,
            poll_interval=dc.poll_interval if dc.poll_interval is not None else spec.poll_interval,
            deadband=dc.deadband if dc.deadband is not None else spec.deadband,
            history_size=self.config.device.history_size, value_schema=dict(spec.value_schema),
            read_now=functools.partial(self._read_sensor_now, state, spec) if spec.fast else None,
        )
        self.channels[ch.uri] = ch
        state.channels.append(ch)

        async def read() -> str:
            return await self._read_resource(ch)

        unit = f" Unit: {spec.unit}." if spec.unit else ""
        self.registry.add_resource(Resource(
            uri=ch.uri, name=f"{dc.name}/{spec.name}", title=f"{dc.name} {spec.name}".replace("_", " "),
            description=f"{_label(dc)}: {spec.description}{unit} JSON: {{value, unit, timestamp}}.", read=read,
            meta={"unit": spec.unit, "driver": dc.name, "kind": dc.kind, "min_interval_s": spec.min_interval,
                  "poll_interval_s": ch.poll_interval, "deadband": ch.deadband},
        ))

    async def _read_sensor(self, state: DriverState, spec: SensorSpec) -> Any:
        try:
            value = await asyncio.to_thread(spec.read)
        except Exception as exc:
            self._driver_error(state, exc)
            raise
        self._driver_ok(state)
        return value

    def _read_sensor_now(self, state: DriverState, spec: SensorSpec) -> Any:
        """A fast sensor's read, on the loop thread (see :attr:`SensorSpec.fast`)."""
        try:
            value = spec.read()
        except Exception as exc:
            self._driver_error(state, exc)
            raise
        self._driver_ok(state)
        return value

    async def _read_resource(self, ch: SensorChannel) -> str:
        from edge_agent.core.jsonrpc import INTERNAL_ERROR, RpcError

        try:
            reading, updated = await ch.get(fresh=True)
        except Exception as exc:
            if ch.last is None:
                raise RpcError(INTERNAL_ERROR, f"{ch.uri}: sensor read failed: {exc}") from None
            out = ch.last.to_json() | {"stale": True, "error": f"{type(exc).__name__}: {exc}"}
            return json.dumps(out, ensure_ascii=False)
        if updated:
            self.server.resource_updated(ch.uri)
        return json.dumps(reading.to_json(), ensure_ascii=False)

    def _add_device_resources(self) -> None:
        async def health() -> str:
            return json.dumps(self.health(), ensure_ascii=False)

        async def info() -> str:
            return json.dumps(self.info(), ensure_ascii=False)

        self.registry.add_resource(Resource(
            uri="device://health", name="health", title="Device health", read=health,
            description="Status of every driver (ok / degraded / failed, last error), sessions and the MQTT link."))
        async def link() -> str:
            if self.endpoint is None or self.endpoint.transport is None:
                return json.dumps({"connected": False})
            return json.dumps(self.endpoint.transport.link_health(), ensure_ascii=False)

        self.registry.add_resource(Resource(
            uri="device://link", name="link", title="MQTT link health", read=link,
            description="The MQTT link: connected or not, broker, reconnects, last outage (s), outbox depth, "
                        "drops by reason, round-trip time to the broker (ms, last QoS 1 PUBACK), profile."))
        self.registry.add_resource(Resource(
            uri="device://info", name="info", title="Device information", read=info,
            description="Server-name, server-id, version, location, and every driver with its tools and sensors (units)."))

        async def history(uri: str, variables: dict[str, str]) -> str:
            ch = self.channels.get(f"sensor://{variables['driver']}/{variables['sensor']}")
            if ch is None:
                raise KeyError(f"no sensor {variables['driver']}/{variables['sensor']}")
            limit = None
            query = variables.get("_query") or ""
            for part in query.split("&"):
                if part.startswith("limit="):
                    try:
                        limit = int(part[6:])
                    except ValueError:
                        raise ValueError("limit must be an integer") from None
            return json.dumps(ch.history_json(limit), ensure_ascii=False)

        def complete(variable: str, prefix: str) -> list[str]:
            if variable == "driver":
                values = sorted({c.driver for c in self.channels.values()})
            elif variable == "sensor":
                values = sorted({c.name for c in self.channels.values()})
            else:
                values = []
            return [v for v in values if v.startswith(prefix)]

        self.registry.add_template(ResourceTemplate(
            uri_template="sensor://{driver}/{sensor}/history", name="sensor-history", title="Sensor history",
            description="The last updates (past the deadband) of a sensor, oldest first; add ?limit=N for the last N.",
            read=history, complete=complete))

    # ---------------------------------------------------------------- health
    def _driver_ok(self, state: DriverState) -> None:
        state.last_ok = time.time()
        if state.status == "degraded":
            log.info("driver %s recovered", state.config.name)
            state.status, state.error = "ok", None
            self._set_warning(state, None)
            self.server.log_all("notice", f"driver {state.config.name} recovered", logger=state.config.name)
            self._health_changed(lists=True)

    def _driver_error(self, state: DriverState, exc: BaseException) -> None:
        state.failures += 1
        state.last_error_at = time.time()
        state.error = f"{type(exc).__name__}: {exc}"
        if state.status != "degraded":
            state.status = "degraded"
            log.error("driver %s failed: %s", state.config.name, state.error)
            self._set_warning(state, state.error)
            self.server.log_all("error", f"driver {state.config.name} failed: {state.error}", logger=state.config.name)
            self._health_changed(lists=True)

    def _tool_failed(self, tool_name: str, exc: BaseException) -> None:
        tool = self.registry.tools.get(tool_name)
        state = self.drivers.get(tool.meta.get("driver", "")) if tool else None
        if state is not None:
            self._driver_error(state, exc)

    def _set_warning(self, state: DriverState, warning: str | None) -> None:
        for tool in self.registry.tools.values():
            if tool.meta.get("driver") == state.config.name:
                tool.warning = warning

    def _health_changed(self, *, lists: bool) -> None:
        if lists:
            self.server.list_changed("tools", "resources")
            self._catalog_changed()
        self.server.resource_updated("device://health")

    def _catalog_changed(self) -> None:
        """The lists changed: the retained presence carries the new ``catalogDigest``."""
        if self.endpoint is not None and self.endpoint.transport is not None:
            self.endpoint.transport.update_meta(CATALOG_DIGEST, catalog_digest(self.server))

    def health(self) -> dict[str, Any]:
        statuses = {s.status for s in self.drivers.values()}
        overall = "ok" if statuses <= {"ok"} else ("failed" if statuses == {"failed"} else "degraded")
        transport = self.endpoint.transport if self.endpoint else None
        link: dict[str, Any] = {"broker": str(parse_broker_url(self.broker_url))}
        if transport is not None:
            full = transport.link_health()
            link = {k: full[k] for k in ("connected", "serving", "refused", "broker", "reconnects", "last_outage_s",
                                         "rtt_ms")}
            link["outbox"] = full["outbox"]["messages"]
        return {
            "status": overall,
            "server_name": self.config.device.server_name if transport is None else transport.server_name,
            "uptime_s": round(time.time() - self.started_at, 1),
            "drivers": {name: s.to_json() for name, s in self.drivers.items()},
            "sessions": len(self.server.sessions),
            "link": link,
        }

    def info(self) -> dict[str, Any]:
        dev = self.config.device
        drivers = []
        for name, state in self.drivers.items():
            drivers.append({
                "name": name, "kind": state.config.kind, "status": state.status,
                "tools": [t.name for t in self.registry.tools.values() if t.meta.get("driver") == name],
                "sensors": [{"uri": c.uri, "unit": c.unit, "poll_interval_s": c.poll_interval, "deadband": c.deadband}
                            for c in self.channels.values() if c.driver == name],
            })
        return {"server_name": dev.server_name, "server_id": dev.server_id, "description": dev.description,
                "location": dev.location, "version": __version__, "simulated": dev.simulate, "drivers": drivers}

    # ---------------------------------------------------------------- loops
    async def _poll_once(self, ch: SensorChannel, *, fresh: bool = False) -> None:
        try:
            _, updated = await ch.get(fresh=fresh)
        except Exception:
            return  # recorded in the driver's health by _read_sensor
        if updated:
            self.server.resource_updated(ch.uri)

    async def _poll(self, ch: SensorChannel) -> None:
        assert ch.poll_interval
        while True:
            await self._poll_once(ch)
            await asyncio.sleep(max(ch.poll_interval, ch.min_interval, 0.05))

    async def _retry_failed(self) -> None:
        while True:
            await asyncio.sleep(DRIVER_RETRY_S)
            for state in self.drivers.values():
                if state.status == "failed" and await self._start_driver(state):
                    log.info("driver %s started after %d failure(s)", state.config.name, state.failures)
                    for ch in self.channels.values():
                        if ch.driver == state.config.name and ch.poll_interval:
                            self._tasks.append(asyncio.get_running_loop().create_task(self._poll(ch)))
                    self.server.log_all("notice", f"driver {state.config.name} started", logger=state.config.name)
                    self._health_changed(lists=True)

    # ---------------------------------------------------------------- start / stop
    async def start(self, *, connect_timeout: float | None = 30.0) -> None:
        """Build drivers, connect, publish presence, start polling.

        Raises:
            TransportError: the broker refused us or did not answer within ``connect_timeout`` s.
        """
        loop = asyncio.get_running_loop()
        await self._build()
        if self.jobs:  # tasks first: a job an agent crash left running is stopped or resumed now, broker or not
            self.task_manager = TaskManager(self.server, TaskStore(self.config.store.path if self.config.store
                                                                   else ":memory:"), self.jobs.get)
            await self.task_manager.recover()
        dev = self.config.device
        meta: dict[str, Any] = {"version": __version__, "implementation": "edge-agent"}
        if dev.location:
            meta["location"] = dev.location
        rbac = self.config.rbac.advertise((t.name, t.annotations) for t in self.registry.tools.values())
        if rbac is not None:
            meta["rbac"] = rbac
        meta[CATALOG_DIGEST] = catalog_digest(self.server)
        store_cfg = self.config.store
        # write-behind with group commit (off the loop): whoever needs a write on disk before it
        # goes on waits for it (edge_agent.device.store: after_write; the PUBACK of a request)
        self.store = await asyncio.to_thread(Store, store_cfg.path if store_cfg else ":memory:",
                                             synchronous=store_cfg.synchronous if store_cfg else "NORMAL")
        self.endpoint = Endpoint.create(
            self.server, store=self.store, server_id=dev.server_id, server_name=dev.server_name,
            description=dev.description, meta=meta, brokers=[parse_broker_url(u) for u in self.broker_urls],
            loop=loop, settings=self.config.link,
            username=self.config.broker.username, password=self.config.broker.password,
            tls=TlsSettings(ca_file=self.config.broker.ca_file, cert_file=self.config.broker.cert_file,
                            key_file=self.config.broker.key_file, insecure=self.config.broker.tls_insecure),
        )
        await self.endpoint.start(connect_timeout)
        for ch in self.channels.values():
            if ch.poll_interval:
                self._tasks.append(loop.create_task(self._poll(ch)))
        self._tasks.append(loop.create_task(self._retry_failed()))
        # Everything built so far lives as long as the agent: move it out of the collector's
        # way, so full collections stay short (they caused the 15-25 ms latency outliers).
        gc.collect()
        gc.freeze()

    async def stop(self) -> None:
        """Clean shutdown: clients told, presence cleared, drivers closed."""
        for task in self._tasks:
            task.cancel()
        if self.endpoint is not None:
            await self.endpoint.stop()
        if self.task_manager is not None:  # running jobs stopped (hardware safe) before drivers close
            await self.task_manager.close()
        # closing hardware and the store's last writes block: in a worker thread, in this order
        for state in self.drivers.values():
            if state.driver is not None:
                await asyncio.to_thread(_close_quietly, state.driver)
        for context in self._contexts.values():
            await asyncio.to_thread(_close_quietly, context)  # a simulated backend's shared pin factory
        if self.store is not None:
            await asyncio.to_thread(self.store.close)


def _check_deadline(state: DriverState, spec: ToolSpec, ctx: ToolContext) -> None:
    if ctx.deadline is not None and time.time() > ctx.deadline:
        # it waited for the driver past its deadline: a stale actuation is worse than none
        raise ToolInputError(stale_message(f"{state.config.name}_{spec.name}", ctx.deadline))


def _label(dc: DriverConfig) -> str:
    """How a driver introduces itself in tool and resource descriptions."""
    return f"{dc.description} ({dc.name}, {dc.kind})" if dc.description else f"{dc.name} ({dc.kind})"


def _construct(cls: type[Driver], dc: DriverConfig, context: DriverContext) -> tuple[Driver, list[ToolSpec],
                                                                                  list[SensorSpec]]:
    """A driver and its tool and sensor specs (worker thread). A driver that fails after its
    constructor is closed before the exception goes on."""
    driver = cls(dc.name, dc.options, context=context)
    try:
        return driver, list(driver.tools()), list(driver.sensors())
    except BaseException:
        _close_quietly(driver)
        raise


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception as exc:  # closing must not stop the shutdown
        log.warning("closing %r failed: %s", obj, exc)


def _driver_context(config: Config, simulated: bool) -> DriverContext:
    """The drivers' context: the simulated backend or the hardware one, chosen here once."""
    dev = config.device
    state_dir = dev.state_dir
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError:
        import tempfile
        state_dir = tempfile.mkdtemp(prefix="edge-agent-")
        log.warning("state_dir %s is not writable; using %s", dev.state_dir, state_dir)
    if simulated:
        return DriverContext.simulated(state_dir=state_dir)
    return DriverContext.hardware(state_dir=state_dir)


def _instructions(config: Config) -> str:
    dev = config.device
    where = f" at {dev.location}" if dev.location else ""
    return (f"{dev.description}{where}. Sensor readings are resources sensor://<driver>/<sensor> "
            "(JSON with value, unit, timestamp; subscribe for updates) and their history is "
            "sensor://<driver>/<sensor>/history. Actuators are tools named <driver>_<action>; "
            "device://health tells which hardware is failing.")
