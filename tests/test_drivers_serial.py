"""NMEA GPS driver through a real pty: sentences in, fix out; unplug and replug."""

from __future__ import annotations

import os
import time
import tty

import jsonschema
import pytest

from edge_agent.drivers import nmea
from edge_agent.drivers.base import DriverContext
from edge_agent.drivers.serial import NmeaGps
from edge_agent.errors import DriverError

GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
BAD = "$GPGGA,123520,5107.038,N,00131.000,E,2,12,0.5,9.0,M,46.9,M,,*47"  # checksum of GGA: wrong here


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    pair = {"master": master, "slave": slave, "port": os.ttyname(slave)}
    yield pair
    for fd in (pair["master"], pair["slave"]):
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def gps(tmp_path):
    """Make NmeaGps drivers; all are closed at teardown, so a failed test leaks no reader thread."""
    made = []

    def make(port, stale_after=5, simulate=False):
        ctx = DriverContext(simulate=simulate, state_dir=str(tmp_path))
        options = {"stale_after": stale_after} if simulate else {"port": port, "stale_after": stale_after}
        made.append(NmeaGps("gps", options, context=ctx))
        return made[-1]

    yield make
    for driver in made:
        driver.close()


def read(driver, name):
    spec = {s.name: s for s in driver.sensors()}[name]
    value = spec.read()
    jsonschema.validate(value, spec.value_schema)
    return value


def wait_for(predicate, timeout=5.0, feed=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if feed:
            feed()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def write(master, *lines):
    os.write(master, "".join(line + "\r\n" for line in lines).encode("ascii"))


def opened(driver, master):
    """Feed a no-fix sentence until the driver has the port open (pyserial flushes input on open)."""
    wait_for(lambda: read(driver, "stats")["sentences"] > 0,
             feed=lambda: write(master, nmea.sentence("GPRMC,,V,,,,,,,,,,N")))
    return read(driver, "stats")["sentences"]


def test_fix_from_sentences_and_bad_checksums_dropped(gps, pty_pair):
    driver = gps(pty_pair["port"])
    before = opened(driver, pty_pair["master"])
    assert read(driver, "position") == {"lat": None, "lon": None, "altitude_m": None}
    assert read(driver, "speed") is None
    write(pty_pair["master"], GGA, BAD)
    os.write(pty_pair["master"], b"\x00\xff noise\r\n")
    write(pty_pair["master"], RMC)
    wait_for(lambda: read(driver, "speed") is not None)  # RMC, the last line, is in
    stats = read(driver, "stats")
    assert stats["dropped"] == 2 and stats["sentences"] >= before + 2
    position = read(driver, "position")
    assert position == {"lat": pytest.approx(48.1173), "lon": pytest.approx(11.516667), "altitude_m": 545.4}
    assert read(driver, "fix") == {"fix": True, "quality": 1, "satellites": 8, "hdop": 0.9,
                                   "time": "1994-03-23T12:35:19Z"}
    assert read(driver, "speed") == pytest.approx(11.52)
    units = {s.name: s.unit for s in driver.sensors()}
    assert units["position"] == "°" and units["speed"] == "m/s"
    driver.close()
    driver.close()


def test_unplugged_port_is_reported(gps, pty_pair):
    driver = gps(pty_pair["port"])
    opened(driver, pty_pair["master"])
    os.close(pty_pair["master"])  # the receiver goes away
    os.close(pty_pair["slave"])

    def failing():
        try:
            read(driver, "position")
        except DriverError as exc:
            return exc
        return None

    wait_for(failing)
    message = str(failing())
    assert message.startswith(f"GPS on {pty_pair['port']}: no data for ")
    assert "port closed" in message and "reopening every 3 s" in message
    driver.close()


def test_silent_port_is_reported(gps, pty_pair):
    driver = gps(pty_pair["port"], stale_after=1)
    time.sleep(1.1)
    with pytest.raises(DriverError, match=rf"GPS on {pty_pair['port']}: no data for 1 s: .*baud rate \(9600\)"):
        read(driver, "fix")
    driver.close()


def test_port_that_appears_later_is_opened(gps, pty_pair, tmp_path):
    link = tmp_path / "ttyGPS"
    driver = gps(str(link))
    with pytest.raises(DriverError, match=rf"GPS on {link}: .*port closed \(.*No such file"):
        read(driver, "fix")
    link.symlink_to(pty_pair["port"])  # plugged in
    wait_for(lambda: read(driver, "stats")["sentences"] > 0, timeout=6,
             feed=lambda: write(pty_pair["master"], GGA))
    assert read(driver, "fix")["satellites"] == 8
    driver.close()


def test_simulated_receiver(gps):
    driver = gps(None, simulate=True)
    port = driver.port
    assert port.startswith("/dev/pts/") and port == driver.device.port  # the model's pty
    wait_for(lambda: read(driver, "stats")["sentences"] >= 2)
    position = read(driver, "position")
    lat, lon, speed, _ = driver.device.position(time.time())
    assert position["lat"] == pytest.approx(lat, abs=1e-4) and position["lon"] == pytest.approx(lon, abs=1e-4)
    assert position["altitude_m"] == 2.0
    fix = read(driver, "fix")
    assert fix["fix"] is True and fix["satellites"] == 9 and fix["time"].endswith("Z")
    assert read(driver, "speed") == pytest.approx(speed, abs=0.01)
    assert read(driver, "stats")["dropped"] == 0
    driver.close()
    assert not os.path.exists(port)  # the pty is gone
