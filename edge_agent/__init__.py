"""edge-agent: a lightweight MCP server runtime for Raspberry Pi-class devices over MQTT 5.

Distributed as ``edge-agent-mcp`` (``pip install 'edge-agent-mcp[gpio]'``); the import name is
``edge_agent`` and the command ``edge-agent``. ``__version__`` is the one place the version is
written: ``pyproject.toml`` reads it from here (``[tool.setuptools.dynamic]``), so it never
depends on which distribution name the installed metadata carries.
"""

__version__ = "0.1.0"
