"""A server's catalog and its digest: what ``tools/list``, ``resources/list``,
``resources/templates/list`` and ``prompts/list`` return, as one dict, and a short hash of it.

The device puts the digest in its retained presence (``meta["catalogDigest"]``), so a gateway
that already holds the catalog of that digest needs no ``initialize`` and no list round trip
for the device (docs/fleet.md, "Catalog by digest"). Two devices built from the same config
have the same digest and share one stored catalog.

The catalog is the full, unpaginated lists with no role applied (the role a session gets
filters what it is shown; the digest names what the server has).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from edge_agent.server.mcp import McpServer

DIGEST_CHARS = 16  # hex characters kept of the sha256 (64 bits)
META_KEY = "catalogDigest"  # the presence meta key


def catalog(server: McpServer) -> dict[str, list[dict[str, Any]]]:
    """The server's catalog: ``{"tools": [...], "resources": [...], "resourceTemplates": [...],
    "prompts": [...]}``, each list as the matching MCP list method returns its entries (MCP
    2025-11-25 server/tools, server/resources, server/prompts), all pages, no role applied."""
    reg = server.registry
    return {
        "tools": [t.describe() for t in reg.tools.values()],
        "resources": [r.describe() for r in reg.resources.values()],
        "resourceTemplates": [t.describe() for t in reg.templates],
        "prompts": [p.describe() for p in reg.prompts.values()],
    }


def digest_of(cat: dict[str, Any]) -> str:
    """The digest of a catalog dict: sha256 of its canonical JSON (sorted keys, no whitespace,
    UTF-8, non-ASCII kept), first :data:`DIGEST_CHARS` lowercase hex characters."""
    text = json.dumps(cat, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_CHARS]


def catalog_digest(server: McpServer) -> str:
    """The digest of ``server``'s :func:`catalog` (16 hex characters). It changes whenever a
    list method would answer differently (a tool added, removed, or its description marked
    degraded/unavailable), which is when the server sends ``notifications/*/list_changed``."""
    return digest_of(catalog(server))
