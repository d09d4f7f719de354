"""Config loading and `edge-agent check`: every error names the file and the key."""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import subprocess
import sys

import pytest

from edge_agent import cli as cli_mod
from edge_agent.device import config as cfg
from edge_agent.device import config_files, preflight
from edge_agent.device.config_locate import Locator
from edge_agent.drivers import pins
from edge_agent.errors import ConfigError

GOOD = """
[device]
server_name = "devices/greenhouse/pi-01"
server_id = "gh-pi-01"
description = "Greenhouse 3"
simulate = true

[broker]
urls = ["mqtt://127.0.0.1:1883", "mqtt://backup.example:1884"]
username = "gh"
password = "s3cret"

[[drivers]]
kind = "relay"
name = "pump"
pin = 17

[[drivers]]
kind = "system"
name = "system"
poll_interval = 30
"""


def write(tmp_path, text, name="agent.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_config_loads(tmp_path):
    c = cfg.load(write(tmp_path, GOOD))
    assert c.device.server_name == "devices/greenhouse/pi-01"
    assert c.broker.urls[1] == "mqtt://backup.example:1884"
    assert [d.name for d in c.drivers] == ["pump", "system"]
    assert c.drivers[0].options == {"pin": 17}
    assert c.drivers[1].poll_interval == 30
    assert "s3cret" not in repr(c.broker)


def test_every_problem_is_named(tmp_path):
    bad = GOOD.replace('server_name = "devices/greenhouse/pi-01"', 'server_name = "flat"') \
              .replace('"mqtt://127.0.0.1:1883"', '"http://x"') \
              .replace("pin = 17", "pin = 17\ncolour = 3") \
              .replace('kind = "system"', 'kind = "toaster"')
    p = write(tmp_path, bad)
    with pytest.raises(ConfigError) as exc:
        cfg.load(p)
    keys = {k for _, k, _ in exc.value.problems}
    assert {"device.server_name", "broker.urls[0]", "drivers.pump.colour", "drivers.system.kind"} <= keys
    assert all(f == str(p) for f, _, _ in exc.value.problems)
    lines = dict(zip([k for _, k, _ in exc.value.problems], exc.value.lines))
    text = bad.splitlines()
    assert text[lines["drivers.pump.colour"] - 1] == "colour = 3"
    assert text[lines["drivers.system.kind"] - 1] == 'kind = "toaster"'
    assert text[lines["device.server_name"] - 1].startswith("server_name")


def test_schema_errors_name_nested_keys(tmp_path):
    p = write(tmp_path, '[device]\nserver_name = "a/b"\nsimulate = "yes"\n[broker]\nqos = 2\nport = 1\n')
    with pytest.raises(ConfigError) as exc:
        cfg.load(p)
    keys = {k for _, k, _ in exc.value.problems}
    assert {"device.simulate", "broker.qos", "broker.port"} <= keys


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        cfg.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg.load(write(tmp_path, "[device\n"))


def test_password_file_and_env(tmp_path, monkeypatch):
    (tmp_path / "pw").write_text("from-file\n")
    c = cfg.load(write(tmp_path, GOOD.replace('password = "s3cret"', 'password_file = "pw"')))
    assert c.broker.password == "from-file"
    monkeypatch.setenv("EDGE_AGENT_PASSWORD", "from-env")
    assert cfg.load(write(tmp_path, GOOD)).broker.password == "from-env"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=60)


def test_check_command_exit_codes(tmp_path):
    ok = cli("check", "--config", str(write(tmp_path, GOOD)))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "2 driver(s)" in ok.stdout
    p = write(tmp_path, GOOD.replace("pin = 17", 'pin = 17\nactive_high = "maybe"'), "bad.toml")
    bad = cli("check", "--config", str(p))
    assert bad.returncode == 2
    line = p.read_text().splitlines().index('active_high = "maybe"') + 1
    assert f"{p}:{line}: drivers.pump.active_high: must be true or false, got the string 'maybe'" in bad.stderr
    assert "1 problem(s) found" in bad.stderr
    assert cli("check", "--demo").returncode == 0


