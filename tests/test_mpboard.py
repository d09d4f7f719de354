"""A MicroPython board on a serial line, served by the Pi agent (``drivers/mpboard.py``).

The board is the example main.py under the MicroPython WebAssembly port (see
tests/test_micropython_board.py) serving newline-delimited JSON-RPC on a pty: the board holds
the master, the Pi's pyserial opens the slave through a symlink, so the port path survives
an unplug and replug (a new pty behind the same name, as udev's /dev/serial/by-id links do).
The Pi agent runs in-process with a real Mosquitto; the official ``mcp`` client calls the
board's tools through the Pi.
"""

from __future__ import annotations

import json
import os
import signal
import tty
from pathlib import Path

import anyio
import pytest

from edge_agent.cloud import connect
from edge_agent.device import config as cfg
from edge_agent.device.runtime import Agent
from edge_agent.drivers import driver_class
from edge_agent.drivers.base import DriverContext
from edge_agent.drivers.mpboard import MpBoard, sensor_name
from edge_agent.errors import DriverError, ToolInputError

from .test_micropython_board import Board, text_of

pytestmark = pytest.mark.anyio
PI = "devices/test/pi-bridge"
SERIAL_SITE = ('import hostio\n'
               'config = {"serial": hostio.serial(), "server_name": "devices/test/esp32-usb", "server_id": "esp32-usb-1"}\n')


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Cable:
    """A board plugged in on ``link`` (a symlink to a pty slave), running the example main.py."""

    def __init__(self, workdir: Path, link: Path, label: str = "board"):
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.ttyname(slave))
        self.board = Board(workdir, SERIAL_SITE, serial_fd=master, label=label).start()
        os.close(master)  # the board process holds the master now
        # Our copy of the slave stays open while plugged in: a USB board does not notice the
        # Pi closing the port, but a pty master reads EIO when the last slave fd closes.
        self.slave = slave
        self.link = link

    def unplug(self) -> None:
        self.board.stop(signal.SIGKILL)  # the pty master closes: the Pi's reads and writes fail
        if self.slave is not None:
            os.close(self.slave)
            self.slave = None
        if self.link.is_symlink():
            self.link.unlink()  # and the device node is gone


def agent_config(tmp_path: Path, port: Path, timeout: float = 3) -> cfg.Config:
    return cfg.from_dict({
        "device": {"server_name": PI, "server_id": "pi-bridge-1", "simulate": True,
                   "state_dir": str(tmp_path / "state")},
        "drivers": [{"kind": "mpboard", "name": "board", "port": str(port), "timeout": timeout}],
    })


async def wait_until(cond, timeout: float = 10.0):
    with anyio.fail_after(timeout):
        while not await cond():
            await anyio.sleep(0.1)


