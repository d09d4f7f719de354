"""Tool arguments made safe for a handler, after the schema check (issue 13 item 6).

JSON Schema says ``1.0`` is an integer, and a subnormal float such as ``4.9e-324`` is a number
above ``exclusiveMinimum: 0``; both pass the check, and then ``range(1.0)`` raises TypeError and
``180 / 4.9e-324`` overflows inside the driver, which the runtime took for a hardware fault (the
driver marked degraded for every client). :func:`normalise` turns such values into what the
handler expects, or refuses them as the caller's mistake (``ValueError``: an ``isError`` result,
never a driver fault). No I/O.
"""

from __future__ import annotations

import sys
from typing import Any

SMALLEST_NORMAL = sys.float_info.min  # 2.2250738585072014e-308


def normalise(schema: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` with every value at an ``integer`` property given as an integral float
    (``1.0``) turned into an ``int``; the same dict when nothing changed.

    Raises:
        ValueError: a number at a ``number``/``integer`` property that is subnormal
            (0 < abs(x) < 2.2e-308: no hardware step, time or angle is that small, and
            arithmetic on it overflows), naming the argument.
    """
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return arguments
    out = arguments
    for key, value in arguments.items():
        sub = props.get(key)
        fixed = _value(sub, value, key)
        if fixed is not value:
            if out is arguments:
                out = dict(arguments)
            out[key] = fixed
    return out


def _types(schema: Any) -> tuple[str, ...]:
    t = schema.get("type") if isinstance(schema, dict) else None
    return tuple(t) if isinstance(t, list) else (t,) if isinstance(t, str) else ()


def _value(schema: Any, value: Any, where: str) -> Any:
    if isinstance(value, float):
        if value != 0.0 and abs(value) < SMALLEST_NORMAL:
            raise ValueError(f"{where}: {value!r} is too small to be a real quantity (a subnormal float); "
                             "use 0 or a value of at least 1e-300")
        types = _types(schema)
        if "integer" in types and "number" not in types and value.is_integer():
            return int(value)
        return value
    if isinstance(value, dict) and isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        return normalise(schema, value)
    if isinstance(value, list) and isinstance(schema, dict):
        items = schema.get("items")
        fixed = [_value(items, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return fixed if any(a is not b for a, b in zip(fixed, value)) else value
    return value
