"""Fleet benchmark: the gateway in front of N simulated devices, through a real, default-configured Mosquitto.

    python bench/fleet.py [--sizes 1000,10000] [--repeat 3] [--calls 300] [--expose flat] [--keep-log]

For each N:

1. A fresh local Mosquitto with its default limits (``max_queued_messages`` 1000,
   ``max_inflight_messages`` 20; the soft ``RLIMIT_NOFILE`` is raised to the hard limit first,
   the broker inherits it), then N simulated devices in a child process of their own
   (:mod:`edge_agent.testing.fleet_sim`: each its own MQTT connection, retained presence with
   its catalog digest, will and MCP server core; all paho clients driven from one asyncio
   loop, no thread each): they stand for other machines, so the client measured here does not
   share its event loop and garbage collector with them.
2. ``edge-agent devices --json`` as a child process, ``--repeat`` times: wall time from spawn
   to exit, and how many devices it listed (all N, or the run fails).
3. ``--repeat`` times: the gateway as a child process over stdio (``python -m edge_agent
   gateway``) with an *empty* catalog cache folder, driven by the official ``mcp`` client:
   *cold* = from the first ``tools/list`` (sent once ``initialize`` is answered) until the
   pages name every device; *warm* = the same listing again on that session; *from spawn* =
   spawning the process until the cold listing is complete. Then the gateway's RSS
   (VmRSS/VmHWM). Then *restart*: a new gateway process with the cache folder the first one
   filled (no ``initialize`` at all), cold listing time.
4. ``tools/call`` through the gateway: ``--calls`` sequential ``echo`` calls to random devices
   (p50, p99; each device's first call opens its session), and calls/s with 16 in flight for 3 s
   to random devices across the fleet.
5. Prints a markdown table of medians (min-max); exits 1 with a message naming the failed step.

Everything shares one machine: this process (the N devices and the client), Mosquitto and the
gateway compete for the same cores, so the numbers are an upper bound on the gateway's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

try:
    import anyio
    import mcp_types as types
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
except ImportError:  # pragma: no cover
    sys.exit("bench: needs the [cloud] extra (make setup, then run it with .venv/bin/python; or pip install -e '.[dev]' in a venv)")

from edge_agent.gateway.names import join_name
from edge_agent.testing.broker import LocalBroker
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice, start_fleet

NAME_PREFIX = "devices/sim"
META_SERVER_NAME = "edge-agent/server-name"
LIST_TIMEOUT = 300.0
CONCURRENCY = 16
THROUGHPUT_SECONDS = 3.0
TARGETS = {1000: (2.0, 0.3), 10000: (15.0, 2.0)}  # N -> (cold s, warm s), docs/fleet.md
RSS_TARGET_MB = 150.0


class BenchError(Exception):
    """A step failed; the message says which and why."""


@dataclass
class Run:
    """One gateway process's figures."""

    raw_cold_s: float
    raw_warm_s: float
    spawn_to_listed_s: float
    cold_s: float
    warm_s: float
    restart_cold_s: float
    tools: int
    rss_mb: float
    hwm_mb: float
    p50_ms: float
    p99_ms: float
    calls_per_s: float


@dataclass
class Row:
    n: int
    devices_up_s: float
    devices_cmd_s: list[float] = field(default_factory=list)
    devices_listed: list[int] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)


def raise_nofile(needed: int) -> int:
    """Raise the soft open-files limit to the hard one; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < needed:
        raise BenchError(f"ulimit -n is {soft}; {needed} file descriptors are needed (raise the hard limit)")
    return soft


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of ``pid`` in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def find_gateway_pid() -> int:
    """The child process running ``edge_agent gateway`` (spawned by the stdio client)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == me and b"gateway" in cmdline and b"edge_agent" in cmdline:
            return int(entry.name)
    raise BenchError("cannot find the gateway process")


async def list_all_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor = None
    while True:
        page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            return tools


