"""Drivers as plug-ins: a package outside this repo adds a driver kind through the entry-point
group ``edge_agent.drivers``, with no edit here.

The end-to-end part builds a temporary venv (``--system-site-packages``: this checkout's
edge-agent and its dependencies are visible, nothing is downloaded), pip-installs into it the
example package of docs/writing-drivers.md (docs/examples/driver-package) and a broken one,
then runs ``edge-agent check`` and ``edge-agent run`` from the venv and drives the new kind's
tool over MQTT with the official ``mcp`` client. The rest checks discovery and its refusals
on real distribution metadata (``*.dist-info`` folders put on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import site as pysite
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edge_agent import drivers
from edge_agent.drivers import DriverPluginError, driver_class, plugin_kinds
from tests.agent_process import RawSubscriber

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "driver-package"
DOC = ROOT / "docs" / "writing-drivers.md"
NAME, SID = "devices/greenhouse/plugin-pi", "plugin-pi-1"

BROKEN_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "broken-edge-driver"
version = "0.1"

[project.entry-points."edge_agent.drivers"]
broken_import = "broken_edge:Thing"
not_a_driver = "broken_edge_ok:helper"
wrong_kind = "broken_edge_ok:WrongKind"
led = "broken_edge_ok:WrongKind"

[tool.setuptools]
py-modules = ["broken_edge", "broken_edge_ok"]
"""
BROKEN_MODULES = {
    "broken_edge.py": "import acme_library_that_is_not_installed  # noqa: F401\n",
    "broken_edge_ok.py": ("from edge_agent.drivers.kit import Driver\n\nhelper = 42\n\n\n"
                          "class WrongKind(Driver):\n    kind = 'something_else'\n"),
}


def doc_blocks(lang: str) -> list[str]:
    from tests.test_doc_blocks import blocks_of

    return [b.text for b in blocks_of(DOC) if b.lang == lang]


# ------------------------------------------------------------------ our own kinds, lookup cost


def test_the_doc_shows_the_installed_package():
    """docs/writing-drivers.md's pyproject block is the example package's (the Python blocks
    are compared by tests/test_doc_blocks.py: same-as)."""
    assert doc_blocks("toml")[0] == (EXAMPLE / "pyproject.toml").read_text()



def test_pyproject_declares_exactly_the_built_in_kinds():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["edge_agent.drivers"]
    assert declared == drivers.DRIVER_KINDS


def test_built_in_kinds_never_scan_the_installed_packages(tmp_path):
    """A config of built-in kinds is loaded and its drivers looked up without reading any
    distribution's metadata (a Pi's start-up does not pay for the scan)."""
    code = """
import sys
from edge_agent.device import config
from edge_agent.drivers import driver_class
c = config.from_dict({"device": {"server_name": "devices/a/b", "simulate": True},
                      "drivers": [{"kind": "system", "name": "host"}]})
driver_class("system")
import edge_agent.drivers.plugins as p
print(p._found is None)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr


def test_unknown_kind_without_the_package(tmp_path):
    """The example's kind is unknown here: only installing its package makes it known."""
    config = tmp_path / "agent.toml"
    config.write_text(_config_text(tmp_path, "mqtt://127.0.0.1:1", doc_blocks("toml")[-1]))
    done = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown driver kind 'acme_leaf_wetness'" in done.stderr, done.stderr


# ------------------------------------------------------------------ discovery on real metadata


