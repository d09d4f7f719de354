# Which tool input schemas the core's argument checker (args.py) covers: the keywords it checks
# (JSON Schema 2020-12 validation vocabulary, the subset device tools use) and the annotations
# it may ignore. The Pi server checks a tool whose schema uses any other keyword with the full
# validator instead (edge_agent/server). Only the Pi loads this module: a board checks every
# tool with args.py (docs/esp32.md "Memory"). Runs on CPython and MicroPython.

KEYWORDS = set(("type", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                      "minLength", "maxLength", "required", "properties", "additionalProperties", "items",
                      "minItems", "maxItems", "default", "description", "title", "examples", "$schema",
                      "format", "x-unit", "unit"))


def supported(schema):
    """True if every keyword of ``schema`` (recursively) is one args.py checks or may ignore."""
    if not isinstance(schema, dict):
        return isinstance(schema, bool)
    for key, value in schema.items():
        if key not in KEYWORDS:
            return False
        if key == "properties":
            if not isinstance(value, dict) or not all(supported(s) for s in value.values()):
                return False
        elif key in ("items", "additionalProperties"):
            if not supported(value):
                return False
        elif key == "type" and not (isinstance(value, str) or isinstance(value, list)):
            return False
    return True
