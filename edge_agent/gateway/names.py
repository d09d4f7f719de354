"""How the gateway names what many devices offer: reversible, within MCP's rules. Pure, no I/O.

Tools and prompts
    ``{encoded server-name}__{original name}``, e.g. ``devices/greenhouse/gh3-pi`` +
    ``pump_relay_on`` → ``devices.greenhouse.gh3-pi__pump_relay_on``. The server-name is
    encoded with ``/`` → ``.``; letters, digits and ``-`` stay; every other byte of its UTF-8
    form (``.``, ``_``, space, ``é`` ...) becomes ``_`` + two lowercase hex digits (``_2e``,
    ``_5f``). An encoded server-name therefore never contains ``__``, so the *first* ``__``
    of a gateway name is the separator and everything after it is the device's own name,
    unchanged. MCP tool names must match ``[A-Za-z0-9_.-]{1,128}`` (MCP 2025-11-25,
    server/tools "Tool names"); when the result would be longer than 128 characters the name
    is ``h-`` + 32 hex digits of a SHA-256 of both parts (no ``__``, so it cannot be mistaken
    for the readable form) and the gateway keeps a table to map it back (:class:`Namer`).

Resources
    ``mcp-mqtt://{server-name}/{original URI, percent-encoded}``, e.g.
    ``device://sensors/soil_temp`` on ``devices/greenhouse/gh3-pi`` →
    ``mcp-mqtt://devices/greenhouse/gh3-pi/device%3A%2F%2Fsensors%2Fsoil_temp``. Each
    server-name level is percent-encoded on its own (``/`` stays the level separator); the
    original URI is encoded whole (``safe=""``), so it is the last path segment.

Resource templates
    The same prefix; the template's literal text is percent-encoded and its ``{...}``
    expressions are kept, so a client expands them as usual:
    ``device://history/{channel}`` → ``mcp-mqtt://devices/x/pi/device%3A%2F%2Fhistory%2F{channel}``.
    A concrete URI is decoded by finding the longest known server-name it starts with and
    percent-decoding the rest, which also undoes what ``{+path}`` or ``{?query}`` expansions
    add. (A simple ``{var}`` value containing a reserved character, e.g. ``a/b``, reaches the
    device as ``a/b`` rather than ``a%2Fb``: the one way the mapping is not exact.)
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

SEPARATOR = "__"
SCHEME = "mcp-mqtt"
PREFIX = f"{SCHEME}://"
MAX_NAME = 128
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPE = re.compile(r"_([0-9a-f]{2})")
_EXPRESSION = re.compile(r"(\{[^{}]*\})")


@functools.lru_cache(maxsize=65536)
def encode_server_name(server_name: str) -> str:
    """``devices/greenhouse/gh3-pi`` → ``devices.greenhouse.gh3-pi`` (see the module docstring)."""
    out = []
    for level_index, level in enumerate(server_name.split("/")):
        if level_index:
            out.append(".")
        for byte in level.encode():
            out.append(chr(byte) if byte in _PLAIN else f"_{byte:02x}")
    return "".join(out)


def decode_server_name(encoded: str) -> str:
    """The inverse of :func:`encode_server_name`.

    Raises:
        ValueError: ``encoded`` is not something :func:`encode_server_name` produces.
    """
    raw = bytearray()
    i = 0
    while i < len(encoded):
        ch = encoded[i]
        if ch == ".":
            raw += b"/"
            i += 1
        elif ch == "_":
            m = _ESCAPE.match(encoded, i)
            if m is None:
                raise ValueError(f"bad escape at position {i} of {encoded!r}")
            raw.append(int(m.group(1), 16))
            i += 3
        elif ord(ch) < 128 and ord(ch) in _PLAIN:
            raw += ch.encode()
            i += 1
        else:
            raise ValueError(f"character {ch!r} cannot appear in an encoded server-name")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{encoded!r} does not decode to UTF-8") from None


def _digest_name(server_name: str, name: str) -> str:
    return "h-" + hashlib.sha256(f"{server_name}\0{name}".encode()).hexdigest()[:32]


def join_name(server_name: str, name: str) -> str:
    """The gateway name of tool (or prompt) ``name`` of ``server_name`` (≤ 128 characters).

    The readable form when it fits and ``name`` itself follows the tool-name rule, else the
    ``h-…`` digest form (register it with :class:`Namer` to map it back).
    """
    joined = encode_server_name(server_name) + SEPARATOR + name
    if len(joined) <= MAX_NAME and TOOL_NAME.match(joined):
        return joined
    return _digest_name(server_name, name)


def split_name(gateway_name: str) -> tuple[str, str]:
    """``devices.greenhouse.gh3-pi__pump_relay_on`` → ``("devices/greenhouse/gh3-pi", "pump_relay_on")``.

    Raises:
        ValueError: no ``__`` separator (a digest name, or not a gateway name at all), or a
            malformed server-name part.
    """
    encoded, sep, name = gateway_name.partition(SEPARATOR)
    if not sep or not encoded or not name:
        raise ValueError(f"{gateway_name!r} is not a gateway name (server-name{SEPARATOR}name)")
    return decode_server_name(encoded), name


class Namer:
    """:func:`join_name` / :func:`split_name` plus the table for the digest form of long names."""

    def __init__(self) -> None:
        self._long: dict[str, tuple[str, str]] = {}

    def join(self, server_name: str, name: str) -> str:
        joined = join_name(server_name, name)
        if joined.startswith("h-") and SEPARATOR not in joined:
            self._long[joined] = (server_name, name)
        return joined

    def split(self, gateway_name: str) -> tuple[str, str]:
        """Raises ``ValueError`` for a name this gateway never made."""
        if gateway_name in self._long:
            return self._long[gateway_name]
        return split_name(gateway_name)


def _quote_server_name(server_name: str) -> str:
    return "/".join(quote(level, safe="") for level in server_name.split("/"))


def resource_uri(server_name: str, uri: str) -> str:
    """``mcp-mqtt://devices/greenhouse/gh3-pi/device%3A%2F%2Fsensors%2Fsoil_temp``."""
    return f"{PREFIX}{_quote_server_name(server_name)}/{quote(uri, safe='')}"