# --------------------------------------------------------------------------- `check`: what run would trip over
# Each case: exit code of `edge-agent check`, the file, the LINE, the driver by its name, the hint.

HEAD = """[device]
server_name = "devices/greenhouse/pi-01"
server_id = "gh-pi-01"
simulate = {simulate}
state_dir = "{state}"
"""


def agent(tmp_path, drivers: str, *, simulate="true", extra="", name="agent.toml"):
    """A config file: [device] (state under tmp_path), ``extra`` tables, then ``drivers``."""
    text = HEAD.format(simulate=simulate, state=tmp_path / "state") + extra + drivers
    return write(tmp_path, text, name)


def check(path, **env):
    """`edge-agent check --config path` in process: (exit code, stdout, stderr lines)."""
    out, err = io.StringIO(), io.StringIO()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_mod.main(["check", "--config", str(path)])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue(), err.getvalue().splitlines()


def line_of(path, text: str, start: int = 0) -> int:
    """The 1-based number of the first line of ``path`` equal to ``text`` (after line ``start``)."""
    lines = path.read_text().splitlines()
    return lines.index(text, start) + 1


def problem(lines: list[str], path, line: int, key: str) -> str:
    """The message of the problem printed as ``path:line: key: message``."""
    prefix = f"{path}:{line}: {key}: "
    found = [x for x in lines if x.startswith(prefix)]
    assert found, f"no {prefix!r} in {lines}"
    return found[0][len(prefix):]


def test_pin_names_agree_with_gpiozero():
    """Every name gpiozero's board data knows maps to the same BCM number (or is refused as
    no GPIO by both)."""
    from gpiozero.pins.mock import MockFactory

    board = MockFactory().board_info
    names = {n for h in board.headers.values() for p in h.pins.values() for n in p.names}
    assert {"GPIO17", "BCM17", "BOARD11", "J8:11", "WPI0", 17, "17"} <= names
    for name in names:
        try:
            expected = int(board.to_gpio(name)[4:])
        except Exception:  # noqa: BLE001 - gpiozero: not a GPIO (3V3, GND ...)
            expected = None
        try:
            got = pins.bcm(name)
        except ValueError:
            got = None
        assert got == expected, name
    with pytest.raises(ValueError, match="3V3, not a GPIO"):
        pins.bcm("BOARD1")
    with pytest.raises(ValueError, match="GPIO0..GPIO27"):
        pins.bcm("GPIO40")


def test_same_gpio_under_two_names_is_reported_with_both_lines(tmp_path):
    p = agent(tmp_path, """
[[drivers]]
kind = "relay"
name = "pump_relay"
pin = 17

[[drivers]]
kind = "led"
name = "status_led"
pin = "BOARD11"
""")
    code, _, err = check(p)
    assert code == 2, err
    msg = problem(err, p, line_of(p, 'pin = "BOARD11"'), "drivers.status_led.pin")
    assert "BOARD11 (GPIO17) is used in multiple places" in msg
    assert f"drivers.pump_relay.pin (line {line_of(p, 'pin = 17')})" in msg
    assert err[-1] == "1 problem(s) found"


def test_pins_reserved_by_one_wire_and_uart(tmp_path):
    p = agent(tmp_path, """
[[drivers]]
kind = "ds18b20"
name = "soil_temp"

[[drivers]]
kind = "ds18b20"
name = "air_temp"

[[drivers]]
kind = "nmea_gps"
name = "gps"

[[drivers]]
kind = "led"
name = "warn_led"
pin = "GPIO4"

[[drivers]]
kind = "button"
name = "door"
pin = "BCM15"
""")
    code, _, err = check(p)
    assert code == 2
    one_wire = problem(err, p, line_of(p, 'pin = "GPIO4"'), "drivers.warn_led.pin")
    soil = line_of(p, 'name = "soil_temp"') - 2  # its [[drivers]] header
    assert f"drivers.soil_temp (line {soil})" in one_wire
    assert "1-Wire" in one_wire and "gpiopin=N" in one_wire
    uart = problem(err, p, line_of(p, 'pin = "BCM15"'), "drivers.door.pin")
    assert "BCM15 (GPIO15)" in uart and "UART" in uart and "drivers.gps" in uart
    assert err[-1] == "2 problem(s) found", err  # two DS18B20 share one bus: no problem


