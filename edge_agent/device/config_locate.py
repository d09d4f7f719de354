"""Line numbers for config keys: tomllib parses without positions, so scan the TOML text.

:class:`Locator` maps a key as ``edge-agent check`` prints it (``device.simulate``,
``broker.urls[1]``, ``drivers.pump_relay.pin``, ``drivers[3].kind``) to the 1-based line
where the key is written, or, for a key that is missing or sits inside an inline table or a
multi-line value, the line of the nearest enclosing key or table header; 0 when nothing fits.
Handles ``[table]`` and ``[[array.of.tables]]`` headers, dotted and quoted keys; multi-line
strings and arrays are skipped so their content is never taken for keys.
"""

from __future__ import annotations

import json
import re
from typing import Any

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_PART = re.compile(r"\[(\d+)\]")


def _key_parts(text: str, pos: int) -> tuple[list[str], int] | None:
    """Parse a dotted TOML key at ``text[pos:]``: (parts, position after the key) or None."""
    parts: list[str] = []
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text):
            return None
        c = text[pos]
        if c == '"':
            m = re.compile(r'"((?:[^"\\]|\\.)*)"').match(text, pos)
            if not m:
                return None
            try:
                parts.append(json.loads(m.group(0)))
            except ValueError:
                parts.append(m.group(1))
            pos = m.end()
        elif c == "'":
            end = text.find("'", pos + 1)
            if end < 0:
                return None
            parts.append(text[pos + 1:end])
            pos = end + 1
        else:
            m = _BARE.match(text, pos)
            if not m:
                return None
            parts.append(m.group(0))
            pos = m.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


def scan(text: str) -> dict[tuple, int]:
    """Every key path written in ``text`` → its first line (1-based). Paths hold strings and,
    for arrays of tables, the element index: ``("drivers", 3, "pin")``."""
    lines: dict[tuple, int] = {}
    counts: dict[tuple, int] = {}
    table: tuple = ()
    depth = 0  # open [ or { of a multi-line value
    in_string: str | None = None  # the closing quote of a multi-line string we are in

    def note(path: tuple, lineno: int) -> None:
        for i in range(1, len(path) + 1):
            lines.setdefault(path[:i], lineno)

    for lineno, raw in enumerate(text.splitlines(), 1):
        if in_string:
            if in_string in raw:
                in_string = None
            continue
        if depth > 0:
            depth = max(0, depth + _brackets(raw))
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            parsed = _key_parts(line, 2)
            if parsed:
                base = _resolve(parsed[0], counts)
                counts[base] = counts.get(base, -1) + 1
                table = base + (counts[base],)
                note(table, lineno)
            continue
        if line.startswith("["):
            parsed = _key_parts(line, 1)
            if parsed:
                table = _resolve(parsed[0], counts)
                note(table, lineno)
            continue
        parsed = _key_parts(line, 0)
        if not parsed or parsed[1] >= len(line) or line[parsed[1]] != "=":
            continue
        note(table + tuple(parsed[0]), lineno)
        value = line[parsed[1] + 1:].lstrip()
        for quote in ('"""', "'''"):
            if value.startswith(quote) and value.count(quote) == 1:
                in_string = quote
        if not in_string:
            depth = max(0, _brackets(value))
    return lines


def _resolve(parts: list[str], counts: dict[tuple, int]) -> tuple:
    """A header's path: each enclosing array of tables gets its current element index."""
    path: tuple = ()
    for i, part in enumerate(parts):
        path += (part,)
        if i < len(parts) - 1 and path in counts:
            path += (counts[path],)
    return path


def _brackets(value: str) -> int:
    """Net ``[``/``{`` opened by ``value``, ignoring strings and comments (roughly)."""
    depth, quote, i = 0, None, 0
    while i < len(value):
        c = value[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            break
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return depth


def parse_key(key: str) -> list[Any]:
    """``"drivers.pump.pin"`` → ``["drivers", "pump", "pin"]``; ``"broker.urls[1]"`` →
    ``["broker", "urls", 1]``."""
    out: list[Any] = []
    for piece in key.split("."):
        head = _PART.split(piece)
        if head[0]:
            out.append(head[0])
        out += [int(x) for x in head[1::2]]
    return out


class Locator:
    """Lines of the keys of one config file: ``Locator(text, data)``; ``data`` is the parsed
    TOML (to turn a driver's name in a key into its ``[[drivers]]`` index)."""

    def __init__(self, text: str, data: dict[str, Any] | None = None):
        self.lines = scan(text)
        self.data = data or {}

    def path(self, key: str) -> tuple:
        """The key path of ``key``, with a driver name replaced by the driver's index."""
        parts = parse_key(key)
        tables = self.data.get("drivers")
        if len(parts) >= 2 and parts[0] == "drivers" and isinstance(parts[1], str) and isinstance(tables, list):
            for i, t in enumerate(tables):
                if isinstance(t, dict) and t.get("name") == parts[1]:
                    parts[1] = i
                    break
        return tuple(parts)

    def line(self, key: str) -> int:
        """The line of ``key`` or of the nearest enclosing key/table written in the file; 0 if none."""
        if not key or key == "-":
            return 0
        path = self.path(key)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 0
