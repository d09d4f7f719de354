"""What `make lint` relies on: the driver folder is only ever the package ``edge_agent.drivers``
(mypy checks it through the symlink; a top-level ``import drivers`` would make it a second,
separate package that exists only inside a checkout), and the settings the Makefile names."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _top_level_drivers_imports(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(n == "drivers" or n.startswith("drivers.") for n in names):
            lines.append(node.lineno)
    return lines


def test_nothing_imports_a_top_level_drivers_package():
    files = [p for part in ("edge_agent", "drivers", "tests", "bench") for p in (ROOT / part).rglob("*.py")
             if "node_modules" not in p.parts]
    assert len(files) > 50
    found = {str(p.relative_to(ROOT)): lines for p in files if (lines := _top_level_drivers_imports(p))}
    assert found == {}, "import edge_agent.drivers..., never drivers..."


def test_lint_settings():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mypy = conf["tool"]["mypy"]
    assert mypy["files"] == ["edge_agent"] and "^drivers/" in mypy["exclude"] and "^micropython/" in mypy["exclude"]
    assert not any(o.get("ignore_errors") for o in mypy.get("overrides", []))  # no module silenced wholesale
    assert "I" in conf["tool"]["ruff"]["lint"]["select"] and conf["tool"]["ruff"]["line-length"] == 120
    dev = conf["project"]["optional-dependencies"]["dev"]
    assert any(d.startswith("ruff") for d in dev) and any(d.startswith("mypy") for d in dev)
    makefile = (ROOT / "Makefile").read_text()
    assert "\nlint:" in makefile and "-m ruff check" in makefile and "-m mypy" in makefile
    test_rule = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "lint" in test_rule.split(":", 1)[1].split()  # make test lints first