async def listing(session: ClientSession, wanted: set[str]) -> tuple[float, list[types.Tool]]:
    """Seconds until one full tools/list names every wanted device (repeated while some are missing)."""
    t = time.perf_counter()
    with anyio.fail_after(LIST_TIMEOUT):
        while True:
            tools = await list_all_tools(session)
            if wanted <= {(x.meta or {}).get(META_SERVER_NAME) for x in tools}:
                return time.perf_counter() - t, tools
            await anyio.sleep(0.05)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def devices_command(broker_url: str, n: int) -> tuple[float, int]:
    """``edge-agent devices --json`` in a child process: (seconds from spawn to exit, devices listed)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edge_agent", "devices", "--broker", broker_url, "--json",
                           "--timeout", "120"], capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise BenchError(f"edge-agent devices failed ({done.returncode}): {done.stderr[-500:]}")
    if "warning" in done.stderr:
        print(f"bench: edge-agent devices: {done.stderr.strip()}", file=sys.stderr)
    return elapsed, len(json.loads(done.stdout))


def run_devices(broker_url: str, n: int, conn: Connection) -> None:
    """The simulated fleet's own process (they stand for other machines: the client measured
    here must not share its event loop and collector with 10,000 paho clients). Sends
    ("up", seconds) or ("error", message), then runs until anything arrives on ``conn``."""
    async def body() -> None:
        driver = LoopDriver(asyncio.get_running_loop())
        t = time.perf_counter()
        try:
            devices = await start_fleet(broker_url, n, driver=driver, name_prefix=NAME_PREFIX, batch=200)
        except (OSError, ConnectionError) as exc:
            conn.send(("error", f"starting {n} simulated devices failed: {exc}"))
            return
        gc.collect()
        gc.freeze()
        conn.send(("up", time.perf_counter() - t))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        for d in devices:
            d.kill()
        driver.close()

    raise_nofile(n + 500)
    anyio.run(body)


def fleet_names(n: int) -> list[str]:
    """The server-names :func:`start_fleet` gives N devices."""
    width = max(4, len(str(n - 1)))
    return [f"{NAME_PREFIX}/dev-{i:0{width}d}" for i in range(n)]


async def run_size(n: int, args: argparse.Namespace, log_dir: Path) -> Row:
    raise_nofile(n + 500)
    with LocalBroker() as broker:  # Mosquitto's defaults: no limit raised
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        fleet = ctx.Process(target=run_devices, args=(broker.url, n, theirs), daemon=True)
        fleet.start()
        status, value = await asyncio.get_running_loop().run_in_executor(None, ours.recv)
        if status != "up":
            raise BenchError(str(value))
        row = Row(n=n, devices_up_s=float(value))
        try:
            for _ in range(args.repeat):
                elapsed, listed = await asyncio.to_thread(devices_command, broker.url, n)
                row.devices_cmd_s.append(elapsed)
                row.devices_listed.append(listed)
                if listed != n:
                    raise BenchError(f"edge-agent devices listed {listed} of {n} devices")
            for i in range(args.repeat):
                print(f"bench: {n} devices, gateway run {i + 1} of {args.repeat} ...", file=sys.stderr, flush=True)
                row.runs.append(await measure(n, broker.url, fleet_names(n), args, log_dir))
            return row
        finally:
            ours.send("stop")
            fleet.join(30)
            if fleet.is_alive():
                fleet.kill()


class RawClient:
    """The gateway alone: JSON-RPC lines over its stdio, parsed with json.loads (no SDK on this side)."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.next_id = 0

    async def request(self, method: str, params: dict | None = None) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method, **({"params": params} if params else {})}
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        await self.proc.stdin.drain()
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise BenchError(f"the gateway closed stdout during {method}")
            answer = json.loads(line)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise BenchError(f"{method}: {answer['error']}")
                return answer["result"]

    async def notify(self, method: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": method}).encode() + b"\n")
        await self.proc.stdin.drain()

    async def listing(self, wanted: set[str]) -> float:
        t = time.perf_counter()
        while True:
            seen: set[str] = set()
            cursor = None
            while True:
                page = await self.request("tools/list", {"cursor": cursor} if cursor else None)
                seen.update((x.get("_meta") or {}).get(META_SERVER_NAME) for x in page["tools"])
                cursor = page.get("nextCursor")
                if not cursor:
                    break
            if wanted <= seen:
                return time.perf_counter() - t
            if time.perf_counter() - t > LIST_TIMEOUT:
                raise BenchError(f"the gateway listed {len(seen & wanted)} of {len(wanted)} devices")
            await asyncio.sleep(0.05)


async def raw_run(broker_url: str, wanted: set[str], args: argparse.Namespace, errlog) -> tuple[float, float]:
    """(cold, warm) listing seconds of a new gateway with an empty cache, read by :class:`RawClient`."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-catalogs-") as cache:
        p = gateway_params(broker_url, cache, args)
        proc = await asyncio.create_subprocess_exec(p.command, *p.args, stdin=subprocess.PIPE,
                                                    stdout=subprocess.PIPE, stderr=errlog, limit=1 << 26)
        try:
            raw = RawClient(proc)
            await raw.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                             "clientInfo": {"name": "bench-raw", "version": "1"}})
            await raw.notify("notifications/initialized")
            cold = await raw.listing(wanted)
            warm = await raw.listing(wanted)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
    return cold, warm


def gateway_params(broker_url: str, cache: str, args: argparse.Namespace) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[
        "-m", "edge_agent", "gateway", "--broker", broker_url, "--catalog-cache", cache, "--expose", args.expose])


async def measure(n: int, broker_url: str, names: list[str], args: argparse.Namespace, log_dir: Path) -> Run:
    wanted = set(names)
    log_path = log_dir / f"gateway-{n}.log"
    with tempfile.TemporaryDirectory(prefix="edge-agent-catalogs-") as cache, open(log_path, "w") as errlog:
        raw_cold, raw_warm = await raw_run(broker_url, wanted, args, errlog)
        t0 = time.perf_counter()
        async with stdio_client(gateway_params(broker_url, cache, args), errlog=errlog) as (read, write), \
                ClientSession(read, write, read_timeout_seconds=LIST_TIMEOUT) as session:
            await session.initialize()
            cold, tools = await listing(session, wanted)
            spawn_to_listed = time.perf_counter() - t0
            warm, _ = await listing(session, wanted)
            mem = proc_status(find_gateway_pid())

            rng = random.Random(1)
            tool_names = [join_name(name, "echo") for name in names]
            latencies = []
            for _ in range(args.calls):
                name = rng.choice(tool_names)
                t = time.perf_counter()
                result = await session.call_tool(name, {"text": "x"})
                latencies.append((time.perf_counter() - t) * 1000)
                if result.is_error:
                    raise BenchError(f"{name} failed: {result.content}")
            latencies.sort()

            done = 0
            stop_at = time.perf_counter() + THROUGHPUT_SECONDS

            async def caller(seed: int) -> None:
                nonlocal done
                r = random.Random(seed)
                while time.perf_counter() < stop_at:
                    await session.call_tool(r.choice(tool_names), {"text": "y"})
                    done += 1

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(CONCURRENCY):
                    tg.start_soon(caller, i)
            rate = done / (time.perf_counter() - started)
        # a restarted gateway: the catalog cache folder is filled, no device is asked
        async with stdio_client(gateway_params(broker_url, cache, args), errlog=errlog) as (read, write), \
                ClientSession(read, write, read_timeout_seconds=LIST_TIMEOUT) as session:
            await session.initialize()
            restart_cold, _ = await listing(session, wanted)
    if not args.keep_log:
        log_path.unlink(missing_ok=True)
    return Run(raw_cold_s=raw_cold, raw_warm_s=raw_warm, spawn_to_listed_s=spawn_to_listed, cold_s=cold, warm_s=warm, restart_cold_s=restart_cold,
               tools=len(tools), rss_mb=mem["VmRSS"] / 1024, hwm_mb=mem["VmHWM"] / 1024,
               p50_ms=percentile(latencies, 0.5), p99_ms=percentile(latencies, 0.99), calls_per_s=rate)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min-max)``."""
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(f"\n## Gateway fleet benchmark ({platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, default Mosquitto, --expose {args.expose}, median (min-max) of "
          f"{args.repeat})\n")
    print("| devices | devices up (s) | `edge-agent devices` (s) | listed | tools | cold, gateway alone (s) "
          "| warm, gateway alone (s) | cold, official client (s) | warm, official client (s) "
          "| restart, cache on disk (s) | spawn to listed (s) | gateway RSS (MB) | RSS peak (MB) "
          "| tools/call p50 / p99 (ms) | calls/s (16 in flight) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        runs = r.runs
        print(f"| {r.n} | {r.devices_up_s:.1f} | {spread(r.devices_cmd_s)} | {min(r.devices_listed)} "
              f"| {runs[0].tools} | {spread([x.raw_cold_s for x in runs])} | {spread([x.raw_warm_s for x in runs])} "
              f"| {spread([x.cold_s for x in runs])} | {spread([x.warm_s for x in runs])} "
              f"| {spread([x.restart_cold_s for x in runs])} | {spread([x.spawn_to_listed_s for x in runs])} "
              f"| {spread([x.rss_mb for x in runs], '{:.0f}')} | {spread([x.hwm_mb for x in runs], '{:.0f}')} "
              f"| {statistics.median(x.p50_ms for x in runs):.2f} / {statistics.median(x.p99_ms for x in runs):.2f} "
              f"| {spread([x.calls_per_s for x in runs], '{:.0f}')} |")
    print("\n'cold': a new gateway with an empty catalog cache, from its first tools/list (after initialize) until "
          "the pages name every device; 'warm': the same listing again; 'gateway alone': read by a raw JSON-RPC "
          "client (json.loads, no SDK); 'official client': the mcp SDK's ClientSession (which validates every tool "
          "twice); 'restart': a new gateway whose cache folder the first one filled (official client). tools/call "
          "goes to random devices, each opening its session on first use.")
    for r in rows:
        target = TARGETS.get(r.n)
        if target is None:
            continue
        rss = statistics.median(x.rss_mb for x in r.runs)
        extra = f"; RSS {rss:.0f} MB (target <= {RSS_TARGET_MB:.0f})" if r.n >= 10000 else ""
        for label, cold_of, warm_of in (("gateway alone", "raw_cold_s", "raw_warm_s"),
                                        ("official client", "cold_s", "warm_s")):
            cold = statistics.median(getattr(x, cold_of) for x in r.runs)
            warm = statistics.median(getattr(x, warm_of) for x in r.runs)
            verdict = "met" if cold <= target[0] and warm <= target[1] and min(r.devices_listed) == r.n else "MISSED"
            print(f"Targets at {r.n} ({label}): cold <= {target[0]:g} s, warm <= {target[1]:g} s, none missing: "
                  f"{verdict} (cold {cold:.2f}, warm {warm:.2f}){extra}.")
    load = os.getloadavg()
    print(f"Load average while measuring: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.")


async def planted(n: int, args: argparse.Namespace, log_dir: Path) -> None:
    """``--planted N``: N retained presences planted by one client (no device process behind
    them) and the gateway's catalog cache prefilled with their catalog, so nothing needs an
    answer: what presence, discovery and listing cost at sizes this machine cannot run as
    devices (100,000). Prints one table row per mode."""
    from edge_agent.gateway.catalog import CatalogStore
    from edge_agent.server.catalog import catalog, catalog_digest
    from edge_agent.server.mcp import McpServer, ServerInfo
    from edge_agent.testing.fleet_sim import plant_presences, sim_registry

    conf = args.broker_conf.replace("\\n", "\n")
    with LocalBroker(extra_conf=conf) as broker, \
            tempfile.TemporaryDirectory(prefix="edge-agent-catalogs-") as cache, \
            open(log_dir / f"planted-{n}.log", "w") as errlog:
        server = McpServer(sim_registry(SimDevice.__new__(SimDevice)), ServerInfo(name="edge-agent-sim", version="b"))
        CatalogStore(cache).put(catalog_digest(server), catalog(server))
        t = time.perf_counter()
        pairs = await asyncio.to_thread(plant_presences, broker.url, n, name_prefix=NAME_PREFIX,
                                        digest=catalog_digest(server), meta={"location": "greenhouse"})
        planted_s = time.perf_counter() - t
        devices_s, listed = await asyncio.to_thread(devices_command, broker.url, n)
        wanted = {name for _, name in pairs}
        print(f"\n## Planted presences: {n} (one client; Mosquitto {conf.strip() or 'defaults'}; catalog cache "
              "prefilled)\n")
        print(f"planted in {planted_s:.1f} s; `edge-agent devices`: {devices_s:.2f} s, {listed} listed")
        print("\n| mode | first answer (s) | again (s) | gateway RSS (MB) | RSS peak (MB) |")
        print("|---|---:|---:|---:|---:|")
        for expose in ("flat", "catalog"):
            args.expose = expose
            async with stdio_client(gateway_params(broker.url, cache, args), errlog=errlog) as (read, write), \
                    ClientSession(read, write, read_timeout_seconds=LIST_TIMEOUT) as session:
                await session.initialize()
                if expose == "flat":
                    first, _ = await listing(session, wanted)
                    again, _ = await listing(session, wanted)
                else:
                    times = []
                    for _ in range(2):
                        t = time.perf_counter()
                        result = await session.call_tool("find_devices", {"location": "greenhouse", "limit": 10})
                        times.append(time.perf_counter() - t)
                        total = (result.structured_content or {}).get("total")
                        if total != n:
                            raise BenchError(f"find_devices found {total} of {n}")
                    first, again = times
                mem = proc_status(find_gateway_pid())
            label = "flat: full tools/list, official client" if expose == "flat" else "catalog: find_devices"
            print(f"| {label} | {first:.2f} | {again:.2f} | {mem['VmRSS'] / 1024:.0f} | {mem['VmHWM'] / 1024:.0f} |")
        args.expose = "flat"


async def main_async(args: argparse.Namespace) -> int:
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.planted:
        raise_nofile(1000)
        for n in args.planted:
            await planted(n, args, log_dir)
        return 0
    rows = []
    for n in args.sizes:
        print(f"bench: {n} devices ...", file=sys.stderr, flush=True)
        rows.append(await run_size(n, args, log_dir))
    print_table(rows, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The gateway in front of N simulated devices (see the module docstring).")
    p.add_argument("--sizes", default="1000,10000", type=lambda s: [int(x) for x in s.split(",")],
                   help="fleet sizes to measure, comma-separated (default 1000,10000)")
    p.add_argument("--repeat", type=int, default=3, help="gateway runs and devices runs per size (default 3)")
    p.add_argument("--calls", type=int, default=300, help="sequential tools/call for the latency (default 300)")
    p.add_argument("--expose", default="flat", choices=["flat"], help="gateway mode measured (flat: every tool)")
    p.add_argument("--planted", default=None, type=lambda s: [int(x) for x in s.split(",")],
                   help="instead: N retained presences planted by one client (no devices), e.g. 10000,100000")
    p.add_argument("--broker-conf", default="", metavar="LINES",
                   help="with --planted: mosquitto.conf lines (\\n-separated), e.g. 'max_queued_messages 0'")
    p.add_argument("--log-dir", default="/tmp/edge-agent-bench", help="where the gateway's stderr goes")
    p.add_argument("--keep-log", action="store_true", help="keep the gateway's stderr log")
    args = p.parse_args(argv)
    try:
        return anyio.run(main_async, args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
