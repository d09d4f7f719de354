"""Helpers shared by the benchmarks: the machine line and markdown tables."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def machine() -> dict[str, str]:
    """CPU count and model, memory, Python and kernel of this machine (from /proc)."""
    model = "?"
    with contextlib.suppress(OSError):
        info: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                info.setdefault(key.strip().lower(), value.strip())
        # x86: "model name"; Raspberry Pi (arm64): "Model" (the board) and "Hardware"/"CPU part".
        model = info.get("model name") or info.get("model") or info.get("hardware") or model
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GB"
    return {"nproc": str(os.cpu_count()), "cpu": model, "memory": mem,
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "kernel": platform.release()}


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
