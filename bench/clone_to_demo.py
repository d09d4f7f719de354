"""Time from ``git clone`` to the demo's "demo OK", as a new user on Debian 12 / Pi OS gets it.

Each run clones this repository's HEAD into a fresh temporary directory (``git clone
--no-local``: objects are packed and sent as for a remote clone, so the clone is not a tree of
hard links) and runs ``make demo PYTHON=<python>`` there: the project venv ``.venv`` is made,
the package with the demo's extras (gpio, serial, i2c, cloud) is installed from the package index
through pip's cache, Mosquitto is started, and the demo walks through its steps. The timings
come from the lines ``make demo`` prints, stamped as they arrive:

- clone: ``git clone`` until it exits;
- venv + install: ``make demo`` start until the demo's first line (``== started a local Mosquitto``);
- demo: from there to ``== demo OK``;
- total: clone start to ``== demo OK``.

"A warm package cache" is the point (nobody's first hour should be spent timing PyPI): one
untimed warm-up run goes first (``--warmup 0`` skips it). Uncommitted changes are not in a
clone: commit first. Usage::

    python bench/clone_to_demo.py                          # /usr/bin/python3 where it exists
    python bench/clone_to_demo.py --runs 3 --python python3.11

Exit 0 with the table on stdout; 1 when a clone or ``make demo`` fails (its last lines on
stderr).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, table  # noqa: E402

STARTED = "== started a local Mosquitto"
DONE = "== demo OK"
# a user's shell: not inside our venv or our make
ENV = {k: v for k, v in os.environ.items()
       if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHON")}


class RunFailed(RuntimeError):
    """A clone or ``make demo`` failed; the message holds its last output lines."""


def one_run(python: str, timeout: float) -> dict[str, float]:
    """Clone and ``make demo`` once; ``{"clone", "install", "demo", "total"}`` in seconds.

    Raises:
        RunFailed: the clone or ``make demo`` exited non-zero, or no "demo OK" within ``timeout`` s.
    """
    with tempfile.TemporaryDirectory(prefix="clone-to-demo-") as tmp:
        dest = Path(tmp) / "edge-agent"
        t0 = time.monotonic()
        clone = subprocess.run(["git", "clone", "--quiet", "--no-local", str(REPO), str(dest)],
                               capture_output=True, text=True, timeout=timeout, env=ENV)
        t_clone = time.monotonic()
        if clone.returncode != 0:
            raise RunFailed(f"git clone: {clone.stderr.strip()}")
        proc = subprocess.Popen(["make", "demo", f"PYTHON={python}"], cwd=dest, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=ENV)
        t_started = t_done = None
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                now = time.monotonic()
                lines.append(line.rstrip("\n"))
                if t_started is None and line.startswith(STARTED):
                    t_started = now
                if t_done is None and line.startswith(DONE):
                    t_done = now
                if now - t0 > timeout:
                    raise RunFailed(f"no '{DONE}' within {timeout:g} s")
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0 or t_started is None or t_done is None:
            raise RunFailed(f"make demo exited {code}:\n" + "\n".join(lines[-25:]))
        return {"clone": t_clone - t0, "install": t_started - t_clone, "demo": t_done - t_started,
                "total": t_done - t0}


def default_python() -> str:
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=default_python(),
                    help="the interpreter make demo makes .venv with (default /usr/bin/python3 where it exists)")
    ap.add_argument("--runs", type=int, default=2, help="timed runs (default 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first, to warm pip's cache (default 1)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take (default 600)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    for tool in ("git", "make"):
        if shutil.which(tool) is None:
            print(f"bench: needs {tool}", file=sys.stderr)
            return 1
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    version = subprocess.run([args.python, "-V"], capture_output=True, text=True).stdout.strip() or "?"
    runs: list[dict[str, float]] = []
    try:
        for i in range(args.warmup + args.runs):
            res = one_run(args.python, args.timeout)
            label = "warm-up" if i < args.warmup else f"run {i - args.warmup + 1}"
            print(f"{label}: {res['total']:.1f} s", file=sys.stderr, flush=True)
            if i >= args.warmup:
                runs.append(res)
    except (RunFailed, subprocess.TimeoutExpired) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1

    m = machine()
    print("# edge-agent: from git clone to \"demo OK\"\n")
    print(f"machine: {m['nproc']} CPUs, {m['cpu']}, {m['memory']} RAM; Linux {m['kernel']}")
    print(f"commit: {head} (HEAD{', working tree has uncommitted changes: not measured' if dirty else ''})")
    print(f"command: git clone --no-local <repo> && make demo PYTHON={args.python} ({version}); "
          f"pip cache warm ({args.warmup} untimed run(s) first)\n")
    cols = ["clone", "install", "demo", "total"]
    rows = [[f"run {i}"] + [f"{r[c]:.1f}" for c in cols] for i, r in enumerate(runs, 1)]
    if len(runs) > 1:
        rows.append(["median"] + [f"{statistics.median(r[c] for r in runs):.1f}" for c in cols])
    print(table(["", "git clone s", "venv + install s", "demo s", "clone to demo OK s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
