"""What the board's token check (micropython/edgemcp/tokens.py, HS256) costs, under MicroPython:
its .mpy size (``mpy-cross -O3 -march=xtensawin``, as ``make mpy`` builds it), the heap its
import (beyond the protocol core every board loads) and its config take, and the heap one verification of a typical token needs.

Figures from ``gc.mem_alloc()``: the import and ``Auth(...)`` after ``gc.collect()`` (live
heap); a verification with the GC disabled from a ``gc.collect()`` before it to its end (every
byte allocated, garbage included: an upper bound of what it needs at once) and what stays
allocated after it (0 expected). Runs under the MicroPython WebAssembly port (whose binascii
is a frozen pure-Python module: more heap than the ESP32's C one) and, with ``--unix``, under
a 32-bit unix MicroPython (16-byte GC blocks, 4-byte pointers, C binascii and hashlib, as on
an ESP32; bench/mp_memory.py --build-unix builds one). Usage::

    python bench/mp_tokens.py
    python bench/mp_tokens.py --unix ~/micropython/ports/unix/build-standard/micropython
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "micropython" / "host"
ISS = "https://auth.example"

CODE = """
import gc, json, time, binascii, hashlib
from edgemcp.core import jsonrpc  # (loaded on every board: not the token check's)
gc.collect(); a0 = gc.mem_alloc()
from edgemcp import tokens
gc.collect(); a1 = gc.mem_alloc()
auth = tokens.Auth({"issuers": {ISS: K}}, "esp32-test-01", "devices/test/esp32-01")
gc.collect(); a2 = gc.mem_alloc()
auth.verify(TOKEN, "ops-1")  # once: interned names and first-use caches out of the figure
gc.collect(); b = gc.mem_alloc(); gc.disable(); t0 = time.ticks_us()
c = auth.verify(TOKEN, "ops-1")
us = time.ticks_diff(time.ticks_us(), t0); allocated = gc.mem_alloc() - b; gc.enable()
del c; gc.collect(); left = gc.mem_alloc() - b
print("TOKJSON " + json.dumps({"import": a1 - a0, "auth": a2 - a1, "verify": allocated, "left": left, "us": us}))
"""


def token() -> tuple[str, str]:
    """A typical operator token (HS256) and its secret as the config's base64url ``k``."""
    secret = os.urandom(32)
    now = int(time.time())
    claims = {"iss": ISS, "sub": "alice@example.com", "aud": "esp32-test-01", "exp": now + 3600, "iat": now,
              "client_id": "ops-1", "roles": ["operator"]}
    return jwt.encode(claims, secret, algorithm="HS256"), base64.urlsafe_b64encode(secret).rstrip(b"=").decode()


def load_memory_bench():
    spec = importlib.util.spec_from_file_location("mp_memory", ROOT / "bench" / "mp_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(mpy: Path, unix: Path | None) -> dict:
    """The figures under the WebAssembly port (``unix`` None) or the unix build ``unix``.

    Raises:
        RuntimeError: the run failed (its output in the message).
    """
    tok, k = token()
    code = f"ISS = {ISS!r}\nK = {k!r}\nTOKEN = {tok!r}\n" + CODE
    if unix is None:
        cmd = [shutil.which("node") or "node", str(HOST / "board.mjs"), "--mpy", str(mpy), "--exec", code]
        env = None
    else:
        script = mpy / "tokbench.py"
        script.write_text(code)
        cmd = [str(unix), str(script)]
        env = {"MICROPYPATH": str(mpy), "PATH": "/usr/bin:/bin"}  # the .mpy files, not a frozen edgemcp
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=HOST, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("TOKJSON ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"failed ({done.returncode}): {done.stdout[-1500:]}{done.stderr[-1500:]}")
    return json.loads(lines[-1][8:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unix", type=Path, help="a 32-bit unix micropython (bench/mp_memory.py --build-unix)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mp-tokens-") as tmp:
        mpy = load_memory_bench().build_mpy(Path(tmp))
        out = Path(tmp) / "tokens.mpy"  # exactly as `make mpy` builds it
        subprocess.run([sys.executable, "-m", "mpy_cross", "-O3", "-march=xtensawin", "-s", "edgemcp/tokens.py",
                        "-o", str(out), str(ROOT / "micropython" / "edgemcp" / "tokens.py")], check=True)
        print(f"tokens.mpy: {out.stat().st_size} bytes (mpy-cross -O3 -march=xtensawin, as make mpy)")
        print(f"{'where':<12} {'import':>7} {'Auth':>6} {'verify':>7} {'left':>5} {'time':>9}   (bytes of heap)")
        for name, unix in [("wasm-mpy", None)] + ([("unix32-mpy", args.unix)] if args.unix else []):
            r = run(mpy, unix)
            print(f"{name:<12} {r['import']:>7} {r['auth']:>6} {r['verify']:>7} {r['left']:>5} {r['us']:>6} us")


if __name__ == "__main__":
    main()
