# The method table: the one place that says, for each MCP method a server serves, which
# capability it needs, whether it may come before initialize, whether it changes what a
# persisted session must remember (durable), and its access class for roles.
# Sources: MCP 2025-11-25 basic/lifecycle (what may precede initialization: ping, and
# logging/setLevel as the SDKs send it), server/* (which capability each method belongs to).
# Runs on CPython and MicroPython.

from collections import namedtuple

OPEN = "open"  # every session, whatever its role (the lifecycle itself)
READ = "read"  # lists, reads, subscriptions, read-only tool calls: the viewer role
WRITE = "write"  # changes the device beyond a session: only roles that list it

# name -> (capability path or None, allowed before initialize, durable, access)
# A capability path "resources.subscribe" means {"resources": {"subscribe": true}}. The access
# classes are spelt as literals (OPEN, READ, WRITE): a tuple of constants is one constant object
# (in flash when the board library is frozen) instead of a tuple built in RAM at import.
KNOWN = {
    "initialize": (None, True, True, "open"),
    "ping": (None, True, False, "open"),
    "logging/setLevel": ("logging", True, True, "read"),
    "tools/list": ("tools", False, False, "read"),
    "tools/call": ("tools", False, False, "read"),  # each tool is checked again by its annotations
    "resources/list": ("resources", False, False, "read"),
    "resources/templates/list": ("resources", False, False, "read"),
    "resources/read": ("resources", False, False, "read"),
    "resources/subscribe": ("resources.subscribe", False, True, "read"),
    "resources/unsubscribe": ("resources.subscribe", False, True, "read"),
    "prompts/list": ("prompts", False, False, "read"),
    "prompts/get": ("prompts", False, False, "read"),
    "completion/complete": ("completions", False, False, "read"),
}

# Notifications the dispatcher handles itself (never refused by a role).
LIFECYCLE_NOTIFICATIONS = ("notifications/initialized", "notifications/cancelled")


# One served method: ``handler(session, params, request)`` (async), and its rules. A named
# tuple, not a class: on a board each instance is 32 bytes instead of 64 (an instance's
# attributes live in a hash table of their own), and the table holds one per served method.
Method = namedtuple("Method", ("name", "handler", "capability", "before_init", "durable", "access"))


class MethodTable:
    """The methods one server serves. ``add`` takes a method's rules from :data:`KNOWN` unless
    given; a method MCP does not define needs its rules spelt out (defaults: no capability,
    not before initialize, not durable, ``READ``)."""

    def __init__(self):
        self.methods = {}

    def add(self, name, handler, capability=0, before_init=None, durable=None, access=None):
        known = KNOWN.get(name, (None, False, False, READ))
        self.methods[name] = Method(
            name, handler,
            known[0] if capability == 0 else capability,
            known[1] if before_init is None else before_init,
            known[2] if durable is None else durable,
            known[3] if access is None else access)

    def get(self, name):
        return self.methods.get(name)

    def names(self, access=None):
        """Served method names, optionally only those of one access class."""
        return [n for n, m in self.methods.items() if access is None or m.access == access]

    def durable(self, name):
        m = self.methods.get(name)
        return m is not None and m.durable

    def capabilities(self, extra=None):
        """The ``capabilities`` of the initialize result: one entry per capability path the
        served methods need, merged with ``extra`` (e.g. ``{"tools": {"listChanged": True}}``)."""
        caps = {}
        for m in self.methods.values():
            if m.capability:
                parts = m.capability.split(".", 1)
                head, flag = parts[0], parts[1] if len(parts) > 1 else ""
                entry = caps.setdefault(head, {})
                if flag:
                    entry[flag] = True
        for key, value in (extra or {}).items():
            if key in caps:
                caps[key].update(value)
        return caps
