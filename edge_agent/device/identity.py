"""The default server-id: unique per machine, stable across reboots, without leaking the machine-id.

Every Raspberry Pi OS image is called ``raspberrypi``, so a server-id built from the hostname
alone collides across a fleet, and two agents with one MQTT client id take each other's
session over at the broker (MQTT 5 §3.1.4-3, reason 0x8E). ``/etc/machine-id`` is regenerated
at first boot of every image (``systemd-firstboot``, machine-id(5)), so it is the one value that
tells two cloned cards apart. It is a secret-ish identifier that machine-id(5) says must not be
exposed on the network directly, so (like ``sd_id128_get_machine_app_specific()``) we publish
an HMAC-SHA256 of an application id keyed by it, not the id itself.

Shape: ``edge-<hostname>-<8 hex digits>``, e.g. ``edge-raspberrypi-3f9c02ab``, at most 54
characters from ``[A-Za-z0-9_.-]`` (safe in an MQTT topic level and client id).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
from pathlib import Path

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_APP_ID = b"edge-agent server-id v1"
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def machine_id(files: tuple[str, ...] = MACHINE_ID_FILES) -> str | None:
    """The machine's 128-bit id as 32 lower-case hex digits, or None when no file holds one
    (an empty or ``uninitialized`` machine-id before first boot counts as none)."""
    for name in files:
        try:
            text = Path(name).read_text(encoding="ascii", errors="replace").strip().lower()
        except OSError:
            continue
        if _HEX32.match(text):
            return text
    return None


def default_server_id(*, hostname: str | None = None, files: tuple[str, ...] = MACHINE_ID_FILES) -> str:
    """``edge-<hostname>-<app-specific hash of /etc/machine-id, 8 hex digits>``; without a
    machine-id, ``edge-<hostname>`` (then set ``[device] server_id`` by hand on cloned cards)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", hostname if hostname is not None else socket.gethostname())[:40] or "host"
    mid = machine_id(files)
    if mid is None:
        return f"edge-{host}"
    digest = hmac.new(bytes.fromhex(mid), _APP_ID, hashlib.sha256).hexdigest()[:8]
    return f"edge-{host}-{digest}"


MACHINE_ID_FIX = "sudo rm /etc/machine-id && sudo systemd-machine-id-setup"


def collision_hint(server_id: str, *, default: str | None = None) -> str:
    """What to do when another agent uses ``server_id`` on the same broker: one sentence for a
    log line. ``default``: this machine's :func:`default_server_id` (computed when None).

    When ``server_id`` is this machine's default, the other device most likely runs a copy of
    this SD card with the same ``/etc/machine-id``; otherwise the config sets it by hand."""
    default = default_server_id() if default is None else default
    if server_id == default:
        return (f"'{server_id}' is the default derived from the hostname and /etc/machine-id, so the other device "
                f"most likely runs a clone of this SD card: on one of them run `{MACHINE_ID_FIX}` and restart "
                f"edge-agent, or set a unique `[device] server_id` in its config")
    return (f"set a unique `[device] server_id` in one agent's config, or remove it there to use the "
            f"per-machine default ('{default}' on this machine; it comes from /etc/machine-id, which must differ "
            f"between cloned SD cards: `{MACHINE_ID_FIX}`)")
