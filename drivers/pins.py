"""Raspberry Pi GPIO pin names → BCM numbers, and the pins the Pi's interfaces reserve.

gpiozero accepts a pin as a BCM number (``17``), ``"17"``, ``"GPIO17"``, ``"BCM17"``, a
physical header pin (``"BOARD11"``, ``"J8:11"``) or a wiringPi number (``"WPI0"``); all six
name the same line. :func:`bcm` maps any of them to the BCM number so that ``edge-agent check``
sees two drivers on one line whatever they call it. The table is the 40-pin header (J8) shared
by every Pi from the B+ to the Pi 5 (gpiozero ``pins/data.py`` and ``pins/pi.py``).

:data:`INTERFACE_PINS`: the BCM pins a kernel interface owns once enabled (``dtparam=i2c_arm=on``
→ GPIO2/3, ``enable_uart=1`` → GPIO14/15, ``dtoverlay=w1-gpio`` → GPIO4 unless ``gpiopin=N``,
``dtparam=spi=on`` → GPIO7-11). A gpiozero device cannot claim such a pin (``GPIO busy``).
"""

from __future__ import annotations

import os
import re
from typing import Any

# physical J8 pin -> BCM number (the GPIO pins only; the rest are 3V3, 5V and GND)
J8_TO_BCM: dict[int, int] = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10, 21: 9, 22: 25,
    23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19, 36: 16, 37: 26, 38: 20, 40: 21,
}
J8_POWER = {1: "3V3", 17: "3V3", 2: "5V", 4: "5V", 6: "GND", 9: "GND", 14: "GND", 20: "GND", 25: "GND",
            30: "GND", 34: "GND", 39: "GND"}
# wiringPi number -> physical J8 pin (gpiozero's wpi_map, inverted)
WPI_TO_J8: dict[int, int] = {
    8: 3, 9: 5, 7: 7, 15: 8, 16: 10, 0: 11, 1: 12, 2: 13, 3: 15, 4: 16, 5: 18, 12: 19, 13: 21, 6: 22, 14: 23,
    10: 24, 11: 26, 30: 27, 31: 28, 21: 29, 22: 31, 26: 32, 23: 33, 24: 35, 27: 36, 25: 37, 28: 38, 29: 40,
}
BCM_MAX = 27  # GPIO0..GPIO27 are on the 40-pin header

INTERFACE_PINS: dict[str, tuple[int, ...]] = {
    "1-wire": (4,),
    "uart": (14, 15),
    "i2c": (2, 3),
    "spi": (7, 8, 9, 10, 11),
}
INTERFACE_NAMES = {"1-wire": "the 1-Wire bus (dtoverlay=w1-gpio)", "uart": "the UART (TXD/RXD, enable_uart=1)",
                   "i2c": "the I2C bus (SDA/SCL, dtparam=i2c_arm=on)", "spi": "the SPI bus (dtparam=spi=on)"}
# serial devices wired to GPIO14/15 (the primary UART; serial0 is a link to ttyAMA0 or ttyS0)
UART_PORTS = {"/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0"}
BOOT_CONFIGS = ("/boot/firmware/config.txt", "/boot/config.txt")

_NAME = re.compile(r"^(GPIO|BCM|BOARD|WPI|J8:)?([0-9]{1,3})$")


def bcm(pin: Any) -> int:
    """The BCM number of ``pin`` as gpiozero would read it (int or name, see the module doc).

    Raises:
        ValueError: not a GPIO of the 40-pin header; the message says what the pin is instead
            (``"BOARD1 is 3V3, not a GPIO"``) or what forms are accepted.
    """
    if isinstance(pin, bool) or not isinstance(pin, (int, str)):
        raise ValueError(f"a pin is a BCM number or a name like \"GPIO17\", not {pin!r}")
    if isinstance(pin, int):
        prefix, number = "", pin
    else:
        m = _NAME.match(pin.strip())
        if not m:
            raise ValueError(f"{pin!r} is not a pin name: use a BCM number (17) or \"GPIO17\", \"BCM17\", "
                             "\"BOARD11\", \"J8:11\", \"WPI0\"")
        prefix, number = m.group(1) or "", int(m.group(2))
    if prefix in ("", "GPIO", "BCM"):
        if not 0 <= number <= BCM_MAX:
            raise ValueError(f"{pin!r}: the 40-pin header has GPIO0..GPIO{BCM_MAX}")
        return number
    if prefix == "WPI":
        if number not in WPI_TO_J8:
            raise ValueError(f"{pin!r}: no wiringPi pin {number} on the 40-pin header")
        return J8_TO_BCM[WPI_TO_J8[number]]
    if number in J8_POWER:  # BOARDn / J8:n
        raise ValueError(f"{pin!r} is header pin {number}, {J8_POWER[number]}, not a GPIO")
    if number not in J8_TO_BCM:
        raise ValueError(f"{pin!r}: the 40-pin header has pins 1..40")
    return J8_TO_BCM[number]


def label(pin: Any, number: int) -> str:
    """``"GPIO17"``, or ``"BOARD11 (GPIO17)"`` when the config names it another way."""
    if isinstance(pin, int) or str(pin) in (f"GPIO{number}", str(number)):
        return f"GPIO{number}"
    return f"{pin} (GPIO{number})"


def boot_config_text(paths: tuple[str, ...] = BOOT_CONFIGS, limit: int = 256 * 1024) -> str:
    """The Pi's boot ``config.txt`` (first of ``paths`` that is a regular file), or ``""``."""
    for path in paths:
        try:
            if os.path.isfile(path) and os.path.getsize(path) <= limit:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    return fh.read()
        except OSError:
            continue
    return ""


def w1_gpio_pin(text: str | None = None) -> int:
    """The BCM pin of the 1-Wire bus: ``gpiopin=N`` of ``dtoverlay=w1-gpio`` in the boot config
    ``text`` (read from :data:`BOOT_CONFIGS` when None), else 4 (the overlay's default)."""
    text = boot_config_text() if text is None else text
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if re.match(r"^dtoverlay\s*=\s*w1-gpio(-pullup)?\b", line):
            m = re.search(r"\bgpiopin\s*=\s*([0-9]+)", line)
            if m:
                return int(m.group(1))
    return 4


def uart_port(port: str) -> bool:
    """True if serial device ``port`` is the primary UART on GPIO14/15."""
    if port in UART_PORTS:
        return True
    try:
        return os.path.realpath(port) in {os.path.realpath(p) for p in UART_PORTS if os.path.exists(p)}
    except OSError:
        return False