def test_one_wire_pin_follows_the_boot_config():
    assert pins.w1_gpio_pin("") == 4
    assert pins.w1_gpio_pin("dtparam=audio=on\ndtoverlay=w1-gpio,gpiopin=17  # probe\n") == 17
    assert pins.w1_gpio_pin("# dtoverlay=w1-gpio,gpiopin=17\ndtoverlay=w1-gpio\n") == 4


def test_uart_is_free_when_the_gps_is_on_usb_and_ports_are_exclusive(tmp_path):
    drivers = """
[[drivers]]
kind = "nmea_gps"
name = "gps"
port = "/dev/ttyUSB0"

[[drivers]]
kind = "button"
name = "door"
pin = 15

[[drivers]]
kind = "mpboard"
name = "board"
port = "/dev/ttyUSB0"
"""
    # simulated, the GPS reads a pty: only the board opens the real port, and GPIO15 is free
    code, _, err = check(agent(tmp_path, drivers))
    assert code == 0, err
    p = agent(tmp_path, drivers, simulate="false", name="real.toml")
    code, _, err = check(p, GPIOZERO_PIN_FACTORY="mock")
    assert code == 2
    board_port = line_of(p, 'port = "/dev/ttyUSB0"', line_of(p, 'port = "/dev/ttyUSB0"'))
    msg = problem(err, p, board_port, "drivers.board.port")
    assert "/dev/ttyUSB0 is used in multiple places" in msg
    gps_port = line_of(p, 'port = "/dev/ttyUSB0"')
    assert f"drivers.gps.port (line {gps_port})" in msg
    assert err[-1] == "1 problem(s) found", err


def test_no_pin_factory_names_the_fix(tmp_path):
    drivers = """
[[drivers]]
kind = "relay"
name = "pump_relay"
pin = 27
"""
    p = agent(tmp_path, drivers, simulate="false")
    code, _, err = check(p, GPIOZERO_PIN_FACTORY="no_such_factory")
    assert code == 2
    msg = problem(err, p, line_of(p, "[[drivers]]"), "drivers.pump_relay")
    assert "no gpiozero pin factory" in msg and "no_such_factory" in msg
    assert "sudo apt install python3-lgpio" in msg and "--system-site-packages" in msg
    code, out, err = check(p, GPIOZERO_PIN_FACTORY="mock")  # a factory that loads: fine
    assert code == 0, err
    # simulated drivers never need one, however broken the factory would be
    sim = agent(tmp_path, drivers, simulate="true", name="sim.toml")
    assert check(sim, GPIOZERO_PIN_FACTORY="no_such_factory")[0] == 0
    calls = []
    config = cfg.load(sim)
    assert preflight.problems(config, pin_factory_probe=lambda: calls.append(1) or "broken") == []
    assert calls == []
    config = cfg.load(p)
    assert [k for _, k, _ in preflight.problems(config, pin_factory_probe=lambda: "lgpio: missing")] == \
        ["drivers.pump_relay"]


