"""JSON Schema errors said in plain words, and "did you mean" for misspelt keys and kinds.

:func:`plain` turns a ``jsonschema.ValidationError`` into what is wrong with the value as the
user wrote it in TOML: ``must be an integer, got the string '17'``, ``must be one of: 0, 1;
got 2``, ``unknown key 'activ_high'; did you mean 'active_high'?``. It never returns the raw
validator wording (``is not valid under any of the given schemas``, ``Additional properties
are not allowed``).
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
from typing import Any, Iterable

_TYPES = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
          "array": "a list [...]", "object": "a table", "null": "empty"}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'active_high'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), sorted(set(choices)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def toml(value: Any) -> str:
    """How ``value`` reads in TOML words: ``the string '17'``, ``the integer 17``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"the number {value!r}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return f"the string {value[:60]!r}" + ("..." if len(value) > 60 else "")
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return f"the date/time {value.isoformat()}"
    return type(value).__name__


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def expected(schema: Any) -> str:
    """What ``schema`` accepts, in words: ``an integer 0..27``, ``one of: 0, 1``."""
    if not isinstance(schema, dict):
        return "a valid value"
    if "enum" in schema:
        return "one of: " + ", ".join(_literal(v) for v in schema["enum"])
    for alt in ("anyOf", "oneOf"):
        if alt in schema:
            return " or ".join(expected(s) for s in schema[alt])
    types: Any = schema.get("type")
    if isinstance(types, list):
        words = " or ".join(_TYPES.get(t) or str(t) for t in types)
    else:
        words = _TYPES.get(types, "a valid value")
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if lo is not None and hi is not None:
        words += f" {lo}..{hi}"
    elif lo is not None:
        words += f" {'>' if 'exclusiveMinimum' in schema else '>='} {lo}"
    elif hi is not None:
        words += f" {'<' if 'exclusiveMaximum' in schema else '<='} {hi}"
    if "pattern" in schema and types == "string":
        words += f" of the form {schema['pattern']}"
    if types == "array" and isinstance(schema.get("items"), dict):
        words += f" whose items are {expected(schema['items'])}"
    return words


def _unit(schema: Any) -> str:
    """The unit in a property description, "(s)", "(°)", "(Hz)": ``" s"`` or ``""``."""
    desc = schema.get("description", "") if isinstance(schema, dict) else ""
    if desc.endswith(")") and "(" in desc:
        unit = desc[desc.rindex("(") + 1:-1]
        if 0 < len(unit) <= 5 and " " not in unit:
            return f" {unit}"
    return ""


def plain(err) -> str:
    """The message for one ``jsonschema.ValidationError``."""
    v, schema, value = err.validator, err.schema, err.instance
    if v == "additionalProperties":
        known = list(schema.get("properties", {}))
        extra = sorted(set(value) - set(known)) if isinstance(value, dict) else []
        if extra:
            hint = did_you_mean(extra[0], known)
            return f"unknown key {extra[0]!r}{hint or ('; known keys: ' + ', '.join(known) if known else '')}"
    if v == "required":
        missing = err.validator_value
        name = next((m for m in missing if isinstance(value, dict) and m not in value), "?")
        what = schema.get("properties", {}).get(name, {})
        desc = what.get("description") if isinstance(what, dict) else None
        return f"required key missing{': ' + desc if desc else ''}"
    if v == "type":
        return f"must be {expected(schema)}, got {toml(value)}"
    if v == "enum":
        hint = did_you_mean(value, [x for x in err.validator_value if isinstance(x, str)]) if isinstance(value, str) else ""
        return f"must be {expected(schema)}; got {toml(value)}{hint}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        unit = _unit(schema)
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        if lo is not None and hi is not None and "exclusiveMinimum" not in schema and "exclusiveMaximum" not in schema:
            return f"must be between {lo} and {hi}{unit}, got {value}{unit}"
        words = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most",
                 "exclusiveMaximum": "less than"}[v]
        return f"must be {words} {err.validator_value}{unit}, got {value}{unit}"
    if v in ("anyOf", "oneOf"):
        desc = schema.get("description")
        hint = ""
        if isinstance(value, str) and value.strip().isdigit() and any(
                isinstance(s, dict) and s.get("type") == "integer" for s in schema[v]):
            hint = f"; write the number without quotes ({int(value)})"
        return f"{'expected ' + desc if desc else 'must be ' + expected(schema)}; got {toml(value)}{hint}"
    if v == "pattern":
        desc = schema.get("description")
        return f"{toml(value)} is not {desc if desc else 'of the form ' + err.validator_value}"
    if v == "minLength":
        return "must not be empty" if err.validator_value == 1 else f"must be at least {err.validator_value} characters"
    if v == "maxLength":
        return f"must be at most {err.validator_value} characters, got {len(value)}"
    if v == "minItems":
        return f"must list at least {err.validator_value} item(s)"
    if v == "uniqueItems":
        return "lists an item twice"
    if v == "const":
        return f"must be {_literal(err.validator_value)}, got {toml(value)}"
    return f"{toml(value)} is not accepted ({v})"
