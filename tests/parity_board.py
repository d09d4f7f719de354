# Runs tests/transcripts/<name>.json through the board library under MicroPython (read by
# tests/test_core_parity.py, which passes the transcript as TRANSCRIPT) and prints each answer
# as one JSON line.
import asyncio
import json

from edgemcp import mcp

T = json.loads(TRANSCRIPT)  # noqa: F821 (set by the test)


class Out:
    async def send(self, sid, msg):
        print("ANSWER " + json.dumps(msg))

    async def broadcast(self, msg):
        pass


def tool(name):
    def fn(**args):
        if name == "fails":
            raise OSError("sensor unplugged")
        if name == "refuses":
            raise ValueError("no such thing")
        return args
    return fn


async def main():
    s = mcp.Server("parity", "1")
    s.log = lambda *a: None
    for name, spec in T["tools"].items():
        s.add_tool(name, spec["description"], {k: tuple(v) for k, v in spec["params"].items()}, tool(name))
    session = s.open_session("c1", Out())
    for step in T["steps"]:
        await s.handle(session, step.encode() if isinstance(step, str) else step)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    print("DONE")

asyncio.run(main())
