"""One protocol core on the Pi and on the board: the same recorded transcripts give the same
answers from the Pi's server (:class:`edge_agent.server.McpServer`, CPython) and from the
board library (``micropython/edgemcp``, built from the same ``edge_agent/core`` files) running
under the real MicroPython interpreter (the WebAssembly port, as tests/test_micropython_board.py
uses it).

The tools of a transcript are declared once, in the board's compact form; the Pi side gets the
same ``inputSchema`` from the board's own :func:`schema` function, so any difference in an
answer is a difference in the rules, not in the declarations.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge_agent.server import McpServer, Registry, ServerInfo, Tool
from tests.test_fuzz_micropython import _load
from tests.test_micropython_board import HOST, node_binary

ROOT = Path(__file__).resolve().parents[1]
TRANSCRIPTS = sorted((ROOT / "tests" / "transcripts").glob("*.json"))


def _tool(name: str):
    async def handler(arguments: dict[str, Any], ctx: Any) -> Any:
        if name == "fails":
            raise OSError("sensor unplugged")
        if name == "refuses":
            raise ValueError("no such thing")
        return arguments
    return handler


def run_pi(transcript: dict[str, Any]) -> list[dict[str, Any]]:
    board_mcp = _load("mcp")
    registry = Registry()
    for name, spec in transcript["tools"].items():
        schema = board_mcp.schema({k: tuple(v) for k, v in spec["params"].items()})
        registry.add_tool(Tool(name, spec["description"], schema, _tool(name)))
    out: list[dict[str, Any]] = []

    async def main() -> None:
        server = McpServer(registry, ServerInfo("parity", "1"), reply_cache=0)
        session = server.open_session("c1", out.append)
        for step in transcript["steps"]:
            await server.handle(session, step.encode() if isinstance(step, str) else step)
            await settled()  # each step answered before the next, as on the board

    async def settled() -> None:
        """Until every task but this one has finished (the transcripts' tools never block)."""
        me = asyncio.current_task()
        async with asyncio.timeout(10):
            while pending := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
                await asyncio.wait(pending)

    asyncio.run(main())
    return out


def run_board(transcript: dict[str, Any]) -> list[dict[str, Any]]:
    code = "TRANSCRIPT = %r\n" % json.dumps(transcript) + (ROOT / "tests" / "parity_board.py").read_text()
    proc = subprocess.run([node_binary(), str(HOST / "board.mjs"), "--exec", code], capture_output=True, text=True,
                          timeout=120)
    assert "DONE" in proc.stdout, proc.stdout + proc.stderr
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("ANSWER ")]


def normalise(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Answers by id (a list of answers with a null id, in order); initialize's result reduced
    to its protocolVersion."""
    by_id: dict[str, Any] = {}
    for a in answers:
        key = json.dumps(a.get("id"))
        if isinstance(a.get("result"), dict) and "protocolVersion" in a["result"]:
            a = {**a, "result": {"protocolVersion": a["result"]["protocolVersion"]}}
        by_id.setdefault(key, []).append(a)
    return by_id


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_pi_and_board_answer_a_transcript_identically(path: Path) -> None:
    transcript = json.loads(path.read_text(encoding="utf-8"))
    pi = normalise(run_pi(transcript))
    board = normalise(run_board(transcript))
    assert set(pi) == set(board), f"answered ids differ: Pi {sorted(pi)} board {sorted(board)}"
    for key in pi:
        assert pi[key] == board[key], f"id {key}: Pi and board disagree"
    # and the transcript tests something: every kind of answer occurs
    flat = [a for answers in pi.values() for a in answers]
    codes = {a["error"]["code"] for a in flat if "error" in a}
    assert {-32700, -32600, -32601, -32602, -32002} <= codes, codes
    assert any(a.get("result", {}).get("isError") is True for a in flat)
    assert any(a.get("result", {}).get("isError") is False for a in flat)


def test_core_modules_are_the_boards() -> None:
    """The board library has no protocol core of its own: edgemcp/core is edge_agent/core."""
    link = ROOT / "micropython" / "edgemcp" / "core"
    assert link.resolve() == (ROOT / "edge_agent" / "core").resolve()
    core = importlib.import_module("edge_agent.core.dispatch")
    assert _load("mcp").Dispatcher.__module__.endswith("core.dispatch") and core.Dispatcher
