"""TOML config → typed dataclasses. Every error names the file, the line and the key.

Shape (see ``docs/configuration.md`` for every key)::

    [device]
    server_name = "devices/greenhouse/pi-01"   # MCP-over-MQTT server-name (needs a '/')
    server_id = "gh-pi-01"                     # MQTT client id; default edge-<hostname>
    description = "Greenhouse 3 climate node"
    simulate = false                           # true: MockFactory pins, pty GPS, temp sysfs

    [broker]
    urls = ["mqtt://broker.local:1883"]        # tried in turn
    username = "gh-pi-01"
    password_file = "/etc/edge-agent/password" # or password = "...", or $EDGE_AGENT_PASSWORD

    [[drivers]]
    kind = "ds18b20"                           # see drivers.known_kinds()
    name = "soil_temp"                         # tools are soil_temp_*, resources sensor://soil_temp/*
    poll_interval = 5                          # s
    deadband = 0.1                             # in the sensor's unit
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from edge_agent.core import topics
from edge_agent.device import identity
from edge_agent.device.config_files import (
    CONFIG_LIMIT,
    SECRET_LIMIT,
    FileProblem,
    pem_problem,
    read_small,
)
from edge_agent.device.config_locate import Locator
from edge_agent.errors import ConfigError
from edge_agent.mqtt.broker_url import parse_broker_url, redacted
from edge_agent.mqtt.profiles import LinkSettings, link_settings
from edge_agent.server.rbac import OPERATOR, VIEWER, Policy, Role

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
COMMON_DRIVER_KEYS = {"kind", "name", "description", "poll_interval", "deadband", "enabled", "simulate", "rate_limit",
                      "sensor_tools"}
PLACEHOLDER = "CHANGE-ME"  # in a value: install.sh's placeholder, refused until replaced
ENV_PASSWORD = "EDGE_AGENT_PASSWORD"
ENV_USERNAME = "EDGE_AGENT_USERNAME"
# the pip extra that brings each optional library a driver imports
EXTRAS = {"gpiozero": "gpio", "serial": "serial", "smbus2": "i2c"}

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["device"],
    "properties": {
        "device": {
            "type": "object",
            "additionalProperties": False,
            "required": ["server_name"],
            "properties": {
                "server_name": {"type": "string"},
                "server_id": {"type": "string"},
                "description": {"type": "string", "maxLength": 1000},
                "title": {"type": "string"},
                "location": {"type": "string"},
                "simulate": {"type": "boolean"},
                "state_dir": {"type": "string"},
                "history_size": {"type": "integer", "minimum": 1, "maximum": 100000},
                "page_size": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
        },
        "broker": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string"},
                "urls": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "username": {"type": "string"},
                "password": {"type": "string"},
                "password_file": {"type": "string"},
                "password_credential": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]+$",
                                        "description": "a systemd credential name (letters, digits, _ . @ -)"},
                "ca_file": {"type": "string"},
                "cert_file": {"type": "string"},
                "key_file": {"type": "string"},
                "tls_insecure": {"type": "boolean"},
                "warn_insecure": {"type": "boolean"},
                "keepalive": {"type": "integer", "minimum": 5, "maximum": 65535},
                "qos": {"type": "integer", "enum": [0, 1]},
            },
        },
        "link": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "profile": {"type": "string", "enum": ["lan", "unreliable"]},
                "keepalive": {"type": "integer", "minimum": 2, "maximum": 65535},
                "clean_start": {"type": "boolean"},
                "session_expiry": {"type": "integer", "minimum": 0, "maximum": 4294967295},
                "qos_rpc": {"type": "integer", "enum": [0, 1]},
                "qos_notifications": {"type": "integer", "enum": [0, 1]},
                "qos_telemetry": {"type": "integer", "enum": [0, 1]},
                "message_expiry": {"type": "integer", "minimum": 0, "maximum": 4294967295},
                "max_inflight": {"type": "integer", "minimum": 1, "maximum": 65535},
                "reconnect_min": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                "reconnect_max": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
                "connack_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
                "outbox_max_messages": {"type": "integer", "minimum": 1},
                "outbox_max_bytes": {"type": "integer", "minimum": 1024},
                "qos0_queue": {"type": "integer", "minimum": 0},
                "persist_sessions": {"type": "boolean"},
                "session_max_age": {"type": "integer", "minimum": 1},
                "reply_cache": {"type": "integer", "minimum": 0, "maximum": 10000},
                "durable_outbox": {"type": "boolean"},
                "max_packet_size": {"type": "integer", "minimum": 0, "maximum": 268435455,
                                    "description": "bytes; the broker sends no bigger packet (0: no limit)"},
                "ack_when_handled": {"type": "boolean"},
                "deadline_skew": {"type": "number", "minimum": 0, "maximum": 3600},
                "max_inflight_per_client": {"type": "integer", "minimum": 1, "maximum": 100000},
                "reply_store_max": {"type": "integer", "minimum": 1, "maximum": 1000000},
                "reply_ttl": {"type": "number", "exclusiveMinimum": 0},
                "max_sessions": {"type": "integer", "minimum": 1, "maximum": 100000},
                "session_probe_idle": {"type": "number", "exclusiveMinimum": 0},
                "session_probe_timeout": {"type": "number", "exclusiveMinimum": 0},
                "session_init_grace": {"type": "number", "exclusiveMinimum": 0},
                "busy_lane_after": {"type": "integer", "minimum": 0, "maximum": 100000,
                                    "description": "requests in flight that move a client to the busy lane (0: never)"},
                "busy_lane_calm": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
                "busy_lane_standby": {"type": "boolean"},
                "receive_maximum": {"type": "integer", "minimum": 0, "maximum": 65535,
                                    "description": "MQTT 5 Receive Maximum in CONNECT (0: not sent)"},
            },
        },
        "store": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "path": {"type": "string"},
                "synchronous": {"type": "string", "enum": ["NORMAL", "FULL"]},
            },
        },
        "rbac": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "default_role": {"type": "string"},
                "roles": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                        "description": {"type": "string"},
                        "allowed_methods": {"type": "array", "items": {"type": "string"}},
                        "allowed_tools": {"anyOf": [{"enum": ["all", "read_only"]},
                                                    {"type": "array", "items": {"type": "string"}}]},
                        "allowed_resources": {"anyOf": [{"enum": ["all"]},
                                                        {"type": "array", "items": {"type": "string"}}]},
                    }}},
                "rules": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["client_id", "role"],
                    "properties": {"client_id": {"type": "string"}, "role": {"type": "string"}}}},
            },
        },
        "limits": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "client_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 10000,
                                "description": "actuator calls per second per client (subject or client id)"},
                "client_burst": {"type": "number", "minimum": 1, "maximum": 10000},
            },
        },
        "auth": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "required": {"type": "boolean"},
                "audience": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
                "clock_skew": {"type": "number", "minimum": 0, "maximum": 3600},
                "roles_claim": {"type": "string"},
                "issuers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["issuer"],
                    "properties": {"issuer": {"type": "string"}, "jwks_file": {"type": "string"},
                                   "jwks_credential": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]+$",
                                                       "description": "a systemd credential name (letters, digits, _ . @ -)"}}}},
            },
        },
        "drivers": {"type": "array", "items": {"type": "object"}},
    },
}


@dataclass
class DeviceConfig:
    server_name: str
    server_id: str
    description: str = "An edge-agent device"
    title: str | None = None
    location: str | None = None
    simulate: bool = False
    state_dir: str = "/var/lib/edge-agent"
    history_size: int = 120
    page_size: int = 50


@dataclass
class BrokerConfig:
    """Broker URLs and credentials. TLS (``mqtts://``): ``ca_file`` (default: the system CAs),
    ``cert_file``/``key_file`` for mTLS, ``tls_insecure`` turns verification off (logged loudly)."""

    urls: list[str] = field(default_factory=lambda: ["mqtt://localhost:1883"])
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    qos: int = 1
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    warn_insecure: bool = True  # false: a plain, credential-less or role-less remote broker is accepted

    def __repr__(self) -> str:  # never show the password (nor one inside a URL)
        return (f"BrokerConfig(urls={[redacted(u) for u in self.urls]!r}, username={self.username!r}, password={'***' if self.password else None}, "
                f"keepalive={self.keepalive}, qos={self.qos}, ca_file={self.ca_file!r}, tls_insecure={self.tls_insecure})")


@dataclass
class StoreConfig:
    """The SQLite state store: ``path`` (default ``<state_dir>/state.sqlite3``), ``synchronous``."""

    path: str
    synchronous: str = "NORMAL"


@dataclass
class DriverConfig:
    """One ``[[drivers]]`` table. ``options``: the kind-specific keys, validated."""

    kind: str
    name: str
    options: dict[str, Any]
    poll_interval: float | None = None
    deadband: float | None = None
    simulate: bool | None = None  # None: the device's setting
    description: str | None = None  # what this hardware is for ("irrigation pump, bed 3")
    rate_limit: tuple[float, float] | None = None  # (calls per second, burst) for each actuator tool
    sensor_tools: bool = True  # its readings also as the read-only tool <name>_read and in device_state
    index: int = 0


@dataclass
class LimitsConfig:
    """``[limits]``: each client's budget of actuator calls (non-read-only tools), on top of
    each output's own ``rate_limit``: ``client_rate`` calls/s (None: no per-client limit),
    ``client_burst`` at once. A client is its token's subject, else its mcp-client-id."""

    client_rate: float | None = None
    client_burst: float = 5.0


@dataclass
class Config:
    device: DeviceConfig
    broker: BrokerConfig
    drivers: list[DriverConfig]
    path: str = "<memory>"
    link: LinkSettings = field(default_factory=LinkSettings)
    store: StoreConfig | None = None
    rbac: Policy = field(default_factory=Policy.open)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    locator: Locator | None = field(default=None, repr=False, compare=False)  # key -> line in the file


def default_server_id() -> str:
    """The default ``[device] server_id``: see :func:`edge_agent.device.identity.default_server_id`
    (``edge-<hostname>-<8 hex digits from /etc/machine-id>``)."""
    return identity.default_server_id()


def load(path: str | os.PathLike) -> Config:
    """Read and validate a TOML config file (a regular file of at most 1 MiB).

    Raises:
        ConfigError: listing every problem as (file, key, message), with ``lines`` (the line
            of each key in the file, 0 when unknown).
    """
    path = str(path)
    try:
        raw = read_small(path, CONFIG_LIMIT, "config file")
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except FileProblem as exc:
        raise ConfigError([(path, "-", str(exc))]) from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise ConfigError([(path, "-", f"not valid TOML: {exc}")], lines=[int(m.group(1)) if m else 0]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([(path, "-", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    except RecursionError:
        raise ConfigError([(path, "-", "not valid TOML: nested too deeply")]) from None
    locator = Locator(text, data)
    try:
        config = from_dict(data, path=path, base_dir=os.path.dirname(os.path.abspath(path)))
    except ConfigError as exc:
        raise ConfigError(exc.problems, lines=[locator.line(k) for _, k, _ in exc.problems]) from None
    config.locator = locator
    return config


def from_dict(data: dict[str, Any], *, path: str = "<memory>", base_dir: str | None = None) -> Config:
    """Validate an already-parsed config. Raises :class:`ConfigError` (all problems at once)."""
    problems: list[tuple[str, str, str]] = []

    def bad(key: str, message: str) -> None:
        problems.append((path, key, message))

    for err in _schema_errors(_SCHEMA, data):
        for key, message in _explain(_named(err.absolute_path, data), err):
            bad(key, _secret_safe(key, message, err))
    if problems:
        raise ConfigError(problems)

    dev = data["device"]
    try:
        topics.check_server_name(dev["server_name"])
    except ValueError as exc:
        bad("device.server_name", str(exc))
    server_id = dev.get("server_id") or default_server_id()
    try:
        topics.check_id(server_id, "server-id")
    except ValueError as exc:
        bad("device.server_id", str(exc))
    device = DeviceConfig(
        server_name=dev["server_name"], server_id=server_id,
        description=dev.get("description", DeviceConfig.description), title=dev.get("title"),
        location=dev.get("location"), simulate=dev.get("simulate", False),
        state_dir=_resolve(dev.get("state_dir", DeviceConfig.state_dir), base_dir),
        history_size=dev.get("history_size", DeviceConfig.history_size),
        page_size=dev.get("page_size", DeviceConfig.page_size),
    )

    br = data.get("broker", {})
    urls = br.get("urls") or ([br["url"]] if "url" in br else ["mqtt://localhost:1883"])
    key = "broker.urls" if "urls" in br else "broker.url"
    for i, url in enumerate(urls):
        try:
            parse_broker_url(url)
        except ValueError as exc:
            bad(f"{key}[{i}]" if key == "broker.urls" else key, str(exc))
    password = br.get("password")
    if "password_file" in br:
        pfile = _resolve(br["password_file"], base_dir)
        try:
            password = _secret(pfile)
        except FileProblem as exc:
            bad("broker.password_file", f"{pfile}: {exc}")
    if "password_credential" in br:
        # systemd LoadCredential=NAME:/path puts the secret in $CREDENTIALS_DIRECTORY/NAME
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            bad("broker.password_credential", "set, but $CREDENTIALS_DIRECTORY is not (systemd LoadCredential= sets it)")
        else:
            try:
                password = _secret(os.path.join(cred_dir, br["password_credential"]))
            except FileProblem as exc:
                bad("broker.password_credential", f"credential {br['password_credential']!r}: {exc}")
    password = os.environ.get(ENV_PASSWORD) or password
    tls_files = {}
    for k in ("ca_file", "cert_file", "key_file"):
        if k in br:
            tls_files[k] = _resolve(br[k], base_dir)
            why = pem_problem(tls_files[k], "private key" if k == "key_file" else "certificate")
            if why:
                bad(f"broker.{k}", f"{tls_files[k]}: {why}")
    if ("cert_file" in br) != ("key_file" in br):
        bad("broker.cert_file" if "key_file" in br else "broker.key_file", "cert_file and key_file go together (mTLS)")
    broker = BrokerConfig(urls=urls, username=os.environ.get(ENV_USERNAME) or br.get("username"), password=password,
                          keepalive=br.get("keepalive", 30), qos=br.get("qos", 1),
                          tls_insecure=br.get("tls_insecure", False), warn_insecure=br.get("warn_insecure", True),
                          **tls_files)

    if len({parse_broker_url(u).tls for u in urls if _parses(u)}) > 1:
        bad(key, "all broker URLs must be mqtt:// or all mqtts://, not a mix")

    lk = dict(data.get("link", {}))
    profile = lk.pop("profile", "lan")
    # [broker] keepalive/qos are kept as shorthands for [link] keepalive / qos_rpc.
    if "keepalive" in br and "keepalive" not in lk:
        lk["keepalive"] = br["keepalive"]
    if "qos" in br:
        lk.setdefault("qos_rpc", br["qos"])
        lk.setdefault("qos_notifications", br["qos"])
    link = link_settings(profile, **lk)
    if link.reconnect_min > link.reconnect_max:
        bad("link.reconnect_min", f"must not exceed link.reconnect_max ({link.reconnect_max})")
    st = data.get("store", {})
    store = StoreConfig(path=_resolve(st.get("path", os.path.join(device.state_dir, "state.sqlite3")), base_dir),
                        synchronous=st.get("synchronous", "NORMAL"))

    policy = _policy(data.get("rbac"), bad)
    if "auth" in data:
        _auth(data["auth"], policy, device, base_dir, bad)
    drivers = _drivers(data.get("drivers", []), bad)
    for where, value in _strings(data):  # install.sh's placeholders, until the user fills them in
        if PLACEHOLDER in value:
            bad(_key(_named(where, data), None), f"still the placeholder {value!r} (from install.sh): "
                "put your own value here (docs/security.md, \"TLS and credentials\")")
    reported = {k for _, k, _ in problems}
    for where, value in _non_finite(data):  # NaN passes every JSON Schema minimum/maximum
        key = _key(_named(where, data), None)
        if key not in reported:
            bad(key, f"must be a finite number, got {value}")
    if problems:
        raise ConfigError(problems)
    lim = data.get("limits", {})
    limits = LimitsConfig(client_rate=lim.get("client_rate"), client_burst=lim.get("client_burst", LimitsConfig.client_burst))
    return Config(device=device, broker=broker, drivers=drivers, path=path, link=link, store=store, rbac=policy,
                  limits=limits)


SECRET_KEYS = frozenset({"broker.password"})


def _secret_safe(key: str, message: str, err: Any) -> str:
    """A schema message about a secret key without its value (``must be a string, got an
    integer``): a wrongly typed password is still a password."""
    if key not in SECRET_KEYS and not key.startswith(("broker.url", "auth.")):
        return message
    from edge_agent.device.config_messages import expected

    got = type(err.instance).__name__ if err.instance is not None else "nothing"
    shown = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
             "list": "a list", "dict": "a table"}.get(got, got)
    return f"must be {expected(err.schema)}, got {shown} (the value is not shown: it may be a secret)"


def _policy(table: dict[str, Any] | None, bad) -> Policy:
    """``[rbac]`` → :class:`Policy`; without it every client may do everything."""
    if table is None:
        return Policy.open()
    roles = {"viewer": VIEWER, "operator": OPERATOR}
    for i, r in enumerate(table.get("roles", [])):
        tools = r.get("allowed_tools", "read_only")
        res = r.get("allowed_resources", "all")
        roles[r["name"]] = Role(r["name"], r.get("description", ""), tuple(r["allowed_methods"]) if "allowed_methods" in r else None,
                                tools if isinstance(tools, str) else tuple(tools),
                                res if isinstance(res, str) else tuple(res))
    default = table.get("default_role", "viewer")
    if default not in roles:
        bad("rbac.default_role", f"unknown role {default!r}; roles: {', '.join(roles)}")
        default = "viewer"
    rules = []
    for i, rule in enumerate(table.get("rules", [])):
        if rule["role"] not in roles:
            bad(f"rbac.rules[{i}].role", f"unknown role {rule['role']!r}; roles: {', '.join(roles)}")
            continue
        rules.append((rule["client_id"], rule["role"]))
    return Policy(roles=roles, rules=rules, default=default)


def _auth(table: dict[str, Any], policy: Policy, device: DeviceConfig, base_dir: str | None, bad) -> None:
    """``[auth]`` → ``policy.verifier`` (signed client tokens, docs/security.md) and
    ``policy.token_required`` (default true once ``[auth]`` is there)."""
    from edge_agent.server.tokens import TokenError, verifier_from_config

    try:
        import cryptography  # noqa: F401
        import jwt  # noqa: F401
    except ImportError as exc:
        bad("auth", f"signed tokens need the Python library {exc.name!r}: pip install 'edge-agent-mcp[auth]' "
            "(or sudo apt install python3-jwt python3-cryptography)")
        return
    issuers = []
    for i, entry in enumerate(table.get("issuers", [])):
        if ("jwks_file" in entry) == ("jwks_credential" in entry):
            bad(f"auth.issuers[{i}]", "give exactly one of jwks_file (a JWKS JSON file) and jwks_credential "
                "(a systemd credential name)")
            continue
        entry = dict(entry)
        if "jwks_file" in entry:
            entry["jwks_file"] = _resolve(entry["jwks_file"], base_dir)
        issuers.append(entry)
    if not issuers:
        if "issuers" not in table:
            bad("auth.issuers", "required: [[auth.issuers]] with issuer and jwks_file (or jwks_credential)")
        return
    try:
        policy.verifier = verifier_from_config({**table, "issuers": issuers}, server_id=device.server_id,
                                               server_name=device.server_name)
    except TokenError as exc:
        bad("auth.issuers", str(exc))
        return
    policy.token_required = table.get("required", True)


def _parses(url: str) -> bool:
    try:
        parse_broker_url(url)
    except ValueError:
        return False
    return True


def driver_key(index: int, tables: list[Any]) -> str:
    """How a ``[[drivers]]`` table is named in problems: ``drivers.<name>`` when its name is
    valid and unique, else ``drivers[<index>]``."""
    table = tables[index] if 0 <= index < len(tables) else None
    name = table.get("name") if isinstance(table, dict) else None
    if isinstance(name, str) and NAME.match(name) and \
            sum(isinstance(t, dict) and t.get("name") == name for t in tables) == 1:
        return f"drivers.{name}"
    return f"drivers[{index}]"


def _named(path, data: dict[str, Any]) -> list[Any]:
    """A key path with ``"drivers", i`` replaced by the driver's display key."""
    path = list(path)
    tables = data.get("drivers") if isinstance(data, dict) else None
    if len(path) >= 2 and path[0] == "drivers" and isinstance(path[1], int) and isinstance(tables, list):
        return [driver_key(path[1], tables), *path[2:]]
    return path


def _strings(value: Any, path: tuple = ()):
    """``(path, string)`` of every string value in ``value``."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, path + (i,))


def _non_finite(value: Any, path: tuple = ()):
    """``(path, value)`` of every NaN or infinity in ``value`` (TOML allows ``nan``, ``inf``)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, path + (i,))


def _secret(path: str) -> str:
    """A password from a small regular file (first and last whitespace stripped).

    Raises:
        FileProblem: missing, unreadable, not a regular file (``/dev/zero``, a FIFO), over
            64 KiB, or not UTF-8.
    """
    raw = read_small(path, SECRET_LIMIT, "password file")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise FileProblem("is not UTF-8 text (a password file holds the password on one line)") from None


def _drivers(tables: list[dict[str, Any]], bad) -> list[DriverConfig]:
    from edge_agent.drivers import DriverPluginError, driver_class, is_known, known_kinds

    out: list[DriverConfig] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(tables):
        where = driver_key(i, tables)
        kind, name = table.get("kind"), table.get("name")
        if not isinstance(kind, str):
            bad(f"{where}.kind", f"required; one of {', '.join(known_kinds())}")
            continue
        if not is_known(kind):  # built-in, or declared by an installed package (entry point)
            known = known_kinds()
            from edge_agent.device.config_messages import did_you_mean  # error path only (difflib)

            bad(f"{where}.kind", f"unknown driver kind {kind!r}{did_you_mean(kind, known)} (known: {', '.join(known)})")
            continue
        if not isinstance(name, str) or not NAME.match(name):
            bad(f"{where}.name", "required: lower-case letters, digits and '_', starting with a letter, at most 40"
                + (f"; got {name!r}" if isinstance(name, str) else ""))
            continue
        if name in seen:
            bad(f"{where}.name", f"duplicate driver name {name!r} (also drivers[{seen[name]}])")
            continue
        seen[name] = i
        for common in ("poll_interval", "deadband"):
            value = table.get(common)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
                bad(f"{where}.{common}", "must be a number >= 0")
        rate = table.get("rate_limit")
        if rate is not None:
            ok = isinstance(rate, dict) and set(rate) <= {"rate", "burst"} and "rate" in rate and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in rate.values())
            if not ok or rate["rate"] <= 0 or rate.get("burst", 1) < 1:
                bad(f"{where}.rate_limit", "must be {rate = CALLS_PER_SECOND (> 0), burst = N (>= 1)}")
                rate = None
        if "description" in table and not isinstance(table["description"], str):
            bad(f"{where}.description", "must be a string")
        for flag in ("enabled", "simulate", "sensor_tools"):
            if flag in table and not isinstance(table[flag], bool):
                bad(f"{where}.{flag}", "must be true or false")
        if table.get("enabled", True) is False:
            continue
        options = {k: v for k, v in table.items() if k not in COMMON_DRIVER_KEYS}
        try:
            cls = driver_class(kind)
        except DriverPluginError:
            cls = None  # a broken plugin fails this driver at run (check reports it), not the config
        except ImportError as exc:
            bad(f"{where}.kind", missing_library(kind, exc))
            continue
        for err in _schema_errors(cls.options_schema, options) if cls is not None else []:
            for key, message in _explain([where, *err.absolute_path], err, also=COMMON_DRIVER_KEYS):
                bad(key, message)
        out.append(DriverConfig(kind=kind, name=name, options=options, poll_interval=table.get("poll_interval"),
                                deadband=table.get("deadband"), simulate=table.get("simulate"),
                                description=table.get("description"),
                                rate_limit=(float(rate["rate"]), float(rate.get("burst", 1))) if rate else None,
                                sensor_tools=table.get("sensor_tools", True) is not False, index=i))
    return out


def _schema_errors(schema: Any, value: Any) -> list[Any]:
    """``jsonschema`` Draft 2020-12 errors of ``value``; ``[]`` at once, without importing
    ``jsonschema`` (~4 MB of RSS and ~0.1 s of start-up on a Pi), when :func:`surely_valid` says
    the value fits. Only a config with a problem pays for the full validator, whose errors
    make the plain-language messages."""
    if surely_valid(schema, value):
        return []
    from jsonschema import Draft202012Validator

    return list(Draft202012Validator(schema).iter_errors(value))


_ANNOTATIONS = frozenset(("description", "title", "default", "examples", "$schema", "$comment", "format",
                          "x-unit", "unit", "readOnly", "writeOnly", "deprecated"))
_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def surely_valid(schema: Any, v: Any) -> bool:
    """True only if ``v`` is valid against ``schema`` under JSON Schema Draft 2020-12 (as
    ``jsonschema`` judges it). Checks the keywords config schemas use (type, enum, const,
    minimum, maximum, exclusiveMinimum/Maximum, minLength, maxLength, pattern, minItems,
    maxItems, uniqueItems, items, required, properties, additionalProperties, anyOf; annotations
    and ``x-*`` keywords ignored, as ``jsonschema`` ignores them); any other keyword, a NaN, or a doubt gives False, and the caller asks ``jsonschema``."""
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, dict):
        return False
    for key, want in schema.items():
        if key in _ANNOTATIONS or key.startswith("x-"):  # x-*: our own annotations (x-unit, x-addresses)
            continue
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if key == "type":
            names = want if isinstance(want, list) else [want]
            if not any(name in _TYPES and _TYPES[name](v) for name in names):
                return False
        elif key in ("enum", "const"):
            options = want if key == "enum" else [want]
            if not isinstance(options, list) or not any(type(v) is type(o) and v == o for o in options):
                return False
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if not number:
                continue
            if not isinstance(want, (int, float)) or isinstance(want, bool) or v != v:
                return False
            if not {"minimum": v >= want, "maximum": v <= want, "exclusiveMinimum": v > want,
                    "exclusiveMaximum": v < want}[key]:
                return False
        elif key in ("minLength", "maxLength", "pattern"):
            if not isinstance(v, str):
                continue
            if key == "pattern":
                if not isinstance(want, str) or re.search(want, v) is None:
                    return False
            elif not isinstance(want, int) or (len(v) < want if key == "minLength" else len(v) > want):
                return False
        elif key in ("minItems", "maxItems", "uniqueItems", "items"):
            if not isinstance(v, list):
                continue
            if key == "items":
                if not all(surely_valid(want, item) for item in v):
                    return False
            elif key == "uniqueItems":
                if want is not False and not (want is True and _distinct(v)):
                    return False
            elif not isinstance(want, int) or (len(v) < want if key == "minItems" else len(v) > want):
                return False
        elif key in ("required", "properties", "additionalProperties"):
            if not isinstance(v, dict):
                continue
            if key == "required":
                if not isinstance(want, list) or any(k not in v for k in want):
                    return False
            elif key == "properties":
                if not isinstance(want, dict) or not all(surely_valid(want[k], v[k]) for k in want if k in v):
                    return False
            else:
                known = schema.get("properties", {})
                if "patternProperties" in schema or not isinstance(known, dict):
                    return False
                if not all(surely_valid(want, v[k]) for k in v if k not in known):
                    return False
        elif key == "anyOf":
            if not isinstance(want, list) or not any(surely_valid(sub, v) for sub in want):
                return False
        else:
            return False
    return True


def _distinct(items: list[Any]) -> bool:
    """No two items alike, for plain scalars only (anything else: not sure, so False)."""
    if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in items):
        return False
    return len({(isinstance(x, str), x) for x in items}) == len(items)


