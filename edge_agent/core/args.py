# Tool argument checks over the JSON Schema subset that device tools use: the same rules on the
# Pi and on the board. Source: JSON Schema 2020-12 validation vocabulary (type, enum, const,
# minimum, maximum, exclusiveMinimum, exclusiveMaximum, minLength, maxLength, required,
# properties, additionalProperties, items, minItems, maxItems, default) and MCP server/tools
# (inputSchema is an object schema). Runs on CPython and MicroPython.
#
# A schema using any other keyword is outside the subset: subset.supported says so (the Pi
# server checks such a tool with the full validator instead, edge_agent/server; the board has
# only this checker and never loads subset.py).
import sys

from .jsonrpc import quote

if sys.implementation.name != "micropython":  # the Pi's callers name them here (core/subset.py)
    from .subset import KEYWORDS, supported  # noqa: F401

def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def finite(value):
    """False if ``value`` holds a NaN or an infinity anywhere (JSON Schema ranges let them by)."""
    if isinstance(value, float):
        return value - value == 0  # NaN - NaN and inf - inf are NaN
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True


def _type_ok(t, v):
    if t == "number":
        return is_number(v)
    if t == "integer":
        return is_number(v) and (isinstance(v, int) or finite(v) and v == int(v))  # int(inf) raises
    if t == "string":
        return isinstance(v, str)
    if t == "boolean":
        return v is True or v is False
    if t == "object":
        return isinstance(v, dict)
    if t == "array":
        return isinstance(v, list)
    if t == "null":
        return v is None
    return True  # an unknown type name constrains nothing


def _unit(schema):
    unit = schema.get("x-unit") or schema.get("unit")
    return " " + unit if isinstance(unit, str) and unit else ""


def check_value(schema, v, where):
    """Why ``v`` does not fit ``schema``: one message starting with ``where``, or None."""
    if schema is True or not isinstance(schema, dict):
        return None if schema is not False else "%s: no value is allowed here" % where
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_type_ok(x, v) for x in types):
            what = " or ".join(types)
            if is_number(v) and not finite(v):
                what = "finite " + what
            return "%s must be %s %s, not %s" % (where, "an" if what[0] in "aeiou" else "a", what, quote(v))
    if is_number(v) and not finite(v):
        return "%s: NaN and infinity are not accepted" % where
    if "const" in schema and v != schema["const"]:
        return "%s must be %s, not %s" % (where, quote(schema["const"]), quote(v))
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(v == e and type(v) is type(e) or (is_number(v) and is_number(e) and v == e)
                                          for e in enum):
        return "%s must be one of %s, not %s" % (where, ", ".join(quote(e) for e in enum), quote(v))
    if is_number(v):
        unit = _unit(schema)
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if is_number(lo) and v < lo:
            return "%s: %s is below the minimum %s%s" % (where, quote(v), lo, unit)
        if is_number(hi) and v > hi:
            return "%s: %s is above the maximum %s%s" % (where, quote(v), hi, unit)
        lo, hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if is_number(lo) and v <= lo:
            return "%s: %s must be above %s%s" % (where, quote(v), lo, unit)
        if is_number(hi) and v >= hi:
            return "%s: %s must be below %s%s" % (where, quote(v), hi, unit)
    elif isinstance(v, str):
        lo, hi = schema.get("minLength"), schema.get("maxLength")
        if is_number(lo) and len(v) < lo:
            return "%s: %s is below the minimum %s characters" % (where, quote(v), lo)
        if is_number(hi) and len(v) > hi:
            return "%s: %s is above the maximum %s characters" % (where, quote(v), hi)
    elif isinstance(v, list):
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        if is_number(lo) and len(v) < lo:
            return "%s: at least %s items, not %d" % (where, lo, len(v))
        if is_number(hi) and len(v) > hi:
            return "%s: at most %s items, not %d" % (where, hi, len(v))
        items = schema.get("items")
        if items is not None:
            for i, item in enumerate(v):
                problem = check_value(items, item, "%s[%d]" % (where, i))
                if problem:
                    return problem
    elif isinstance(v, dict):
        return _check_object(schema, v, where + ".")
    return None


def _check_object(schema, obj, prefix):
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties", True)
    for k in obj:
        if k not in props:
            if extra is False:
                return "unknown argument %s%s (expected: %s)" % (prefix, quote(k), ", ".join(props) or "none")
            problem = check_value(extra, obj[k], prefix + k)
            if problem:
                return problem
    for k in schema.get("required") or ():
        if k not in obj:
            return "missing required argument " + prefix + k
    for k, sub in props.items():
        if k in obj:
            problem = check_value(sub, obj[k], prefix + k)
            if problem:
                return problem
    return None


def check(schema, arguments):
    """Why ``arguments`` (a dict) do not fit the tool's ``inputSchema``: a message naming the
    argument and the bound (``angle: 500 is above the maximum 90 °``), or None. Integral
    floats given for ``integer`` arguments become ints; never raises for any JSON input."""
    if not isinstance(arguments, dict):
        return "arguments must be an object"
    problem = _check_object(schema if isinstance(schema, dict) else {}, arguments, "")
    if problem:
        return problem
    for k, sub in (schema.get("properties") or {}).items() if isinstance(schema, dict) else ():
        v = arguments.get(k)
        if isinstance(sub, dict) and sub.get("type") == "integer" and isinstance(v, float):
            arguments[k] = int(v)
    return None


def fill_defaults(schema, arguments):
    """``arguments`` with every missing top-level property that has a ``default`` filled in."""
    for k, sub in (schema.get("properties") or {}).items():
        if k not in arguments and isinstance(sub, dict) and "default" in sub:
            arguments[k] = sub["default"]
    return arguments
