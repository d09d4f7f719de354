"""Device catalogs keyed by their digest, in memory and on disk: a listing with no round trip per device.

A device announces ``meta["catalogDigest"]`` in its retained presence
(:func:`edge_agent.server.catalog.catalog_digest`: 16 hex characters of a sha256 over the
canonical JSON of what ``tools/list``, ``resources/list``, ``resources/templates/list`` and
``prompts/list`` return). Devices built from the same configuration share a digest, so a
fleet of 10,000 devices of a few kinds has a few catalogs. The gateway fetches a catalog once
(one ``initialize`` and the four lists, from any device that announces the digest), keeps it
here, and serves every device announcing that digest from it: an unchanged device costs no
``initialize`` at all, also after a gateway restart (the catalogs are files
``<digest>.json`` in the cache folder).

The gateway trusts the announced digest (it does not re-hash what it fetched: the rule lives in
``edge_agent.server.catalog``, which the gateway's layer may not import). A device that shows
this gateway a filtered list (a role) under the same digest as others is served the catalog
fetched first; give such devices distinct configurations.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KINDS = {"tools": "tools", "resources": "resources", "templates": "resourceTemplates", "prompts": "prompts"}
"""The gateway's list kinds -> the catalog's keys (the list methods' result keys)."""
META_KEY = "catalogDigest"
"""The presence meta key (edge_agent.server.catalog.META_KEY; tests/test_fleet_catalog.py keeps them equal)."""
DIGEST = re.compile(r"^[0-9a-f]{16,64}$")
CACHE_ENV = "EDGE_AGENT_CATALOG_CACHE"


def default_cache_dir() -> Path:
    """``$EDGE_AGENT_CATALOG_CACHE``, else ``$XDG_CACHE_HOME/edge-agent/catalogs`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-agent" / "catalogs"


def announced_digest(meta: dict[str, Any]) -> str | None:
    """The ``catalogDigest`` a presence's meta announces, if it is one (lowercase hex, 16-64)."""
    value = meta.get(META_KEY)
    return value if isinstance(value, str) and DIGEST.match(value) else None


class CatalogStore:
    """Catalogs by digest: a dict, backed by ``directory`` (``None``: memory only).

    A catalog is ``{"tools": [...], "resources": [...], "resourceTemplates": [...],
    "prompts": [...]}`` (:func:`edge_agent.server.catalog.catalog`'s shape). Reads and writes
    of the folder are small and rare (once per new digest); a file that cannot be read or
    written is logged and skipped, never fatal.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = Path(directory) if directory is not None else None
        self.catalogs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.fetched = 0  # catalogs fetched from a device
        self.loaded = 0  # catalogs read from the folder

    def get(self, digest: str) -> dict[str, list[dict[str, Any]]] | None:
        """The catalog of ``digest``: from memory, else from the folder (then kept), else None."""
        found = self.catalogs.get(digest)
        if found is not None or self.directory is None:
            return found
        path = self.directory / f"{digest}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("catalog cache %s unreadable, ignored: %s", path, exc)
            return None
        if not isinstance(data, dict) or data.get("digest") != digest:
            log.warning("catalog cache %s is not the catalog of %s, ignored", path, digest)
            return None
        catalog = {key: [x for x in data.get(key) or [] if isinstance(x, dict)] for key in KINDS.values()}
        self.catalogs[digest] = catalog
        self.loaded += 1
        return catalog

    def put(self, digest: str, catalog: dict[str, list[dict[str, Any]]]) -> None:
        """Keep ``catalog`` as ``digest``'s, in memory and (atomically replaced) in the folder."""
        self.catalogs[digest] = catalog
        self.fetched += 1
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{digest}.", suffix=".tmp")
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"digest": digest, **catalog}, f, ensure_ascii=False, separators=(",", ":"))
                os.replace(tmp, self.directory / f"{digest}.json")
            except OSError as exc:
                log.warning("cannot write the catalog cache in %s: %s", self.directory, exc)

    @staticmethod
    def changed_kinds(old: dict[str, list[dict[str, Any]]] | None,
                      new: dict[str, list[dict[str, Any]]] | None) -> list[str]:
        """The list_changed kinds (``tools``, ``resources``, ``prompts``) that differ between two
        catalogs; all three when either is unknown."""
        if old is None or new is None:
            return ["tools", "resources", "prompts"]
        out = []
        if old.get("tools") != new.get("tools"):
            out.append("tools")
        if old.get("resources") != new.get("resources") or old.get("resourceTemplates") != new.get("resourceTemplates"):
            out.append("resources")
        if old.get("prompts") != new.get("prompts"):
            out.append("prompts")
        return out


LIST_METHODS = {"tools/list": "tools", "resources/list": "resources", "resources/templates/list": "templates",
                "prompts/list": "prompts"}


class PageCache:
    """Server middleware of the gateway (flat mode): the later pages of an aggregated list that
    has not changed are answered in their wire form, kept from the first time they were sent.

    The ``mcp`` SDK validates and re-dumps every list result against the protocol version's
    schema (``mcp_types.methods.serialize_server_result``, ~20 us per tool): for 10,000 devices'
    40,000 tools that, not the gateway, was most of a listing. A middleware that answers without
    ``call_next`` owns its result (``mcp.server.runner``), so a page already serialized for this
    protocol version, cursor and fleet generation is sent again as it is. First pages (no
    cursor) always go through the handler (a client's replica pinning happens there). Pages are
    kept only while the gateway's aggregated list of that kind is current
    (``Gateway._aggregated``, ``Fleet.generation``).
    """

    def __init__(self, gateway: Any):
        self.gateway = gateway
        self.pages: dict[tuple[str, str | None, str], tuple[int, Any]] = {}
        self.hits = 0

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        kind = LIST_METHODS.get(ctx.method)
        params = ctx.params if isinstance(getattr(ctx, "params", None), dict) else None
        cursor = params.get("cursor") if params else None
        if kind is None or not isinstance(cursor, str) or self.gateway.expose != "flat":
            return await call_next(ctx)
        key = (ctx.method, ctx.protocol_version, cursor)
        generation = self.gateway.fleet.generation
        hit = self.pages.get(key)
        if hit is not None and hit[0] == generation:
            self.hits += 1
            return hit[1]
        result = await call_next(ctx)
        listed = self.gateway._aggregated.get(kind)
        if listed is not None and listed[0] == generation == self.gateway.fleet.generation:
            if hit is not None or any(g != generation for g, _ in self.pages.values()):
                self.pages = {k: v for k, v in self.pages.items() if v[0] == generation}
            self.pages[key] = (generation, self._shared(result, kind, cursor, listed[1]))
        return result

    @staticmethod
    def _shared(result: Any, kind: str, cursor: str, listed: list[dict[str, Any]]) -> Any:
        """The page to keep: its items are the aggregated list's own objects when the SDK's
        dump equals them (it does for every item the devices send), so a kept page costs a list
        of references, not a second copy of 500 tools."""
        from edge_agent.gateway.server import _decode_cursor  # (server imports this module)

        key = KINDS[kind]
        items = result.get(key) if isinstance(result, dict) else None
        if not isinstance(items, list):
            return result
        start = _decode_cursor(cursor)
        mine = listed[start:start + len(items)]
        return {**result, key: mine} if mine == items else result
