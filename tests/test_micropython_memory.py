"""The heap budget of the MicroPython subset, measured under MicroPython by bench/mp_memory.py:
the board online and idle plus its most demanding operation (every byte allocated, GC off: an
upper bound) stays under 76 KB under the WebAssembly port.

It was 48 KB (46 KB measured) while the board had its own copy of the protocol rules; built
from the shared core (edge_agent/core, issue 11) the imports cost 48 KB instead of 30 KB of
heap when loaded as .mpy from the filesystem (68 KB budget). Issue 16 raised it to 76 KB (72.6
measured): the persistent session, Receive Maximum, Retain Handling 2, the server/discover
answer, the millisecond timestamp and the optional modules' hooks in device.py cost ~1 KB of
bytecode, and this measurement's import row moves by a few KB with the interpreter's qstr pool
(which grows in chunks, charged to whoever crosses the boundary). The reference figures are
now the fixed-heap, real-GC ones of ``bench/mp_memory.py --fixed`` on a 32-bit unix build
(docs/esp32.md "Memory"), checked by test_fixed_heap_figures when that build is given."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("mp_memory", ROOT / "bench" / "mp_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_heap_is_within_budget():
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the MicroPython interpreter tests need Node >= 18")
    bench = load_bench()
    rows = bench.measure()
    by_what = {r["what"].split(" (")[0].split(":")[0]: r for r in rows}
    print("\n" + bench.table(rows))
    operations = [r for r in rows if r["live_peak"] is not None]
    assert len(operations) == 5 and not any("INCOMPLETE" in r["note"] for r in rows)
    assert by_what["import edgemcp"]["bytes"] < 58 * 1024
    # 10 KB per operation until board4: initialize now imports edgemcp/session.py and the core's
    # binding rules for the message and unloads them again (tools/list: edgemcp/lists.py), and
    # with the GC off their loading counts (initialize 12.7 KB, tools/list 9.0 KB allocated);
    # the idle heap lost about as much, so the budget that matters, idle + the worst operation,
    # did not move (72.6 -> 72.5 KB)
    assert all(r["bytes"] < 15 * 1024 for r in operations), bench.table(rows)
    assert all(abs(r["left"]) < 512 for r in operations), "an operation leaks: " + bench.table(rows)
    assert bench.peak(rows) < bench.BUDGET, bench.table(rows)


def test_fixed_heap_figures():
    """With a real GC in a heap that cannot grow, on a 32-bit unix MicroPython with edgemcp
    frozen (``bench/mp_memory.py --build-unix CHECKOUT`` builds it, and a stock one beside it for
    the .mpy files; EDGEMCP_UNIX32 names the first):
    the figures docs/esp32.md gives, as budgets (KB above the interpreter baseline)."""
    binary = os.environ.get("EDGEMCP_UNIX32")
    if not binary:
        pytest.skip("EDGEMCP_UNIX32 not set: no 32-bit unix MicroPython with edgemcp frozen on this machine")
    bench = load_bench()
    assert bench.stock_of(Path(binary)).exists(), "no stock build beside EDGEMCP_UNIX32: --build-unix builds both"
    _, rows = bench.fixed_table(Path(binary), wasm=False)
    fig = {r["how"]: r for r in rows}
    kb = 1024
    # Measured (board2): frozen idle 19.1, peak 22.9, burst 31.9; .mpy idle 44.5, peak 48.4, burst
    # 57.4. Tightened from 21/27/36 and 46/52/60: tools kept as declared and tools/list encoded one
    # tool at a time into one bytes object, the method table's tuples constant (flash when
    # frozen), and the benchmark no longer counts its own packets and helpers as the board's (the
    # burst already did so for its packets). The ring of the last 8 answers of changing tools (a
    # redelivery is answered from it, not run again) costs ~1 KB in the burst.
    # board4 (the benchmark now counts the MQTT codec, which it used to import before its
    # baseline: +0.7 KB frozen, +2.9 KB .mpy on every figure; board3's code measured so: frozen
    # 20.0/23.7/32.8, .mpy 45.6/49.3/58.4): frozen idle 19.7, peak 22.8, burst 23.7 (an answer
    # written no longer waits for its PUBACK in its request's task; the link lets a request's
    # task run before it takes the next message; queued messages of one client share their
    # topic and properties). Burst tightened from 33
    # board5 (the Pi's own rules out of the core's resident modules): frozen 19.4/22.7/23.5.
    # Tightened from 20.5/24/24.5
    # session 6: the MQTT client preallocates 256 bytes (mqtt.HEAD) instead of max_packet (2 KB),
    # a longer packet gets a buffer of its own size while it is handled: frozen 17.7/20.9/21.7;
    # then templates for descriptions and names, annotation flags, class defaults, frames that
    # keep no message, Method a named tuple (docs/esp32.md "Memory"): 15.9/18.9/20.0. The
    # figures are deterministic on this build (no noise between runs): the bounds are the targets
    assert fig["unix-frozen"]["idle"] <= 16 * kb and fig["unix-frozen"]["peak"] <= 19.5 * kb  # issue 16: 16, 24
    assert fig["unix-frozen"]["burst"] < 20.5 * kb
    # board3: .mpy idle 42.5, peak 46.2, burst 55.4 (frozen 19.1, 22.8, 31.9): the run-once code
    # (edgemcp/start.py at start, edgemcp/connect.py at each connection) is unloaded before the
    # board serves (-1.3 KB from .mpy), and the benchmark compiles with -s like `make mpy` (the
    # checkout's long source paths were qstrs in RAM: -0.8 KB). Tightened from 46/50/59.
    # board4: .mpy idle 43.5, peak 47.2, burst 47.8 with the codec counted (45.6/49.3/58.4 before
    # board4's changes): the session rules (initialize.py, session.py with the core's binding)
    # and the lists loaded per message and unloaded, the CONNECT builder in connect.py, 4 queued
    # messages instead of 8 (Receive Maximum), answers kept by the MQTT client until their PUBACK
    # instead of their request's task waiting for it, the link's loop yielding after each
    # message, queued messages of one client sharing their topic and properties. Tightened from
    # 46/50/59 (board3's bounds with the codec counted) to 44.5/48/48.5 (issue 16: burst <= 48,
    # met by 0.2 KB: the bound leaves the measurement's own ~0.3 KB of noise)
    # board5: .mpy idle 41.6, peak 45.0, burst 45.8: the id and server-name checks, the schema
    # subset test and the logging levels moved out of the core's resident modules (core/binding,
    # core/names, core/subset, core/loglevel: loaded per initialize, at start, or never), and an
    # initialize unloads core/binding before it opens and answers the session. Tightened from
    # 44.5/48/48.5 to 42.5/46/46.5 (~0.3 KB of noise: the bound leaves 0.7-0.9 KB)
    # session 6: every .mpy figure above was measured on the build with edgemcp frozen in, whose
    # firmware qstr pool already held every name and short string of the library, so loading
    # the .mpy files interned nothing. On a stock firmware each module's qstrs go into the heap
    # when it is imported and stay (~12 KB): the .mpy rows now run on a stock build
    # (bench/mp_memory.py stock_of). board5's code so measured: 56.3/59.5/60.4; with the 256-byte
    # input buffer 55.0/58.3/59.2; at the end of session 6 (with the field fixes' code) 53.6/56.7/57.9
    # (issue 16: peak <= 40 and burst <= 48 are NOT met: see docs/esp32.md "Memory" for why)
    assert fig["unix-mpy"]["idle"] < 54 * kb and fig["unix-mpy"]["peak"] < 57.2 * kb
    assert fig["unix-mpy"]["burst"] < 58.4 * kb
    assert all(abs(r["left"] - r["idle"]) < 9 * kb for r in rows)  # one session's state, no leak
