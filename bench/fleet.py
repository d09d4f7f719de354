"""Fleet benchmark: the gateway in front of N simulated devices, through a real broker.

    python bench/fleet.py [--sizes 100,1000] [--calls 500] [--strategy S] [--eager] [--keep-log]

For each N:

1. A fresh local Mosquitto (the soft ``RLIMIT_NOFILE`` is raised to the hard limit first; the
   broker inherits it), then N simulated devices in *this* process
   (:mod:`edge_agent.testing.fleet_sim`: each its own MQTT connection, retained presence, will
   and MCP server core; all paho clients driven from the one asyncio loop, no thread each).
2. The gateway as a child process over stdio (``python -m edge_agent gateway``), driven by the
   official ``mcp`` client. Times: spawn → ``initialize`` answered, and spawn → a
   ``tools/list`` (all pages) that names all N devices. With the default lazy sessions that
   first complete listing also initializes a session with every device.
3. The gateway's memory (VmRSS and VmHWM from /proc/<pid>/status) once it lists them all.
4. ``tools/call`` latency through the gateway: ``--calls`` sequential ``echo`` calls to
   random devices (p50, p99, mean), and throughput with 16 calls in flight for 3 s.
5. Prints a markdown table; exits 1 with a message naming the failed step.

Everything shares one machine: this process (the N devices and the client), Mosquitto and the
gateway compete for the same cores, so the numbers are an upper bound on the gateway's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import anyio
    import mcp_types as types
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
except ImportError:  # pragma: no cover
    sys.exit("bench: needs the [cloud] extra (make setup, then run it with .venv/bin/python; or pip install -e '.[dev]' in a venv)")

from edge_agent.cloud import connect
from edge_agent.gateway.names import join_name
from edge_agent.testing.broker import LocalBroker
from edge_agent.testing.fleet_sim import LoopDriver, SimDevice, start_fleet

NAME_PREFIX = "devices/sim"
META_SERVER_NAME = "edge-agent/server-name"
LIST_TIMEOUT = 300.0
CONCURRENCY = 16
THROUGHPUT_SECONDS = 3.0


class BenchError(Exception):
    """A step failed; the message says which and why."""


@dataclass
class Row:
    n: int
    devices_up_s: float
    initialized_s: float
    listed_s: float
    tools: int
    rss_mb: float
    hwm_mb: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    calls_per_s: float
    direct_p50_ms: float
    direct_p99_ms: float


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


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


async def direct_latencies(broker_url: str, names: list[str], calls: int) -> list[float]:
    """Baseline without the gateway: the official client over MQTT (``edge_agent.cloud.connect``)
    to one device, the same ``echo`` call."""
    async with connect(broker_url, names[0]) as session:
        for _ in range(20):
            await session.call_tool("echo", {"text": "warm"})
        out = []
        for _ in range(calls):
            t = time.perf_counter()
            await session.call_tool("echo", {"text": "x"})
            out.append((time.perf_counter() - t) * 1000)
    return sorted(out)


async def run_size(n: int, args: argparse.Namespace, log_dir: Path) -> Row:
    raise_nofile(2 * n + 200)
    with LocalBroker(extra_conf="max_connections -1\n") as broker:
        driver = LoopDriver(asyncio.get_running_loop())
        t = time.perf_counter()
        try:
            devices = await start_fleet(broker.url, n, driver=driver, name_prefix=NAME_PREFIX)
        except (OSError, ConnectionError) as exc:
            raise BenchError(f"starting {n} simulated devices failed: {exc}") from exc
        devices_up = time.perf_counter() - t
        names = [d.server_name for d in devices]
        try:
            return await measure(n, broker.url, devices, names, devices_up, args, log_dir)
        finally:
            for d in devices:
                d.kill()
            driver.close()


async def measure(n: int, broker_url: str, devices: list[SimDevice], names: list[str], devices_up: float,
                  args: argparse.Namespace, log_dir: Path) -> Row:
    extra = ["--strategy", args.strategy] + (["--eager"] if args.eager else [])
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "edge_agent", "gateway", "--broker", broker_url, *extra])
    log_path = log_dir / f"gateway-{n}.log"
    with open(log_path, "w") as errlog:
        t0 = time.perf_counter()
        async with stdio_client(params, errlog=errlog) as (read, write), \
                ClientSession(read, write, read_timeout_seconds=LIST_TIMEOUT) as session:
            await session.initialize()
            initialized = time.perf_counter() - t0
            wanted = set(names)
            with anyio.fail_after(LIST_TIMEOUT):
                while True:
                    tools = await list_all_tools(session)
                    seen = {(t.meta or {}).get(META_SERVER_NAME) for t in tools}
                    if wanted <= seen:
                        break
                    await anyio.sleep(0.1)
            listed = time.perf_counter() - t0
            mem = proc_status(find_gateway_pid())

            rng = random.Random(1)
            tool_names = [join_name(name, "echo") for name in names]
            for name in tool_names[:20]:  # warm-up
                await session.call_tool(name, {"text": "warm"})
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
    direct = await direct_latencies(broker_url, names, args.calls)
    if not args.keep_log:
        log_path.unlink(missing_ok=True)
    return Row(direct_p50_ms=percentile(direct, 0.5), direct_p99_ms=percentile(direct, 0.99),
               n=n, devices_up_s=devices_up, initialized_s=initialized, listed_s=listed, tools=len(tools),
               rss_mb=mem["VmRSS"] / 1024, hwm_mb=mem["VmHWM"] / 1024,
               p50_ms=percentile(latencies, 0.5), p99_ms=percentile(latencies, 0.99),
               mean_ms=statistics.fmean(latencies), calls_per_s=rate)


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(f"\n## Gateway fleet benchmark ({platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, strategy {args.strategy}, {'eager' if args.eager else 'lazy'} sessions)\n")
    print("| devices | devices up (s) | gateway initialize (s) | all listed (s) | tools listed | gateway RSS (MB) "
          "| RSS peak (MB) | tools/call p50 (ms) | p99 (ms) | mean (ms) | calls/s (16 in flight) "
          "| direct p50 / p99 (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.n} | {r.devices_up_s:.2f} | {r.initialized_s:.2f} | {r.listed_s:.2f} | {r.tools} | "
              f"{r.rss_mb:.1f} | {r.hwm_mb:.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.mean_ms:.2f} | "
              f"{r.calls_per_s:.0f} | {r.direct_p50_ms:.2f} / {r.direct_p99_ms:.2f} |")
    print("\n'all listed' counts from spawning the gateway process until one tools/list (all pages) names every "
          "device; with lazy sessions it includes initializing a session with each of them. 'direct' is the "
          "same call without the gateway: the official client over MQTT to one device.")
    load = os.getloadavg()
    print(f"Load average while measuring: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.")


async def main_async(args: argparse.Namespace) -> int:
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        print(f"bench: {n} devices ...", file=sys.stderr, flush=True)
        rows.append(await run_size(n, args, log_dir))
    print_table(rows, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The gateway in front of N simulated devices (see the module docstring).")
    p.add_argument("--sizes", default="100,1000", type=lambda s: [int(x) for x in s.split(",")],
                   help="fleet sizes to measure, comma-separated (default 100,1000)")
    p.add_argument("--calls", type=int, default=500, help="sequential tools/call for the latency (default 500)")
    p.add_argument("--strategy", default="least-outstanding", choices=["random", "round-robin", "least-outstanding"])
    p.add_argument("--eager", action="store_true", help="run the gateway with --eager")
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
