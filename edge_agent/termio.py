"""What the ``edge-agent`` command writes to a terminal: escaped network text, a progress line,
and a quiet exit when the reader of stdout goes away (``edge-agent devices | head -1``).

Stdlib only (used by the device-side commands too).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from typing import TextIO

EXIT_PIPE = 141
"""Exit status after stdout's reader went away: 128 + SIGPIPE, what a shell reports for a
C tool that SIGPIPE killed (``yes | head -1``; ``set -o pipefail`` sees it the same way)."""

# C0 controls (but \t and \n, handled by ``multiline``), DEL, C1 controls (U+0080..U+009F: 8-bit
# CSI/OSC in some terminals), and the bidirectional overrides and isolates that reorder what
# a line shows ("Trojan Source", CVE-2021-42574).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    return f"\\x{ord(ch):02x}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04x}"


def safe(text: object, *, multiline: bool = False) -> str:
    """``str(text)`` fit for a terminal: control characters from the network become visible escapes.

    ESC (``\\x1b``) becomes the four characters ``\\x1b``, CR ``\\x0d``, a C1 control or a
    bidi override ``\\x9b`` / ``\\u202e``; printable Unicode stays as it is. ``\\n`` and ``\\t``
    are kept when ``multiline`` is true (tool output, resource text), escaped otherwise (names
    and one-line fields, so a name cannot add a forged row to a table).
    """
    return (_UNSAFE if multiline else _UNSAFE_LINE).sub(_escape, str(text))


def safe_json(text: str) -> str:
    """Serialized JSON (from ``json.dumps(..., ensure_ascii=False)``, which already escapes C0)
    with DEL, C1 controls and bidi overrides written as ``\\uXXXX``: the same JSON value, safe to print."""
    return _UNSAFE_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (``False`` for a closed or replaced stream)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def progress_line(label: str, progress: float, total: float | None, message: str | None,
                  width: int = 80) -> str:
    """One progress line (no newline), at most ``width - 1`` characters.

    With a ``total``: ``label [#####.....]  50% 5/10 message``; without: ``label 5 message``.
    ``label`` and ``message`` are escaped with :func:`safe`.
    """
    def num(v: float) -> str:
        return f"{v:g}"

    if total is not None and total > 0:
        fraction = min(max(progress / total, 0.0), 1.0)
        bar = "#" * round(fraction * 20)
        text = f"{safe(label)} [{bar:.<20}] {fraction * 100:3.0f}% {num(progress)}/{num(total)}"
    else:
        text = f"{safe(label)} {num(progress)}"
    if message:
        text += f" {safe(message)}"
    limit = max(width - 1, 10)
    return text if len(text) <= limit else text[:limit - 1] + "…"


class ProgressLine:
    """A progress line redrawn in place on ``stream`` (``\\r`` + erase line); :meth:`clear` removes it."""

    def __init__(self, stream: TextIO, label: str):
        self.stream, self.label, self.shown = stream, label, False

    def show(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        self.stream.write("\r\x1b[K" + progress_line(self.label, progress, total, message, width))
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def stdout_gone() -> int:
    """Call on ``BrokenPipeError`` from stdout: point stdout at ``/dev/null`` (so the interpreter's
    final flush cannot raise again and print a traceback) and return :data:`EXIT_PIPE`.

    The recipe of the Python docs ("Note on SIGPIPE", :mod:`signal`).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout has no file descriptor (replaced in tests)
        pass
    return EXIT_PIPE