async def test_pi_serves_the_boards_tools_and_resources_and_survives_a_replug(broker, tmp_path):
    link = tmp_path / "ttyBOARD"
    cable = Cable(tmp_path, link)
    agent = None
    try:
        with anyio.fail_after(10):  # the board boots: the driver needs its answer to start
            while True:
                try:
                    MpBoard("probe", {"port": str(link), "timeout": 1}, context=DriverContext()).close()
                    break
                except DriverError:
                    await anyio.sleep(0.1)
        agent = Agent(agent_config(tmp_path, link), broker_url=broker.url)
        await agent.start(connect_timeout=10)
        async with connect(broker.url, PI) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert {"board_vent_set_angle", "board_pump_set", "board_status_led_blink"} <= set(tools)
            angle = tools["board_vent_set_angle"].input_schema["properties"]["angle"]
            assert (angle["minimum"], angle["maximum"]) == (-90, 90)
            assert tools["board_vent_set_angle"].annotations.destructive_hint is True

            moved = await session.call_tool("board_vent_set_angle", {"angle": 20})
            assert not moved.is_error and moved.structured_content == {"angle": 20}
            too_far = await session.call_tool("board_vent_set_angle", {"angle": 500})
            assert too_far.is_error and "500" in text_of(too_far)
            reading = json.loads((await session.read_resource("sensor://board/vent_angle")).contents[0].text)
            assert reading["value"] == 20 and reading["unit"] == "°"
            soil = json.loads((await session.read_resource("sensor://board/soil_temp_value")).contents[0].text)
            assert soil["unit"] == "°C" and 20 <= soil["value"] <= 30

            cable.unplug()
            failed = await session.call_tool("board_vent_set_angle", {"angle": 10})
            assert failed.is_error and "board on" in text_of(failed)

            async def degraded():
                health = json.loads((await session.read_resource("device://health")).contents[0].text)
                return health["drivers"]["board"]["status"] == "degraded"

            await wait_until(degraded)

            cable = Cable(tmp_path, link, label="board-again")  # plugged back in (a rebooted board)

            async def works():
                return not (await session.call_tool("board_vent_set_angle", {"angle": -30})).is_error

            await wait_until(works)
            health = json.loads((await session.read_resource("device://health")).contents[0].text)
            assert health["drivers"]["board"]["status"] == "ok"
            reading = json.loads((await session.read_resource("sensor://board/vent_angle")).contents[0].text)
            assert reading["value"] == -30
    finally:
        if agent is not None:
            await agent.stop()
        cable.unplug()


def test_driver_talks_to_a_board_directly(tmp_path):
    link = tmp_path / "ttyB"
    cable = Cable(tmp_path, link)
    driver = None
    try:
        for _ in range(50):
            try:
                driver = driver_class("mpboard")("b", {"port": str(link), "timeout": 2}, context=DriverContext())
                break
            except DriverError:
                import time
                time.sleep(0.1)
        assert driver is not None, cable.board.log
        assert driver.server_info["name"] == "edgemcp"
        tools = {t.name: t for t in driver.tools()}
        sensors = {s.name: s for s in driver.sensors()}
        assert {"vent_angle", "soil_temp_value", "pump_state", "health"} <= set(sensors)
        assert sensors["soil_temp_value"].unit == "°C" and sensors["soil_temp_value"].poll_interval == 5
        assert sensors["health"].poll_interval is None  # on demand only, as the board declares
        assert tools["pump_set"].handler(on=True) == {"on": True}
        assert sensors["pump_state"].read() is True
        with pytest.raises(ToolInputError, match="on must be a boolean"):
            tools["pump_set"].handler(on="yes")  # the board's own argument check
        assert driver.request("ping") == {}
    finally:
        if driver is not None:
            driver.close()
            driver.close()  # safe twice
        cable.unplug()


def test_no_board_is_a_driver_error(tmp_path):
    with pytest.raises(DriverError, match="not connected"):
        MpBoard("b", {"port": str(tmp_path / "nothing")}, context=DriverContext())
    master, slave = os.openpty()  # a port with nobody answering (wrong firmware, still booting)
    tty.setraw(slave)
    try:
        with pytest.raises(DriverError, match="no answer to initialize"):
            MpBoard("b", {"port": os.ttyname(slave), "timeout": 0.5}, context=DriverContext())
    finally:
        os.close(master)
        os.close(slave)


def test_config_accepts_the_kind_and_names_sensors():
    config = cfg.from_dict({"device": {"server_name": "devices/x/pi"},
                            "drivers": [{"kind": "mpboard", "name": "esp", "port": "/dev/ttyACM0"}]})
    assert config.drivers[0].options == {"port": "/dev/ttyACM0"}
    with pytest.raises(cfg.ConfigError, match="baudrate"):
        cfg.from_dict({"device": {"server_name": "devices/x/pi"},
                       "drivers": [{"kind": "mpboard", "name": "esp", "baudrate": 1234}]})
    assert sensor_name("sensor://vent/angle") == "vent_angle"
    assert sensor_name("device://health") == "health"
    assert sensor_name("sensor://Soil-Temp/value") == "soil_temp_value"
