"""The first commands on a stock Debian 12 / Raspberry Pi OS: ``make demo`` with the system's
externally managed Python (PEP 668), and ``systemd/install.sh`` staging into ``DESTDIR``.

Everything runs the real thing: ``make`` on a copy of this checkout, Debian's own
``/usr/bin/python3`` (whose stdlib carries the ``EXTERNALLY-MANAGED`` marker), pip against the
package index (with the machine's warm cache), and the installer as root. What ``install.sh``
must never do when staging (users, groups, units, /opt) is checked on the live system before
and after.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from edge_agent import __version__

from .test_systemd import (
    INSTALL,
    ROOT,
    UNIT,
    need_tool,
    parse_unit,
    system_python,
    unit_for_verify,
)

IN_CI = bool(os.environ.get("CI"))
# the environment a user's shell would have: no venv of ours, no make of ours around the child
# (`make test PYTHON=...` exports PYTHON, which install.sh and make would take as theirs)
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHON",
                          "DESTDIR")}


def externally_managed(python: str) -> Path | None:
    """The ``EXTERNALLY-MANAGED`` marker in ``python``'s stdlib directory, or None."""
    run = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                         capture_output=True, text=True, timeout=30)
    marker = Path(run.stdout.strip()) / "EXTERNALLY-MANAGED"
    return marker if run.returncode == 0 and marker.is_file() else None


COPY_SKIPS = (".git", ".venv", "node_modules", "*.egg-info", "__pycache__", ".pytest_cache", "build", "dist",
              ".setup-done")


def copy_checkout(dest: Path) -> Path:
    """The files of this checkout as they are in the working tree (tracked and new, not
    ignored: no .venv, no egg-info, no node_modules), copied to ``dest``. Outside git (an
    unpacked tarball) the tree is copied without those."""
    git = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, timeout=60)
    if git.returncode != 0:
        shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(*COPY_SKIPS))
        return dest
    for rel in filter(None, git.stdout.decode().split("\0")):
        src = ROOT / rel
        if not src.exists() or (src.is_dir() and not src.is_symlink()):  # deleted, or a submodule
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    return dest


