"""Broker URLs: ``mqtt://[user[:password]@]host[:port]`` and ``mqtts://`` (TLS).

Default ports: 1883 for ``mqtt``, 8883 for ``mqtts``. Also accepts ``tcp://`` (as ``mqtt``)
and ``ssl://`` (as ``mqtts``), and a bare ``host[:port]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

DEFAULT_BROKER = "mqtt://localhost:1883"
ENV_BROKER = "EDGE_AGENT_BROKER"


@dataclass(frozen=True)
class BrokerURL:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:  # never prints the password
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def redacted(url: str) -> str:
    """``url`` with the password of its user-info part replaced by ``***``
    (``mqtt://u:***@host:1883``): how a broker URL is shown in any message or log line."""
    scheme, sep, rest = url.rpartition("://") if "://" in url else ("", "", url)
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        authority = f"{userinfo}@{host}"
    return f"{scheme}{sep}{authority}{slash}{path}"


def parse_broker_url(url: str) -> BrokerURL:
    """Parse a broker URL.

    Raises:
        ValueError: an unknown scheme, a missing host or a port outside 1..65535 (the message
            shows the URL without its password, see :func:`redacted`).
    """
    if "://" not in url:
        url = "mqtt://" + url
    shown = redacted(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("mqtt", "tcp"):
        tls = False
    elif scheme in ("mqtts", "ssl", "tls"):
        tls = True
    else:
        raise ValueError(f"broker URL {shown!r}: scheme must be mqtt:// or mqtts://, not {scheme}://")
    if not parts.hostname:
        raise ValueError(f"broker URL {shown!r} has no host")
    try:
        port = parts.port if parts.port is not None else (8883 if tls else 1883)
    except ValueError as exc:
        raise ValueError(f"broker URL {shown!r}: bad port ({exc})") from None
    if not 0 < port < 65536:
        raise ValueError(f"broker URL {shown!r}: port must be 1..65535")
    return BrokerURL(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def default_broker() -> str:
    """``$EDGE_AGENT_BROKER`` if set, else ``mqtt://localhost:1883``."""
    return os.environ.get(ENV_BROKER) or DEFAULT_BROKER