def test_pin_factory_failure_from_a_subprocess(tmp_path):
    p = agent(tmp_path, '\n[[drivers]]\nkind = "led"\nname = "status_led"\npin = 17\n', simulate="false")
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "no_such_factory"}
    done = subprocess.run([sys.executable, "-m", "edge_agent", "check", "--config", str(p)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert f"{p}:{line_of(p, '[[drivers]]')}: drivers.status_led: no gpiozero pin factory" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("module,extra,kind", [("gpiozero", "gpio", "relay"), ("serial", "serial", "nmea_gps")])
def test_missing_library_names_its_extra(tmp_path, monkeypatch, module, extra, kind):
    for name in list(sys.modules):
        if name == module or name.startswith(module + ".") or name in ("edge_agent.drivers.gpio", "edge_agent.drivers.serial",
                                                                        "edge_agent.drivers.mpboard"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # what `import module` meets when it is not installed
    p = agent(tmp_path, f'\n[[drivers]]\nkind = "{kind}"\nname = "thing"\npin = 17\n')
    code, _, err = check(p)
    assert code == 2
    msg = problem(err, p, line_of(p, f'kind = "{kind}"'), "drivers.thing.kind")
    assert f"pip install 'edge-agent-mcp[{extra}]'" in msg and repr(module) in msg


def test_unwritable_state_dir_and_store(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    p = write(tmp_path, HEAD.format(simulate="true", state=blocker / "state"))
    code, _, err = check(p)
    assert code == 2
    msg = problem(err, p, line_of(p, f'state_dir = "{blocker / "state"}"'), "device.state_dir")
    assert f"{blocker} is a file, not a folder" in msg
    assert err[-1] == "1 problem(s) found"  # the default store below it is not reported twice
    p = agent(tmp_path, "", extra=f'[store]\npath = "{blocker}/db.sqlite3"\n')
    code, _, err = check(p)
    assert code == 2
    assert "is a file, not a folder" in problem(err, p, line_of(p, f'path = "{blocker}/db.sqlite3"'), "store.path")
    p = agent(tmp_path, "", extra=f'[store]\npath = "{tmp_path}"\n')
    assert "is a directory" in problem(check(p)[2], p, line_of(p, f'path = "{tmp_path}"'), "store.path")


def _as_nobody(fn, *args):
    """``fn(*args)`` in a forked child running as user nobody (when we are root), else here."""
    if os.geteuid() != 0:
        return fn(*args)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, repr(fn(*args)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        result = fh.read()
    os.waitpid(pid, 0)
    return eval(result)  # noqa: S307 - a repr of str | None from our own child


def test_permission_denied_state_dir():
    import tempfile

    top = tempfile.mkdtemp(prefix="edge-agent-perm-")  # /tmp/...: reachable by nobody
    try:
        os.chmod(top, 0o755)
        locked = os.path.join(top, "locked")
        os.mkdir(locked, 0o755)  # ours: nobody may not write in it (nor we, after chmod 555)
        if os.geteuid() != 0:
            os.chmod(locked, 0o555)
        why = _as_nobody(config_files.dir_problem, os.path.join(locked, "state"))
        assert why is not None and why.startswith(f"cannot create {locked}/state in {locked}: user "), why
        assert why.endswith("has no write permission"), why
        assert _as_nobody(config_files.file_target_problem, os.path.join(locked, "db.sqlite3")) is not None
        assert config_files.dir_problem(tempfile.gettempdir()) is None
    finally:
        os.chmod(os.path.join(top, "locked"), 0o755)
        shutil.rmtree(top)


def _openssl(tmp_path, name):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}", "-days", "1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_files_must_be_pem_and_match(tmp_path):
    cert, key = _openssl(tmp_path, "a")
    _, other_key = _openssl(tmp_path, "b")
    junk = tmp_path / "ca.der"
    junk.write_bytes(bytes(range(256)))
    broker = f'[broker]\nurl = "mqtts://broker.example"\nca_file = "{junk}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    p = agent(tmp_path, "", extra=broker)
    code, _, err = check(p)
    assert code == 2
    assert "is not PEM" in problem(err, p, line_of(p, f'ca_file = "{junk}"'), "broker.ca_file")
    p = agent(tmp_path, "", extra=broker.replace(str(junk), str(tmp_path)), name="dir.toml")
    assert "is a directory" in problem(check(p)[2], p, line_of(p, f'ca_file = "{tmp_path}"'), "broker.ca_file")
    p = agent(tmp_path, "", extra=broker.replace(str(junk), str(cert)).replace(f'"{key}"', f'"{other_key}"'),
              name="mismatch.toml")
    code, _, err = check(p)
    assert code == 2
    assert "do not load together" in problem(err, p, line_of(p, f'key_file = "{other_key}"'), "broker.key_file")
    p = agent(tmp_path, "", extra=broker.replace(str(junk), str(cert)), name="good.toml")
    assert check(p)[0] == 0


@pytest.mark.parametrize("what", ["device", "fifo", "huge"])
def test_password_file_is_never_read_blindly(tmp_path, what):
    if what == "device":
        target, expect = "/dev/zero", "is a device"
    elif what == "fifo":
        target, expect = str(tmp_path / "pw.fifo"), "is a FIFO"
        os.mkfifo(target)  # opening it for reading would block until a writer comes
    else:
        target, expect = str(tmp_path / "pw.big"), "at most 64 KiB"
        (tmp_path / "pw.big").write_bytes(b"x" * (config_files.SECRET_LIMIT + 1))
    p = agent(tmp_path, "", extra=f'[broker]\npassword_file = "{target}"\n')
    code, _, err = check(p)
    assert code == 2
    assert expect in problem(err, p, line_of(p, f'password_file = "{target}"'), "broker.password_file")


@pytest.mark.parametrize("target", ["dir", "/dev/zero", "fifo"])
def test_config_that_is_no_file_is_exit_2_without_traceback(tmp_path, target):
    if target == "dir":
        path, expect = str(tmp_path), "is a directory, not a config file"
    elif target == "fifo":
        path, expect = str(tmp_path / "agent.fifo"), "is a FIFO"
        os.mkfifo(path)
    else:
        path, expect = target, "is a device"
    done = cli("check", "--config", path)
    assert done.returncode == 2
    assert f"{path}: -: {expect}" in done.stderr and "Traceback" not in done.stderr


def test_nan_and_inf_are_refused_where_a_number_is_expected(tmp_path):
    p = agent(tmp_path, """
[[drivers]]
kind = "button"
name = "door"
pin = 5
bounce_time = nan
poll_interval = inf
""", extra="[link]\nreconnect_min = nan\n")
    code, _, err = check(p)
    assert code == 2
    assert problem(err, p, line_of(p, "bounce_time = nan"), "drivers.door.bounce_time") == \
        "must be a finite number, got nan"
    assert "finite" in problem(err, p, line_of(p, "reconnect_min = nan"), "link.reconnect_min")
    assert problem(err, p, line_of(p, "poll_interval = inf"), "drivers.door.poll_interval")
    with pytest.raises(ConfigError):
        cfg.from_dict({"device": {"server_name": "a/b"}, "link": {"connack_timeout": math.nan}})


def test_servo_with_an_empty_range(tmp_path):
    p = agent(tmp_path, """
[[drivers]]
kind = "servo"
name = "vent_servo"
pin = 12
min_angle = 30
max_angle = 30.0
min_pulse_width = 0.002
max_pulse_width = 0.001
""")
    code, _, err = check(p)
    assert code == 2
    assert "no range" in problem(err, p, line_of(p, "max_angle = 30.0"), "drivers.vent_servo.max_angle")
    assert "must be greater than min_pulse_width" in problem(err, p, line_of(p, "max_pulse_width = 0.001"),
                                                             "drivers.vent_servo.max_pulse_width")
    # what run does with the same options: the constructor refuses them
    from edge_agent.drivers import DriverContext
    from edge_agent.drivers.gpio import Servo

    with pytest.raises(ValueError):
        Servo("vent_servo", {"pin": 12, "min_angle": 30, "max_angle": 30.0}, context=DriverContext(simulate=True))
    # a reversed range is a valid servo (it turns the other way)
    p = agent(tmp_path, '\n[[drivers]]\nkind = "servo"\nname = "vent"\npin = 12\nmin_angle = 90\nmax_angle = -90\n',
              name="reversed.toml")
    assert check(p)[0] == 0


def test_gpio_drivers_are_built_on_a_mock_factory_to_find_what_run_refuses():
    from edge_agent.drivers.gpio import Led, UltrasonicDistance

    assert Led.check_options({"pin": 17}) == []
    found = UltrasonicDistance.check_options({"trigger": 23, "echo": 23})
    assert found and "run would refuse this distance" in found[0][1]


def test_did_you_mean_and_plain_words(tmp_path):
    p = agent(tmp_path, """
[[drivers]]
kind = "relay"
name = "pump_relay"
pin = "17"
activ_high = false
pol_interval = 5

[[drivers]]
kind = "rlay"
name = "fan"
""")
    code, _, err = check(p)
    assert code == 2
    text = "\n".join(err)
    for raw in ("is not valid under any of the given schemas", "Additional properties are not allowed",
                "is not of type", "is not one of"):
        assert raw not in text
    assert problem(err, p, line_of(p, "activ_high = false"), "drivers.pump_relay.activ_high") == \
        "unknown key; did you mean 'active_high'?"
    assert "did you mean 'poll_interval'?" in problem(err, p, line_of(p, "pol_interval = 5"),
                                                      "drivers.pump_relay.pol_interval")
    pin = problem(err, p, line_of(p, 'pin = "17"'), "drivers.pump_relay.pin")
    assert "got the string '17'" in pin and "without quotes (17)" in pin
    assert "did you mean 'relay'?" in problem(err, p, line_of(p, 'kind = "rlay"'), "drivers.fan.kind")
    # [device] problems stop the rest (round one): their own did-you-mean
    p = write(tmp_path, '[device]\nserver_name = "a/b"\nsimulat = true\n[link]\nprofile = "lann"\n', "round1.toml")
    code, _, err = check(p)
    assert problem(err, p, 3, "device.simulat") == "unknown key; did you mean 'simulate'?"
    assert problem(err, p, 5, "link.profile") == \
        "must be one of: \"lan\", \"unreliable\"; got the string 'lann'; did you mean 'lan'?"


def test_driver_without_a_usable_name_is_named_by_index(tmp_path):
    p = agent(tmp_path, '\n[[drivers]]\nkind = "led"\nname = "Bad Name"\npin = 3\n'
                        '\n[[drivers]]\nkind = "led"\nname = "a"\npin = 4\n\n[[drivers]]\nkind = "led"\nname = "a"\n'
                        'pin = 5\n')
    code, _, err = check(p)
    assert code == 2
    assert "got 'Bad Name'" in problem(err, p, line_of(p, 'name = "Bad Name"'), "drivers[0].name")
    second = line_of(p, 'name = "a"', line_of(p, 'name = "a"'))
    assert "duplicate driver name 'a'" in problem(err, p, second, "drivers[2].name")


def test_locator_finds_lines():
    text = '''# comment
[device]
"server_name" = "a/b"
notes = """
[fake]
pin = 1
"""
list = [
  1,  # [not a table]
]
[[rbac.roles]]
name = "a"
[[rbac.roles]]
name = "b"
sub.key = 3
[[drivers]]
kind = "led"
rate_limit = {rate = 1}
[[drivers]]
name = 'pump'
pin = 17
'''
    import tomllib

    loc = Locator(text, tomllib.loads(text))
    assert loc.line("device.server_name") == 3
    assert loc.line("device.list[0]") == 8
    assert loc.line("rbac.roles[1].name") == 14
    assert loc.line("rbac.roles[1].sub.key") == 15
    assert loc.line("drivers[0].rate_limit.rate") == 18
    assert loc.line("drivers.pump.pin") == 21
    assert loc.line("drivers.pump.missing") == 19
    assert loc.line("store.path") == 0 and loc.line("-") == 0
    assert ("fake",) not in loc.lines


def test_config_error_keeps_its_tuples():
    exc = ConfigError([("f.toml", "device.x", "bad"), ("f.toml", "-", "worse")], lines=[3, 0])
    assert exc.problems[0] == ("f.toml", "device.x", "bad")
    assert str(exc) == "f.toml:3: device.x: bad\nf.toml: -: worse"
    assert ConfigError([("f", "k", "m")]).lines == [0]
