"""Docs that run: every fenced block in README.md and docs/*.md is run or validated.

How a block is treated depends on its language and on an optional marker, an HTML comment on
the line just before the opening fence::

    <!-- doc-test: skip reason="needs a Raspberry Pi" -->       not run; the reason is required
    <!-- doc-test: same-as="micropython/examples/main.py" -->   must equal that file (minus its
                                                               leading comment lines)
    <!-- doc-test: site-config -->                            a MicroPython site_config.py: its
                                                               keys are checked against edgemcp

- ``sh``: run by bash (``set -euo pipefail``) in a temporary folder, against a real Mosquitto
  started here and the demo agent (``edge-agent run --demo``, server-name
  ``devices/greenhouse/gh3-pi``, as in the docs). ``$EDGE_AGENT_BROKER`` is the test broker,
  the broker URLs the docs use as examples (``mqtt://broker.local:1883``,
  ``mqtt://localhost:1883`` ...) are replaced by it, and ``/etc/edge-agent/`` by a folder
  holding ``agent.toml`` = ``docs/examples/greenhouse.toml`` (what the README copies there);
  ``GPIOZERO_PIN_FACTORY=mock`` stands in for a Pi's lgpio.
  ``edge-agent`` is this checkout's (``python -m edge_agent``); ``npx
  @modelcontextprotocol/inspector`` is the Inspector pinned in ``tests/node`` (nothing is
  downloaded). A block must exit 0 and print no ``"isError": true``.
- ``python``: written to a file and run with this interpreter, ``$EDGE_AGENT_BROKER`` set.
- ``toml``: a config (or, with ``[[devices]]``, an ACL fleet file) checked by ``edge-agent
  check`` (``edge-agent acl``); a snippet without ``[device]`` gets one; file paths in
  ``[broker]`` are replaced by real files (PEMs from ``trustme``), a ``password_credential`` by
  a ``$CREDENTIALS_DIRECTORY`` holding it.
- ``json``: must parse; an ``mcpServers`` entry must be a valid ``edge-agent`` command line; the
  examples of ``device://health``, ``device://info`` and a sensor history must have the shape
  (keys, nesting, value types) of what the demo agent returns.
- Languages in :data:`NOT_CODE` are not programs (diagrams, transcripts, systemd and Mosquitto
  config excerpts for a Pi); any other language fails the classification test.

Besides: every ``edge-agent COMMAND --flag`` in the docs' code exists in the CLI, and nothing
tells a user to install the old distribution name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_agent.testing.broker import LocalBroker

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SERVER = "devices/greenhouse/gh3-pi"  # the demo agent's server-name, used throughout the docs
INSPECTOR = ROOT / "tests" / "node" / "node_modules" / ".bin" / "mcp-inspector"

SHELL = {"sh", "bash", "shell"}
NOT_CODE = {
    "": "a diagram, a file listing, an output transcript or a Mosquitto config excerpt",
    "text": "a terminal transcript",
    "ini": "a systemd drop-in or /boot/firmware/config.txt lines: they need a Pi with systemd",
    "erlang": "an EMQX ACL file: needs EMQX",
}
MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```([\w+-]*)\s*$")
# Broker URLs the docs use as examples; in shell blocks they become the test broker.
EXAMPLE_BROKERS = re.compile(r"mqtt://(?:broker\.local|broker|localhost|127\.0\.0\.1)(?::\d+)?(?=[\s'\"]|$)", re.M)


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: dict[str, str] = field(default_factory=dict)
    heading: str = ""

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_marker(body: str) -> dict[str, str]:
    """``skip reason="x"`` -> ``{"skip": "", "reason": "x"}``."""
    out = {}
    for m in re.finditer(r'([\w-]+)(?:="([^"]*)")?', body):
        out[m.group(1)] = m.group(2) if m.group(2) is not None else ""
    return out


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, with the marker just above each and the last heading.

    Raises AssertionError for a marker not directly followed by a fence, or an unclosed fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    heading, i = "", 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if not m:
            h = re.match(r"^#+\s+(.*)$", line)
            if h:
                heading = h.group(1)
            mk = MARKER.match(line)
            if mk:
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                assert FENCE.match(nxt), f"{path.name}:{i + 1}: a doc-test marker must be the line before a ``` fence"
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        body, j = [], i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        assert j < len(lines), f"{path.name}:{i + 1}: unclosed ``` fence"
        prev = lines[i - 1] if i else ""
        mk = MARKER.match(prev)
        out.append(Block(path, i + 1, lang, "\n".join(body) + "\n", parse_marker(mk.group(1)) if mk else {}, heading))
        i = j + 1
    return out


ALL = [b for p in DOCS for b in blocks_of(p)]


def of(kind: str) -> list:
    """The blocks of one kind as pytest params (skip-marked ones carry their reason)."""
    if kind == "shell":
        chosen = [b for b in ALL if b.lang in SHELL]
    else:
        chosen = [b for b in ALL if b.lang == kind]
    return [pytest.param(b, id=b.id, marks=[pytest.mark.skip(reason=b.marker["reason"])] if "skip" in b.marker else [])
            for b in chosen]


# --------------------------------------------------------------------------- classification


def test_every_block_is_classified():
    known_markers = {"skip", "same-as", "site-config"}
    assert len(ALL) > 30, "the block parser found too few blocks"
    for b in ALL:
        assert b.lang in SHELL | {"python", "toml", "json"} | set(NOT_CODE), \
            f"{b.id}: ```{b.lang} blocks are neither run nor listed in NOT_CODE: teach this test about them"
        kinds = set(b.marker) & known_markers
        assert set(b.marker) <= known_markers | {"reason"}, f"{b.id}: unknown doc-test marker {b.marker}"
        assert len(kinds) <= 1, f"{b.id}: one doc-test kind per block, not {kinds}"
        if "skip" in b.marker:
            assert len(b.marker.get("reason", "")) >= 10, f"{b.id}: a skipped block needs a reason=\"...\""
            assert b.lang in SHELL | {"python", "toml", "json"}, f"{b.id}: a {b.lang or 'plain'} block is not run anyway"
        if "same-as" in b.marker or "site-config" in b.marker:
            assert b.lang == "python", f"{b.id}: same-as and site-config are for python blocks"


def test_most_shell_blocks_that_do_not_need_a_pi_run():
    """The skip list does not swallow everything: the cloud-side commands, `check`, the Python
    client and the Inspector example do run."""
    runnable = [b.id for b in ALL if b.lang in SHELL | {"python"} and "skip" not in b.marker]
    assert len(runnable) >= 5, runnable
    for doc in ("README.md", "docs/configuration.md", "docs/gateway.md", "docs/raspberry-pi.md"):
        assert any(r.startswith(doc + ":") for r in runnable), f"{doc}: no block of it runs"


def test_no_install_hint_names_the_old_distribution():
    """The PyPI name ``edge-agent`` is someone else's project: every hint says ``edge-agent-mcp``."""
    old = re.compile(r"pip3?\s+install\s+(?:-\S+\s+)*['\"]?edge-agent(?!-mcp)(?=[\[\s'\"=<>]|$)|(?<![\w/.-])edge-agent\[", re.M)
    for path in [*DOCS, ROOT / "micropython" / "README.md", ROOT / "bench" / "README.md"]:
        text = path.read_text(encoding="utf-8")
        hits = [text[max(0, m.start() - 20):m.end() + 20] for m in old.finditer(text)]
        assert not hits, f"{path.relative_to(ROOT)} names the old distribution: {hits}"


