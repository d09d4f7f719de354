"""The cloud side's code: the MCP-over-MQTT client transport for the official ``mcp`` SDK
(:mod:`.transport`, :mod:`.link`, :mod:`.session`), discovery (:mod:`.discovery`) and the
``devices | tools | call | read | watch`` commands (:mod:`.cli`).

Import the public names from :mod:`edge_agent.cloud` (``mqtt_client``, ``connect``, ``discover``,
``ServerPresence``); they load lazily, so a device without the ``[cloud]`` extra can still
import the CLI.
"""