def missing_library(kind: str, exc: ImportError) -> str:
    """The problem for a driver ``kind`` whose library is not installed, naming the pip extra."""
    module = (exc.name or "").split(".")[0] or str(exc)
    extra = EXTRAS.get(module)
    fix = f"pip install 'edge-agent-mcp[{extra}]'" if extra else "pip install edge-agent-mcp with the extra it needs"
    apt = {"gpiozero": "python3-gpiozero", "serial": "python3-serial", "smbus2": "python3-smbus2"}.get(module)
    also = f" (or sudo apt install {apt} in a venv made with --system-site-packages)" if apt else ""
    return f"{kind} needs the Python library {module!r}, which is not installed: {fix}{also}"


def _explain(path, err, also=()) -> list[tuple[str, str]]:
    """(key, plain message) for one schema error; an unknown-keys error gives one per key, with
    a "did you mean" among the known keys (and ``also``, keys valid elsewhere in the table)."""
    from edge_agent.device.config_messages import did_you_mean, plain  # error path only (difflib)

    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = list(err.schema.get("properties", {}))
        out = []
        for extra in sorted(set(err.instance) - set(known), key=str):
            hint = did_you_mean(extra, [*known, *also])
            base = _key(path, None)
            out.append((f"{base}.{extra}" if base != "-" else (str(extra) or "-"),
                        f"unknown key{hint or ('; known keys: ' + ', '.join(known) if known else '')}"))
        if out:
            return out
    return [(_key(path, err), plain(err))]


def _key(path, err) -> str:
    parts: list[str] = []
    for p in path:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        else:
            parts.append(str(p))
    # An additionalProperties / required error is about a key below the path: name it.
    if err is None:
        pass
    elif err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            parts.append(extra[0])
    elif err.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", err.message)
        if missing:
            parts.append(missing[0])
    return ".".join(parts) or "-"


def _resolve(value: str, base_dir: str | None) -> str:
    if base_dir and not os.path.isabs(value):
        return os.path.join(base_dir, value)
    return value
