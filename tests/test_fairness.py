"""Fairness under load (issue 12 item 7): a per-client bound on requests being handled; what
exceeds it is answered at once with a clear JSON-RPC error (-32004), not queued without limit,
and another client is still served. (Latency figures: ``bench/recovery.py --scenarios fairness``.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent

from .raw_client import RawMcpClient

NAME, SID = "devices/lab/fair", "fair-1"


def test_a_flood_is_bounded_per_client_and_refused_clearly(broker, tmp_path):
    data = {"device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "s")},
            "link": {"max_inflight_per_client": 8},
            "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17}]}

    async def go():
        agent = Agent(cfg.from_dict(data), broker_url=broker.url)
        await agent.start(connect_timeout=20)
        flooder = await asyncio.to_thread(RawMcpClient, broker.url, "flooder", SID, NAME)
        quiet = await asyncio.to_thread(RawMcpClient, broker.url, "quiet", SID, NAME)
        try:
            await asyncio.to_thread(flooder.initialize)
            await asyncio.to_thread(quiet.initialize)
            n = 400
            for i in range(n):  # pipelined, nothing awaited
                flooder.send("ping", id=f"f{i}")
            t0 = time.monotonic()
            reply = await asyncio.to_thread(quiet.request, "ping", None, 10)
            assert reply.get("result") == {}, reply
            quiet_s = time.monotonic() - t0
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                answered = [r for r in flooder.received if r.message and str(r.message.get("id", "")).startswith("f")]
                if len(answered) >= n:
                    break
                await asyncio.sleep(0.05)
            refused = [r.message for r in answered if "error" in r.message]
            assert len(answered) == n, f"{n - len(answered)} requests of the flood never answered"
            assert refused, "nothing refused: the bound did not hold"
            assert all(m["error"]["code"] == -32004 and "Too many requests in flight (8)" in m["error"]["message"]
                       for m in refused), refused[:3]
            assert agent.endpoint._pending.get("flooder", 0) == 0
            print(f"\nflood of {n}: {n - len(refused)} answered, {len(refused)} refused with -32004; "
                  f"the quiet client's ping meanwhile {1000 * quiet_s:.0f} ms")
        finally:
            await asyncio.to_thread(flooder.close)
            await asyncio.to_thread(quiet.close)
            await agent.stop()

    asyncio.run(go())


@pytest.mark.parametrize("profile", ["lan", "unreliable"])
def test_answers_queued_for_the_broker_count_against_the_bound(broker, tmp_path, profile):
    """A client that sends faster than its answers drain (QoS 1 answers wait behind the broker's
    Receive Maximum) is refused, not queued in the agent's heap: its answers handed to paho or
    waiting for a slot of the in-flight window never exceed its in-flight bound, and the
    refusals go out at QoS 0 (issue 13 item 4)."""
    bound = 8
    data = {"device": {"server_name": NAME, "server_id": SID, "simulate": True, "state_dir": str(tmp_path / "s")},
            "link": {"profile": profile, "max_inflight_per_client": bound},
            "drivers": [{"kind": "relay", "name": "pump_relay", "pin": 17}]}

    async def go():
        agent = Agent(cfg.from_dict(data), broker_url=broker.url)
        await agent.start(connect_timeout=20)
        transport = agent.endpoint.transport
        flooder = await asyncio.to_thread(RawMcpClient, broker.url, "flooder-q", SID, NAME)
        try:
            await asyncio.to_thread(flooder.initialize)
            n, most = 600, 0
            for i in range(n):  # pipelined; tools/list answers are ~1 KB each
                flooder.send("tools/list", id=f"f{i}")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                most = max(most, transport.backlog("flooder-q"))
                answered = [r for r in flooder.received if r.message and str(r.message.get("id", "")).startswith("f")]
                if len(answered) >= n:
                    break
                await asyncio.sleep(0.001)  # (a bare sleep(0) spin holds the GIL from the flooder's paho thread)
            refused = [r for r in answered if "error" in r.message]
            assert len(answered) == n, f"{n - len(answered)} requests of the flood never answered"
            assert refused and all(r.message["error"]["code"] == -32004 for r in refused)
            # the bound, plus at most one refusal: a refusal while the client's answers are all
            # still being handled (none queued) goes at the profile's QoS and is queued itself;
            # the next ones see it and go at QoS 0
            assert 0 < most <= bound + 1, most
            drained = time.monotonic() + 10  # (the broker's last PUBACKs may still be on their way)
            while transport.backlog("flooder-q") and time.monotonic() < drained:
                await asyncio.sleep(0.01)
            assert transport.backlog("flooder-q") == 0
            print(f"\n{profile}: flood of {n} tools/list: {n - len(refused)} answered, {len(refused)} refused; "
                  f"at most {most} answers queued for the broker (bound {bound})")
        finally:
            await asyncio.to_thread(flooder.close)
            await agent.stop()

    asyncio.run(go())