# --------------------------------------------------------------------------- CLI mentions


def _cli() -> dict[str, set[str]]:
    """``{command: its option strings}`` of the real ``edge-agent`` parser."""
    from edge_agent.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(p._option_string_actions) for name, p in sub.choices.items()}


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Shell lines of fenced sh blocks (continuations joined) and inline code spans of the prose."""
    out: list[tuple[int, str]] = []
    for b in blocks_of(path):
        if b.lang in SHELL:
            joined = b.text.replace("\\\n", " ")
            out += [(b.line, line) for line in joined.splitlines()]
    fenced = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line) or line.strip() == "```":
            fenced = not fenced
            continue
        if not fenced:
            out += [(n, span) for span in re.findall(r"`([^`]+)`", line)]
    return out


def test_documented_commands_and_flags_exist():
    cli = _cli()
    # edge-agent in command position: first on the line (after "$ ", "sudo ", VAR=value),
    # after a path's /bin/, after "--" (the Inspector's server command) or "&&" / ";"
    mention = re.compile(r"(?:^\s*(?:\$\s+)?(?:sudo\s+)?(?:\w+=\S+\s+)*|/bin/|--\s+|&&\s+|;\s+)"
                         r"edge-agent[ \t]+([a-z][\w-]*)([^#|;&\n]*)")
    problems, checked = [], 0
    for path in DOCS:
        for line_no, code in _code_lines(path):
            for m in mention.finditer(code):
                checked += 1
                command, rest = m.group(1), m.group(2)
                where = f"{path.relative_to(ROOT)}:{line_no}: `{m.group(0).strip()}`"
                if command not in cli:
                    problems.append(f"{where}: no command {command!r} (commands: {', '.join(sorted(cli))})")
                    continue
                for token in rest.split():
                    flag = token.strip("[](),'\"").split("=")[0]
                    if flag.startswith("-") and flag not in cli[command] and not re.fullmatch(r"-+", flag):
                        problems.append(f"{where}: `edge-agent {command}` has no option {flag}")
    assert checked >= 30, f"only {checked} command lines found: is the pattern still right?"
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- the broker and the demo agent


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A real Mosquitto and the demo agent online on it; yields the broker URL."""
    sys.path.insert(0, str(ROOT / "tests"))
    from agent_process import RawSubscriber

    state = tmp_path_factory.mktemp("demo-state")
    with LocalBroker() as broker:
        watcher = RawSubscriber(broker.url, [f"$mcp-server/presence/+/{SERVER}"])
        log = open(state / "agent.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--demo", "--broker", broker.url,
                                 "--state-dir", str(state)], stdout=subprocess.DEVNULL, stderr=log,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            try:
                watcher.wait_for(lambda msg: msg.payload and b"notifications/server/online" in msg.payload, 30)
            except AssertionError:
                raise AssertionError("the demo agent did not come online:\n"
                                     + (state / "agent.log").read_text(errors="replace")) from None
            finally:
                watcher.close()
            yield broker.url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