def _dist(site: Path, name: str, version: str, entry_points: dict[str, str], modules: dict[str, str] | None = None):
    """An installed distribution as pip leaves it: ``<name>-<version>.dist-info`` with METADATA
    and entry_points.txt, and its modules next to it."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[edge_agent.drivers]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for filename, text in (modules or {}).items():
        (site / filename).write_text(text)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path for fake installed distributions; the plugin cache is rescanned
    after the test so others see the real environment."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    monkeypatch.undo()
    for name in [m for m in sys.modules if m.startswith(("plug_", "broken_edge"))]:
        del sys.modules[name]
    plugin_kinds(refresh=True)


def test_a_plugin_kind_loads_and_its_problems_are_named(site):
    _dist(site, "plug-good", "2.0", {"plug_probe": "plug_good:Probe"}, {
        "plug_good.py": "from edge_agent.drivers.kit import Driver\n\nclass Probe(Driver):\n    kind = 'plug_probe'\n"})
    _dist(site, "broken-edge-driver", "0.1", {
        "broken_import": "broken_edge:Thing", "not_a_driver": "broken_edge_ok:helper",
        "wrong_kind": "broken_edge_ok:WrongKind", "led": "broken_edge_ok:WrongKind",
        "no_attr": "broken_edge_ok:Missing", "Bad-Name": "broken_edge_ok:WrongKind"}, BROKEN_MODULES)
    found = plugin_kinds(refresh=True)
    assert driver_class("plug_probe").__module__ == "plug_good"
    assert "plug_probe" in drivers.known_kinds() and "broken_import" not in drivers.DRIVER_KINDS
    assert driver_class("led").__module__ == "edge_agent.drivers.gpio"  # the built-in wins the clash
    assert found["led"].problem and "clashes with edge-agent's built-in kind 'led'" in found["led"].problem
    problems = drivers.plugin_problems()
    expected = {
        "broken_import": "cannot import broken_edge (ModuleNotFoundError: No module named "
                         "'acme_library_that_is_not_installed')",
        "not_a_driver": "broken_edge_ok:helper is not a subclass of edge_agent.drivers.kit.Driver",
        "wrong_kind": "declares kind = 'something_else'; set it to 'wrong_kind'",
        "led": "clashes with edge-agent's built-in kind 'led': the built-in is used",
        "no_attr": "broken_edge_ok has no Missing",
        "Bad-Name": "not a valid kind name",
    }
    assert set(problems) == set(expected)
    for kind, words in expected.items():
        assert "broken-edge-driver 0.1" in problems[kind] and words in problems[kind], problems[kind]
    with pytest.raises(DriverPluginError, match="broken-edge-driver 0.1: cannot import broken_edge") as caught:
        driver_class("broken_import")
    assert caught.value.distribution == "broken-edge-driver 0.1" and caught.value.kind == "broken_import"


def test_two_packages_declaring_one_kind_are_both_refused(site):
    body = "from edge_agent.drivers.kit import Driver\n\nclass P(Driver):\n    kind = 'plug_twice'\n"
    _dist(site, "plug-one", "1.0", {"plug_twice": "plug_one:P"}, {"plug_one.py": body})
    _dist(site, "plug-two", "1.0", {"plug_twice": "plug_two:P"}, {"plug_two.py": body})
    plugin_kinds(refresh=True)
    with pytest.raises(DriverPluginError, match=r"declared by both plug-\w+ 1.0 .* and plug-\w+ 1.0 .*uninstall one"):
        driver_class("plug_twice")


def test_edge_agents_own_entry_points_are_not_plugins(site):
    """Stale metadata of an older edge-agent (a kind since removed) changes nothing."""
    _dist(site, "edge-agent-mcp", "0.0.1", {"led": "edge_agent.drivers.gpio:Led",
                                            "old_kind": "edge_agent.drivers.gone:Old"})
    found = plugin_kinds(refresh=True)
    assert "led" not in found and "old_kind" not in found
    with pytest.raises(KeyError, match="unknown driver kind 'old_kind'"):
        driver_class("old_kind")


# ------------------------------------------------------------------ end to end, in a venv


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv seeing this edge-agent (system site-packages), with the doc's example package and
    a broken one pip-installed into it (offline: no build isolation, no dependencies)."""
    base = tmp_path_factory.mktemp("plugins")
    env = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env)], check=True,
                   timeout=120)
    python = env / "bin" / "python"
    # --system-site-packages reaches the base interpreter's packages; when the tests run in a
    # venv themselves (make test: .venv), its site-packages (edge-agent, pip, setuptools) are
    # added after the new venv's own, .pth files included (the editable install is one).
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    parents = [d for d in pysite.getsitepackages() if os.path.isdir(d)]
    Path(purelib, "zz_parent_site.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in parents))
    broken = base / "broken"
    broken.mkdir()
    (broken / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    for filename, text in BROKEN_MODULES.items():
        (broken / filename).write_text(text)
    example = base / "acme-edge-leaf"
    for path in EXAMPLE.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            (example / path.relative_to(EXAMPLE)).parent.mkdir(parents=True, exist_ok=True)
            (example / path.relative_to(EXAMPLE)).write_bytes(path.read_bytes())
    for package in (example, broken):
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                               "--no-index", str(package)], cwd=base, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    return python


def _config_text(tmp_path: Path, broker_url: str, drivers_toml: str) -> str:
    return f"""
[device]
server_name = "{NAME}"
server_id = "{SID}"
simulate = true
state_dir = "{tmp_path / 'state'}"

[broker]
urls = ["{broker_url}"]
{_drivers_only(drivers_toml)}"""


def _drivers_only(toml_text: str) -> str:
    """The ``[[drivers]]`` tables of a config snippet (the doc's example has a [device] too)."""
    at = toml_text.find("[[drivers]]")
    return toml_text[at:] if at >= 0 else toml_text


def test_the_example_package_passes_its_own_tests_in_the_venv(venv, tmp_path):
    """docs/writing-drivers.md tells authors to test with a simulated context: those tests pass
    against the installed package."""
    done = subprocess.run([str(venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(EXAMPLE / "tests")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_check_and_run_a_kind_no_edit_here_made_known(venv, broker, tmp_path):
    leaf_toml = doc_blocks("toml")[-1]
    assert "acme_leaf_wetness" in leaf_toml
    good = tmp_path / "good.toml"
    good.write_text(_config_text(tmp_path, broker.url, leaf_toml + '\n[[drivers]]\nkind = "relay"\nname = "valve"\n'
                                 'pin = 5\n'))
    run = [str(venv), "-m", "edge_agent"]
    done = subprocess.run([*run, "check", "--config", str(good)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert ": OK:" in done.stdout and "2 driver(s)" in done.stdout
    # the broken package's kinds are not used: warned about, by distribution, and check passes
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4 and all("broken-edge-driver 0.1" in w for w in warnings), done.stderr

    both = tmp_path / "agent.toml"
    both.write_text(good.read_text() + '\n[[drivers]]\nkind = "broken_import"\nname = "bad"\n')
    done = subprocess.run([*run, "check", "--config", str(both)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert "drivers.bad.kind: driver kind 'broken_import' from broken-edge-driver 0.1: cannot import broken_edge" \
        in done.stderr

    # run: the broken driver fails on its own, the plug-in kind and the built-in one serve
    presence = RawSubscriber(broker.url, [f"$mcp-server/presence/{SID}/{NAME}"])
    log = tmp_path / "agent.log"
    with open(log, "wb") as stderr:
        agent = subprocess.Popen([*run, "run", "--config", str(both), "--log-level", "info"], cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=stderr, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        try:
            presence.wait_for(lambda m: bool(m.payload) and json.loads(m.payload)["method"]
                              == "notifications/server/online", timeout=20)
        except AssertionError:
            raise AssertionError(f"agent did not come online:\n{log.read_text()}") from None
        finally:
            presence.close()
        import anyio

        anyio.run(_drive, broker.url)
    finally:
        agent.terminate()
        assert agent.wait(15) == 0, log.read_text()
    text = log.read_text()
    assert "driver bad (broken_import) could not start" in text and "broken-edge-driver 0.1" in text


async def _drive(broker_url: str) -> None:
    from edge_agent.cloud import connect

    async with connect(broker_url, NAME) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert {"leaf_calibrate", "valve_on"} <= set(tools)
        assert tools["leaf_calibrate"].input_schema["required"] == ["dry_mv", "wet_mv"]
        done = await session.call_tool("leaf_calibrate", {"dry_mv": 2900, "wet_mv": 1100})
        assert not done.is_error, done
        assert done.structured_content["dry_mv"] == 2900 and 0 <= done.structured_content["wetness"] <= 100
        refused = await session.call_tool("leaf_calibrate", {"dry_mv": 1000, "wet_mv": 1200})
        assert refused.is_error and "must be above wet_mv" in refused.content[0].text
        reading = json.loads((await session.read_resource("sensor://leaf/wetness")).contents[0].text)
        assert reading["unit"] == "%" and 0 <= reading["value"] <= 100
        health = json.loads((await session.read_resource("device://health")).contents[0].text)
        assert health["drivers"]["leaf"]["status"] == "ok" and health["drivers"]["valve"]["status"] == "ok"
        bad = health["drivers"]["bad"]
        assert bad["status"] == "failed" and "broken-edge-driver 0.1" in bad["error"], bad
        assert not (await session.call_tool("valve_on", {})).is_error
