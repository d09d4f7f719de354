"""Simulation is a backend the DriverContext carries: chosen once where the context is built,
reached by drivers through the context, never by ``if simulate`` inside a driver."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import threading
from pathlib import Path

import pytest
import serial
from gpiozero.pins.mock import MockFactory

from edge_agent.drivers import nmea
from edge_agent.drivers.base import SIMULATED_MODELS, Attachment, Backend, DriverContext, simulated_model
from edge_agent.drivers.serial import NmeaGps
from edge_agent.drivers.simulation import FileModel, SimulatedBackend

DRIVERS = Path(__file__).resolve().parents[1] / "drivers"


def test_no_driver_branches_on_simulate():
    """Only the context (base.py) and the simulated backend read ``simulate``; drivers build
    contexts at most (``DriverContext(simulate=True)`` in a check), never test the flag."""
    offenders = []
    for path in sorted(DRIVERS.rglob("*.py")):
        if path.name in ("base.py", "simulation.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "simulate":
                offenders.append(f"{path.relative_to(DRIVERS)}:{node.lineno}")
    assert not offenders


def test_hardware_backend(tmp_path):
    ctx = DriverContext.hardware(state_dir=str(tmp_path))
    assert isinstance(ctx.backend, Backend) and not ctx.simulate and not ctx.backend.simulated
    assert ctx.sysfs_root == "/sys" and ctx.proc_root == "/proc"
    assert ctx.gpio_factory() is None  # gpiozero's default factory
    probe = ctx.attach("ds18b20", sysfs_root="/sys", device_id="28-00000a1b2c3d", owner="soil")
    assert isinstance(probe, Attachment) and probe.device_id == "28-00000a1b2c3d"
    probe.close()
    with pytest.raises(AttributeError, match="not given to attach"):
        probe.port  # noqa: B018
    assert DriverContext(simulate=False).backend.__class__ is Backend


def test_simulated_backend_is_chosen_once_and_kept_by_copies(tmp_path):
    ctx = DriverContext.simulated(state_dir=str(tmp_path))
    assert ctx.simulate and isinstance(ctx.backend, SimulatedBackend)
    assert ctx.sysfs_root == str(tmp_path / "simulated" / "sys")
    factory = ctx.gpio_factory()
    assert isinstance(factory, MockFactory) and ctx.gpio_factory() is factory  # one per backend
    copy = dataclasses.replace(ctx, proc_root=str(tmp_path))
    assert copy.backend is ctx.backend and copy.gpio_factory() is factory and copy.i2c_bus(1) is ctx.i2c_bus(1)
    # the same as DriverContext(simulate=True); an explicit pin factory wins over the backend's
    own = MockFactory()
    assert DriverContext(simulate=True, pin_factory=own, state_dir=str(tmp_path)).gpio_factory() is own
    ctx.close()
    ctx.close()
    assert ctx.gpio_factory() is not factory  # closed; a new one is made on demand
    ctx.close()
    own.close()


def test_unknown_model_is_the_real_device(tmp_path):
    ctx = DriverContext.simulated(state_dir=str(tmp_path))
    board = ctx.attach("a_board_nobody_simulates", port="/dev/ttyUSB0")
    assert isinstance(board, Attachment) and board.port == "/dev/ttyUSB0"


def test_a_registered_model_and_a_file_model(tmp_path):
    made = []

    @simulated_model("test_counter")
    def counter(context, *, path):
        ticks = iter(range(1_000_000))
        model = FileModel(path, lambda: f"{next(ticks)}\n", interval=0.05)
        made.append(model)
        return model

    try:
        ctx = DriverContext.simulated(state_dir=str(tmp_path))
        path = Path(ctx.sysfs_root) / "counter"
        model = ctx.attach("test_counter", path=str(path))
        assert made == [model] and path.read_text() == "0\n"  # written before attach returns
        changed = threading.Event()
        for _ in range(100):
            if path.read_text() != "0\n":
                changed.set()
                break
            changed.wait(0.02)
        assert changed.is_set()
        model.close()
        model.close()
        settled = path.read_text()
        threading.Event().wait(0.2)
        assert path.read_text() == settled  # closed: no more writes
        # on hardware the same call models nothing
        assert isinstance(DriverContext.hardware().attach("test_counter", path=str(path)), Attachment)
    finally:
        SIMULATED_MODELS.pop("test_counter", None)


def test_serial_opener_reaches_the_driver(tmp_path):
    """A context's ``serial_opener`` replaces pyserial's ``Serial``: here pyserial's own
    ``loop://`` port, which reads back what is written to it."""
    opened = []

    def loopback(port, **settings):
        link = serial.serial_for_url("loop://", do_not_open=True, **settings)
        opened.append((port, link))
        return link

    driver = NmeaGps("gps", {"port": "/dev/ttyAMA0", "baudrate": 9600},
                     context=DriverContext.hardware(serial_opener=loopback, state_dir=str(tmp_path)))
    try:
        for _ in range(200):
            if opened and opened[-1][1].is_open:
                break
            threading.Event().wait(0.01)
        port, link = opened[-1]
        assert port == "/dev/ttyAMA0" and link.baudrate == 9600
        link.write((nmea.gga_sentence(dt.datetime.now(dt.timezone.utc), 51.5, 4.2, 3.0, satellites=7, hdop=1.1)
                    + "\r\n").encode())
        assert driver._got_data.wait(5), "the driver read nothing from the opener's port"
        assert {s.name: s for s in driver.sensors()}["fix"].read()["satellites"] == 7
    finally:
        driver.close()
