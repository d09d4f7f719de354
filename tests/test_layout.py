"""The package layout keeps its promises (docs/architecture.md, "Layers"): which part may
import which. Checked on the import statements of every module (module level and inside
functions), so a lazy import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "edge_agent"

# part -> the parts of edge_agent it must never import
FORBIDDEN = {
    "core": {"server", "mqtt", "device", "client", "gateway", "testing", "drivers", "cloud", "cli", "demo"},
    "server": {"mqtt", "device", "client", "gateway", "testing", "drivers", "cloud", "cli", "demo"},
    "mqtt": {"server", "device", "client", "gateway", "testing", "drivers", "cloud", "cli", "demo"},
    "drivers": {"core", "server", "mqtt", "device", "client", "gateway", "testing", "cloud", "cli", "demo"},
    "device": {"client", "gateway", "testing", "cloud", "cli", "demo"},
    "client": {"device", "gateway", "testing", "drivers", "server", "demo"},
    "gateway": {"device", "testing", "drivers", "server", "demo"},
}


def _imports(path: Path) -> set[str]:
    """The edge_agent subpackages a module imports (absolute imports only: relative ones stay
    inside the module's own part)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "edge_agent" else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "edge_agent" and len(parts) > 1:
                found.add(parts[1])
    return found


def _modules(part: str) -> list[Path]:
    return sorted((PKG / part).resolve().rglob("*.py"))


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_part_imports_only_what_it_may(part):
    modules = _modules(part)
    assert modules, f"edge_agent/{part} is empty"
    bad = {str(m.relative_to(ROOT)): sorted(_imports(m) & FORBIDDEN[part]) for m in modules}
    assert not {k: v for k, v in bad.items() if v}


def test_drivers_folder_is_installed_as_edge_agent_drivers():
    link = PKG / "drivers"
    assert link.is_symlink() and link.resolve() == (ROOT / "drivers").resolve()
    import edge_agent.drivers

    assert Path(edge_agent.drivers.__file__).resolve().parent == (ROOT / "drivers").resolve()


def test_the_public_cloud_names_stay():
    import edge_agent.cloud as cloud

    assert {"mqtt_client", "connect", "discover", "ServerPresence"} <= set(cloud.__all__)
    from edge_agent.client.transport import mqtt_client

    assert cloud.mqtt_client is mqtt_client