@pytest.fixture(scope="module")
def shims(tmp_path_factory) -> Path:
    """A folder for the front of $PATH: ``edge-agent``, ``python``/``python3`` of this checkout
    and interpreter, and an offline ``npx`` that only runs the pinned MCP Inspector."""
    d = tmp_path_factory.mktemp("shims")
    scripts = {
        "edge-agent": f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m edge_agent "$@"\n',
        "python": f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n',
        "python3": f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n',
        "npx": ('#!/bin/sh\n'
                'if [ "$1" = "@modelcontextprotocol/inspector" ]; then shift; '
                f'exec {shlex.quote(str(INSPECTOR))} "$@"; fi\n'
                'echo "npx (doc test shim): only @modelcontextprotocol/inspector is available offline" >&2; exit 127\n'),
    }
    for name, text in scripts.items():
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    return d


def _env(broker_url: str, shims: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a doc block: the test broker, no credentials from the caller, and
    gpiozero's mock pin factory standing in for a Pi's lgpio (``check`` of a config for real
    pins needs a working pin factory; this machine is not a Pi)."""
    env = dict(os.environ, EDGE_AGENT_BROKER=broker_url, PYTHONUNBUFFERED="1", GPIOZERO_PIN_FACTORY="mock", **extra)
    for var in ("EDGE_AGENT_PASSWORD", "EDGE_AGENT_USERNAME", "CREDENTIALS_DIRECTORY"):
        env.pop(var, None)
    if shims is not None:
        env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
    return env


# --------------------------------------------------------------------------- shell blocks


@pytest.mark.parametrize("block", of("shell"))
def test_shell_block_runs(block: Block, stack, shims, tmp_path):
    if "@modelcontextprotocol/inspector" in block.text and (shutil.which("node") is None or not INSPECTOR.exists()):
        pytest.skip("the MCP Inspector is not installed (make setup: npm ci in tests/node)")
    etc = tmp_path / "etc" / "edge-agent"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "examples" / "greenhouse.toml", etc / "agent.toml")
    script = EXAMPLE_BROKERS.sub(stack, block.text).replace("/etc/edge-agent/", f"{etc}/")
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=work, env=_env(stack, shims),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)
    report = f"{block.id} exited {done.returncode}\n--- script\n{script}--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    assert done.returncode == 0, report
    assert '"isError": true' not in done.stdout, report
    assert "Traceback" not in done.stderr, report


# --------------------------------------------------------------------------- python blocks


def _without_leading_comments(text: str) -> str:
    lines = text.splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines).strip() + "\n"


@pytest.mark.parametrize("block", of("python"))
def test_python_block(block: Block, request, tmp_path):
    if "same-as" in block.marker:
        source = (ROOT / block.marker["same-as"]).read_text(encoding="utf-8")
        assert block.text.strip() + "\n" == _without_leading_comments(source), \
            f"{block.id} differs from {block.marker['same-as']}: copy the file into the doc again"
        return
    if "site-config" in block.marker:
        scope: dict = {}
        exec(compile(block.text, block.id, "exec"), scope)
        import importlib.util
        spec = importlib.util.spec_from_file_location("edgemcp_config", ROOT / "micropython" / "edgemcp" / "config.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        unknown = set(scope["config"]) - set(module.DEFAULTS)
        assert not unknown, f"{block.id}: keys edgemcp does not know: {unknown}"
        return
    broker_url = request.getfixturevalue("stack")
    script = tmp_path / "example.py"
    script.write_text(block.text, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(broker_url),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{block.id} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), f"{block.id} printed nothing"


def test_readme_example_prints_a_reading(stack, tmp_path):
    """The README's client prints the soil temperature as the comment in it says: value, unit, time."""
    block = next(b for b in ALL if b.path.name == "README.md" and b.lang == "python")
    script = tmp_path / "soil.py"
    script.write_text(block.text, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), stack, SERVER], capture_output=True, text=True, timeout=60,
                          env=_env("mqtt://127.0.0.1:1"))  # the arguments win over $EDGE_AGENT_BROKER
    assert done.returncode == 0, done.stderr
    reading = json.loads(done.stdout)
    assert reading["unit"] == "°C" and isinstance(reading["value"], float) and reading["timestamp"].endswith("Z")


