"""Topic names of the MCP-over-MQTT transport: the rules live in :mod:`edge_agent.core.topics`
(shared with the board); this module keeps the transport's import path."""

from ..core.topics import (COMPONENT_CLIENT, COMPONENT_SERVER, Topic, check_id, check_server_name, client_capability,
                           client_presence, client_topics, parse, presence_filter, rpc, server_capability,
                           server_control, server_presence)

__all__ = ["COMPONENT_CLIENT", "COMPONENT_SERVER", "Topic", "check_id", "check_server_name", "client_capability",
           "client_presence", "client_topics", "parse", "presence_filter", "rpc", "server_capability",
           "server_control", "server_presence"]