# --------------------------------------------------------------------------- make demo
@pytest.mark.timeout(900)
def test_make_demo_with_an_externally_managed_python(tmp_path):
    """``make demo PYTHON=/usr/bin/python3`` in a fresh copy of the checkout, with Debian's
    Python whose stdlib has ``EXTERNALLY-MANAGED`` (``pip install`` into it fails): exit 0, the
    demo prints "demo OK", the one line about the project venv is printed, ``.venv`` is made
    from that Python, and only what the demo needs went in (no dev extra: no pytest; no npm).
    A second ``make demo`` installs nothing; a changed pyproject.toml installs again."""
    python = system_python()
    if externally_managed(python) is None:
        if IN_CI:
            pytest.fail(f"{python} has no EXTERNALLY-MANAGED marker under CI (Debian 12 has one)")
        pytest.skip(f"{python} is not externally managed here")
    need_tool("make")
    if not (shutil.which("mosquitto") or os.access("/usr/sbin/mosquitto", os.X_OK)):
        pytest.skip("mosquitto is not installed (make demo would apt-get it)")
    checkout = copy_checkout(tmp_path / "checkout")
    assert not (checkout / ".venv").exists()
    cmd = ["make", "demo", f"PYTHON={python}"]

    first = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, timeout=800, env=CLEAN_ENV)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-6000:]
    assert "== demo OK" in first.stdout, out[-6000:]
    notes = [line for line in first.stdout.splitlines() if "using the project venv .venv" in line]
    assert len(notes) == 1 and python in notes[0] and "PEP 668" in notes[0], first.stdout[:2000]
    assert "externally-managed-environment" not in out

    venv = checkout / ".venv"
    cfg = (venv / "pyvenv.cfg").read_text()
    assert re.search(r"^home = /usr/bin$", cfg, re.M), cfg
    assert "include-system-site-packages = false" in cfg
    vpy = str(venv / "bin/python")
    probe = "import importlib.util as u, sys; print(*[u.find_spec(m) is not None for m in sys.argv[1:]])"
    found = subprocess.run([vpy, "-c", probe, "edge_agent", "gpiozero", "serial", "smbus2", "mcp", "pytest", "hypothesis"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path).stdout.split()
    assert found == ["True"] * 5 + ["False"] * 2, found
    assert not (checkout / "tests/node/node_modules").exists() and not (checkout / "micropython/host/node_modules").exists()
    # nothing went into the system Python
    system = subprocess.run([python, "-c", "import edge_agent"], capture_output=True, text=True, timeout=60, cwd="/")
    assert system.returncode != 0 and "No module named 'edge_agent'" in system.stderr

    # the stamps: nothing to install on a rerun; a changed pyproject.toml re-installs
    dry = subprocess.run(["make", "-n", *cmd[1:]], cwd=checkout, capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
    assert dry.returncode == 0 and "-m pip install" not in dry.stdout and "-m venv .venv" not in dry.stdout, dry.stdout
    os.utime(checkout / "pyproject.toml")
    dry = subprocess.run(["make", "-n", *cmd[1:]], cwd=checkout, capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
    assert "-m pip install" in dry.stdout and ".[gpio,serial,i2c,cloud]" in dry.stdout and "-m venv .venv" not in dry.stdout, dry.stdout


# --------------------------------------------------------------------------- install.sh and the live system
WATCHED_FILES = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
WATCHED_TREES = ["/etc/systemd/system", "/usr/lib/sysusers.d", "/usr/lib/udev/rules.d", "/etc/udev/rules.d"]
WATCHED_LISTINGS = ["/opt", "/etc", "/var/lib", "/usr/lib/systemd/system"]
MUST_NOT_APPEAR = ["/opt/edge-agent", "/etc/edge-agent", "/var/lib/edge-agent"]


def live_system() -> dict[str, object]:
    """What install.sh would change on the live system: the user and group databases (hashed),
    every file under the unit / sysusers / udev directories (with mtimes), the entries of /opt,
    /etc and /var/lib, and whether the edge-agent paths exist."""
    snap: dict[str, object] = {}
    for name in WATCHED_FILES:
        p = Path(name)
        snap[name] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None
    for top in WATCHED_TREES:
        entries = []
        for dirpath, dirnames, filenames in os.walk(top):
            for n in sorted(dirnames + filenames):
                p = os.path.join(dirpath, n)
                entries.append((p, os.lstat(p).st_mtime_ns))
        snap[top] = sorted(entries)
    for top in WATCHED_LISTINGS:
        snap[top] = sorted(os.listdir(top)) if os.path.isdir(top) else None
    for path in MUST_NOT_APPEAR:
        snap[path] = os.path.lexists(path)
    return snap


def scratch_leftovers() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if "edge-agent-build" in n or n.startswith("edge-agent-src.")}


def verify_staged_unit(stage: Path, tmp_path: Path) -> str:
    """``systemd-analyze verify`` on the staged unit file as it is, with the staged venv at the
    path the unit names: in a private mount namespace, ``stage/opt`` is bind-mounted on /opt
    (the live /opt is untouched). Where mount namespaces are not allowed, a copy of the unit
    whose ExecStart= names the staged script is verified instead. Returns the staged
    ``edge-agent --version`` run at its real path in the namespace (or "" for the fallback)."""
    analyze = need_tool("systemd-analyze")
    unit = stage / "etc/systemd/system/edge-agent.service"
    script = (f"mount --bind {stage / 'opt'} /opt && {analyze} verify {unit} && "
              "/opt/edge-agent/bin/edge-agent --version")
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0:
        run = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", script],
                             capture_output=True, text=True, timeout=120, cwd="/", env=CLEAN_ENV)
        if "unshare failed" not in run.stderr and "Operation not permitted" not in run.stderr:
            assert run.returncode == 0, run.stdout + run.stderr
            assert "edge-agent" not in run.stderr, run.stderr  # verify's complaints name the unit
            return run.stdout
    copy = unit_for_verify(tmp_path, str(stage / "opt/edge-agent/bin/edge-agent"), unit=unit)
    run = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "edge-agent" not in run.stdout + run.stderr, run.stdout + run.stderr
    return ""


@pytest.mark.timeout(600)
def test_destdir_from_the_environment_stages_and_touches_nothing_outside(tmp_path):
    """``DESTDIR=$tmp systemd/install.sh --python /usr/bin/python3`` as root: every file lands
    under $tmp (the unit, sysusers.d, udev rules, the config, the venv with ``bin/edge-agent``
    built from a wheel of this checkout, named edge-agent-mcp), and nothing outside changed: no
    user or group, nothing in /etc/systemd/system, /opt, /etc, /var/lib, sysusers.d or udev, no
    scratch files left. The staged unit passes ``systemd-analyze verify`` with the staged venv
    at the path it names."""
    if os.geteuid() != 0:
        pytest.skip("the point is what install.sh does as root")
    python = system_python()
    stage = tmp_path / "stage"
    before, scratch_before = live_system(), scratch_leftovers()
    env = dict(CLEAN_ENV, DESTDIR=str(stage))
    run = subprocess.run(["bash", str(INSTALL), "--python", python], capture_output=True, text=True,
                         timeout=500, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    after = live_system()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"install.sh with DESTDIR changed the live system: {changed}"
    assert scratch_leftovers() <= scratch_before
    assert f"installed in /opt/edge-agent (staged under {stage})" in run.stdout, run.stdout
    assert "building a wheel of" in run.stdout and "edge_agent_mcp-" in run.stdout, run.stdout

    unit = stage / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == UNIT.read_text()
    assert parse_unit(unit)["Service"]["ExecStart"] == ["/opt/edge-agent/bin/edge-agent run --config /etc/edge-agent/agent.toml"]
    for rel in ("usr/lib/sysusers.d/edge-agent.conf", "usr/lib/udev/rules.d/60-edge-agent.rules",
                "etc/edge-agent/agent.toml", "opt/edge-agent/share/doc/edge-agent/raspberry-pi.md"):
        assert (stage / rel).is_file(), rel
    venv = stage / "opt/edge-agent"
    script = venv / "bin/edge-agent"
    assert script.is_file() and script.read_text().splitlines()[0] == "#!/opt/edge-agent/bin/python"
    assert os.path.realpath(venv / "bin/python") == os.path.realpath(python)
    assert not [p.name for p in stage.iterdir() if p.name.startswith(".")], "scratch files left in the stage"
    assert not any(p.name.startswith("edge_agent-") for p in venv.glob("lib/python3*/site-packages/*.dist-info"))
    meta = subprocess.run([str(venv / "bin/python"), "-c",
                           "import importlib.metadata as m; d = m.distribution('edge-agent-mcp'); "
                           "print(d.version, d.read_text('direct_url.json') or '')"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=CLEAN_ENV)
    assert meta.returncode == 0, meta.stderr
    assert meta.stdout.split()[0] == __version__ and ".whl" in meta.stdout, meta.stdout  # installed from a wheel
    version = verify_staged_unit(stage, tmp_path)
    if version:
        assert version.strip() == f"edge-agent {__version__}"


def hidden_python_copy() -> Path:
    """A working copy of Debian's python3 binary in a fresh directory under /tmp, which the
    unit's ``PrivateTmp=yes`` hides from the service (it still finds its stdlib in /usr)."""
    real = Path(os.path.realpath(system_python()))
    folder = Path(tempfile.mkdtemp(prefix="ea-hidden-python-", dir="/tmp"))
    copy = folder / "bin" / "python3"
    copy.parent.mkdir()
    shutil.copy2(real, copy)
    works = subprocess.run([str(copy), "-c", "import venv, sys; print(sys.executable)"], capture_output=True,
                           text=True, timeout=30)
    if works.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"a copy of {real} does not run: {works.stderr}")
    return copy


def pyenv_like_python() -> str:
    """``python3`` from PATH when it really runs from a place the unit hides (here: pyenv's
    shim, whose interpreter is under /root/.pyenv); skip where it does not."""
    venv_bins = {f"{os.environ[k]}/bin" for k in ("VIRTUAL_ENV",) if k in os.environ}
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p not in venv_bins)
    found = shutil.which("python3", path=path)
    if found is None:
        pytest.skip("no python3 on PATH")
    real = subprocess.run([found, "-c", "import os, sys; print(os.path.realpath(sys._base_executable))"],
                          capture_output=True, text=True, timeout=30, env=CLEAN_ENV).stdout.strip()
    if not re.match(r"^/(root|home|run/user|tmp|var/tmp)(/|$)", real):
        pytest.skip(f"python3 on PATH is {real}, visible to the service")
    return found


REFUSAL = re.compile(r"install\.sh: the Python .* is (/\S+): (ProtectHome|PrivateTmp)=yes in edge-agent\.service .*"
                     r"--python /usr/bin/python3")


@pytest.mark.timeout(300)
def test_install_sh_refuses_an_interpreter_the_unit_would_hide(tmp_path):
    """An interpreter in /tmp (``PrivateTmp=yes``) and ``python3`` from PATH when it is pyenv's
    under /root (``ProtectHome=yes``): refused with a message naming the real place, the unit
    setting and ``--python /usr/bin/python3``, staging or not, before anything is written. (That
    the check looks through symlinks, so a symlink in /tmp to /usr/bin/python3 is accepted, is
    in tests/test_systemd.py::test_install_sh_into_a_scratch_root.)"""
    stage = tmp_path / "stage"
    copy = hidden_python_copy()
    try:
        run = subprocess.run(["bash", str(INSTALL), "--destdir", str(stage), "--python", str(copy)],
                             capture_output=True, text=True, timeout=120, env=CLEAN_ENV)
        assert run.returncode == 1, run.stdout + run.stderr
        m = REFUSAL.search(run.stderr)
        assert m and m.group(1) == str(copy) and m.group(2) == "PrivateTmp", run.stderr
        assert "Traceback" not in run.stderr
        assert not any(stage.rglob("*")), sorted(map(str, stage.rglob("*")))
        # the same from the environment's DESTDIR
        run = subprocess.run(["bash", str(INSTALL), "--python", str(copy)], capture_output=True, text=True,
                             timeout=120, env=dict(CLEAN_ENV, DESTDIR=str(stage)))
        assert run.returncode == 1 and REFUSAL.search(run.stderr), run.stderr
        assert not any(stage.rglob("*"))
    finally:
        shutil.rmtree(copy.parents[1], ignore_errors=True)


@pytest.mark.timeout(300)
def test_install_sh_refuses_pyenv_python_staging_or_live(tmp_path):
    """``python3`` on PATH resolving to pyenv's interpreter under /root is refused by default
    (no ``--python``), when staging and, as root, when installing for real; the live system is
    unchanged either way."""
    pyenv = pyenv_like_python()
    env = dict(CLEAN_ENV, PATH=f"{Path(pyenv).parent}:{CLEAN_ENV.get('PATH', '')}")
    stage = tmp_path / "stage"
    run = subprocess.run(["bash", str(INSTALL), "--destdir", str(stage)], capture_output=True, text=True,
                         timeout=120, env=env)
    m = REFUSAL.search(run.stderr)
    assert run.returncode == 1 and m and m.group(2) == "ProtectHome", run.stdout + run.stderr
    assert not any(stage.rglob("*"))
    if os.geteuid() != 0:
        return
    before = live_system()
    live = subprocess.run(["bash", str(INSTALL), "--python", pyenv], capture_output=True, text=True, timeout=120,
                          env=env)
    assert live.returncode == 1 and REFUSAL.search(live.stderr), live.stdout + live.stderr
    assert live_system() == before