# --------------------------------------------------------------------------- toml blocks


def _pems(folder: Path) -> dict[str, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("gh3-pi")
    out = {"ca_file": folder / "ca.pem", "cert_file": folder / "device.pem", "key_file": folder / "device.key"}
    ca.cert_pem.write_to_path(str(out["ca_file"]))
    cert.cert_chain_pems[0].write_to_path(str(out["cert_file"]))
    cert.private_key_pem.write_to_path(str(out["key_file"]))
    return out


def _toml_literal(value: str) -> str:
    return json.dumps(value)


@pytest.mark.parametrize("block", of("toml"))
def test_toml_block_is_valid(block: Block, tmp_path):
    data = tomllib.loads(block.text)  # a syntax error fails here, naming the block
    env = _env("mqtt://127.0.0.1:1")
    if "devices" in data or "clients" in data:  # an ACL fleet description (security.md)
        (tmp_path / "fleet.toml").write_text(block.text, encoding="utf-8")
        cmd = [sys.executable, "-m", "edge_agent", "acl", "--fleet", str(tmp_path / "fleet.toml")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, f"{block.id}: {done.stderr}"
        assert "$mcp-server" in done.stdout
        return
    text = block.text
    if "device" not in data:
        text = '[device]\nserver_name = "devices/test/docs"\n\n' + text
    broker = data.get("broker", {})
    files = _pems(tmp_path) if {"ca_file", "cert_file", "key_file"} & set(broker) else {}
    (tmp_path / "password").write_text("s3cret\n")
    files["password_file"] = tmp_path / "password"
    for key, path in files.items():  # the docs' /etc paths do not exist here: real files instead
        if key in broker:
            text = re.sub(rf'(?m)^(\s*{key}\s*=\s*)"[^"]*"', lambda m: m.group(1) + _toml_literal(str(path)), text)
    config = tmp_path / "agent.toml"
    config.write_text(text, encoding="utf-8")
    check = [sys.executable, "-m", "edge_agent", "check", "--config", str(config)]
    if "password_credential" in broker:
        # outside systemd there is no $CREDENTIALS_DIRECTORY: check says so (security.md)
        done = subprocess.run(check, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 2 and "CREDENTIALS_DIRECTORY" in done.stderr, f"{block.id}: {done.stderr}"
        creds = tmp_path / "credentials"
        creds.mkdir()
        (creds / broker["password_credential"]).write_text("s3cret\n")
        env["CREDENTIALS_DIRECTORY"] = str(creds)
    done = subprocess.run(check, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, f"{block.id} is not a valid config:\n{text}\n{done.stderr}"
    assert ": OK: " in done.stdout


# --------------------------------------------------------------------------- json blocks

# (file, heading) -> the resource of the demo agent that the example shows
LIVE_EXAMPLES = {
    ("configuration.md", "`device://health`"): "device://health",
    ("configuration.md", "`device://info`"): "device://info",
    ("configuration.md", "Sensor resources and their history"): "sensor://soil_temp/temperature/history?limit=5",
}
NAMED_MAPS = {"drivers"}  # objects keyed by driver name: the example shows some of the demo's drivers


def _same_shape(doc, live, where: str) -> list[str]:
    """Differences in keys, nesting and JSON types between a documented example and the real thing."""
    if isinstance(doc, dict):
        if not isinstance(live, dict):
            return [f"{where}: documented as an object, is {type(live).__name__}"]
        problems = []
        named = where.rsplit(".", 1)[-1] in NAMED_MAPS
        if not named and set(doc) != set(live):
            problems.append(f"{where}: documented keys {sorted(doc)} != real keys {sorted(live)}")
        for k in doc:
            if k in live:
                problems += _same_shape(doc[k], live[k], f"{where}.{k}")
            elif named:
                problems.append(f"{where}: {k!r} is not a driver of the demo agent")
        return problems
    if isinstance(doc, list):
        if not isinstance(live, list):
            return [f"{where}: documented as an array, is {type(live).__name__}"]
        if not live:
            return []
        return [p for i, item in enumerate(doc) for p in _same_shape(item, live[min(i, len(live) - 1)], f"{where}[{i}]")]
    if doc is None or live is None:
        return []  # null where the demo has a value (or the other way round): both are documented states
    kinds = {bool: "boolean", int: "number", float: "number", str: "string"}
    if kinds[type(doc)] != kinds[type(live)]:
        return [f"{where}: documented as {kinds[type(doc)]} ({doc!r}), is {kinds[type(live)]} ({live!r})"]
    return []


async def _read(broker_url: str, uris: list[str]) -> dict[str, object]:
    from edge_agent.cloud import connect

    out = {}
    async with connect(broker_url, SERVER) as session:
        for uri in uris:
            result = await session.read_resource(uri)
            out[uri] = json.loads(result.contents[0].text)
    return out


def test_json_blocks_parse_and_mcp_servers_are_valid_commands():
    from edge_agent.cli import build_parser

    seen_live = set()
    for b in (b for b in ALL if b.lang == "json"):
        data = json.loads(b.text)
        if (b.path.name, b.heading) in LIVE_EXAMPLES:
            seen_live.add((b.path.name, b.heading))
        for name, server in data.get("mcpServers", {}).items() if isinstance(data, dict) else ():
            assert server["command"] == "edge-agent", f"{b.id}: {name}"
            try:
                build_parser().parse_args(server["args"])
            except SystemExit:
                pytest.fail(f"{b.id}: {name}: `edge-agent {' '.join(server['args'])}` is not a valid command line")
    assert seen_live == set(LIVE_EXAMPLES), f"examples not found under their headings: {set(LIVE_EXAMPLES) - seen_live}"


def test_resource_examples_have_the_shape_the_agent_returns(stack):
    examples = {LIVE_EXAMPLES[(b.path.name, b.heading)]: (b, json.loads(b.text)) for b in ALL
                if b.lang == "json" and (b.path.name, b.heading) in LIVE_EXAMPLES}
    live = asyncio.run(_read(stack, list(examples)))
    problems = []
    for uri, (b, doc) in examples.items():
        problems += [f"{b.id} ({uri}): {p}" for p in _same_shape(doc, live[uri], "$")]
    assert not problems, "\n".join(problems) + "\n\nreal:\n" + json.dumps(live, indent=1)[:4000]