def template_uri(server_name: str, uri_template: str) -> str:
    """A resource template under the gateway prefix, its ``{...}`` expressions kept."""
    parts = _EXPRESSION.split(uri_template)
    body = "".join(p if i % 2 else quote(p, safe="") for i, p in enumerate(parts))
    return f"{PREFIX}{_quote_server_name(server_name)}/{body}"


def split_resource_uri(uri: str, known_server_names: Iterable[str] = ()) -> tuple[str, str]:
    """``mcp-mqtt://devices/x/pi/device%3A%2F%2Fa`` → ``("devices/x/pi", "device://a")``.

    The longest of ``known_server_names`` that prefixes the URI wins (needed for expanded
    templates whose values add ``/``); otherwise the last path segment is the original URI.

    Raises:
        ValueError: not an ``mcp-mqtt://`` URI with a server-name and an original URI.
    """
    if not uri.startswith(PREFIX):
        raise ValueError(f"{uri!r} is not a gateway resource URI ({PREFIX}server-name/original-uri)")
    rest = uri[len(PREFIX):]
    best = None
    for name in known_server_names:
        head = _quote_server_name(name) + "/"
        if rest.startswith(head) and len(rest) > len(head) and (best is None or len(name) > len(best)):
            best = name
    if best is not None:
        return best, unquote(rest[len(_quote_server_name(best)) + 1:])
    head, sep, tail = rest.rpartition("/")
    if not sep or not head or not tail or "/" not in head:
        raise ValueError(f"{uri!r} is not a gateway resource URI ({PREFIX}server-name/original-uri)")
    return unquote(head), unquote(tail)
