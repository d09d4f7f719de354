"""What ``edge-agent run`` would trip over with a valid config, found before it runs.

:func:`problems` looks past the schema, at this machine and across drivers:

- a GPIO used twice, whatever each driver calls it (``17``, ``"GPIO17"``, ``"BOARD11"``), or a
  pin a kernel interface a driver needs reserves (1-Wire, UART, I2C, SPI), and a serial port
  (or any exclusive ``PinUse.port``) opened by two real drivers (:meth:`drivers.Driver.pin_uses`,
  :mod:`edge_agent.drivers.pins`);
- what a driver's constructor would refuse (:meth:`drivers.Driver.check_options`: a servo
  with an empty range; GPIO drivers are built once on a private gpiozero ``MockFactory``);
- no usable gpiozero pin factory for drivers on real pins (lgpio missing), naming the fix;
- a state folder or SQLite store the current user could not create or write;
- a client certificate and key that do not load together;
- a driver kind from an installed package (entry point ``edge_agent.drivers``) that cannot be
  used: it does not import, is not a ``Driver``, or its name clashes (the message names the
  distribution). :func:`plugin_warnings` tells the same of installed kinds the config does
  not use.

Each problem is ``(file, key, message)`` like :class:`edge_agent.errors.ConfigError`'s.
"""

from __future__ import annotations

import os
import ssl
import warnings
from typing import Any, Callable

from edge_agent.device.config import Config, DriverConfig
from edge_agent.device.config_files import dir_problem, file_target_problem
from edge_agent.drivers import pins, plugin_problems

Problem = tuple[str, str, str]
LGPIO_FIX = ("on Raspberry Pi OS: sudo apt install python3-lgpio, and make the venv with "
             "python3 -m venv --system-site-packages so Debian's lgpio is visible in it (or pip install lgpio); "
             "to check a Pi's config on another machine: GPIOZERO_PIN_FACTORY=mock edge-agent check ...")
INTERFACE_FIX = {"1-wire": ", or move the bus with dtoverlay=w1-gpio,gpiopin=N in /boot/firmware/config.txt",
                 "uart": " (GPIO14/15 are the UART's TXD/RXD)", "i2c": " (GPIO2/3 are the I2C bus's SDA/SCL)",
                 "spi": " (GPIO7-11 are the SPI bus)"}


def problems(config: Config, *, pin_factory_probe: Callable[[], str | None] | None = None) -> list[Problem]:
    """Every problem found (empty: ``run`` should start every driver on this machine).

    ``pin_factory_probe()`` returns why no gpiozero pin factory is usable, or None (default:
    :func:`pin_factory_problem`, which honours ``$GPIOZERO_PIN_FACTORY``).
    """
    out: list[Problem] = []
    where = _where(config)

    def bad(key: str, message: str) -> None:
        out.append((config.path, key, message))

    state_dir = config.device.state_dir
    why = dir_problem(state_dir)
    if why:
        bad("device.state_dir", f"{why} (the agent keeps its state here; create it for the agent's user)")
    if config.store is not None:
        default = os.path.join(state_dir, "state.sqlite3")
        if config.store.path != default or not why:
            why_store = file_target_problem(config.store.path)
            if why_store:
                bad("store.path" if config.store.path != default else "device.state_dir",
                    f"{why_store} (the SQLite state store)")

    tls = config.broker
    if tls.cert_file and tls.key_file:
        why = _cert_key_problem(tls.cert_file, tls.key_file)
        if why:
            bad("broker.key_file", why)

    broken = plugin_problems({dc.kind for dc in config.drivers})
    for dc in config.drivers:
        if dc.kind in broken:
            bad(f"{_dkey(dc)}.kind", broken[dc.kind])
    refused = _pin_problems(config, bad, where)
    gpio_drivers = []
    for dc in config.drivers:
        cls = _driver_class(dc)
        if cls is None or dc.name in refused:
            continue
        for key, message in cls.check_options(dc.options):
            bad(f"{_dkey(dc)}.{key}" if key else _dkey(dc), message)
        simulated = config.device.simulate if dc.simulate is None else dc.simulate
        if not simulated and any(u.interface == "gpio" for u in cls.pin_uses(dc.options)):
            gpio_drivers.append(dc)
    if gpio_drivers:
        why = (pin_factory_probe or pin_factory_problem)()
        if why:
            names = ", ".join(d.name for d in gpio_drivers)
            bad(_dkey(gpio_drivers[0]), f"no gpiozero pin factory works on this machine, so run cannot open the "
                                        f"GPIO pins of {names} ({why}); {LGPIO_FIX}")
    return out


def insecure_warnings(config: Config, broker_urls: list[str] | None = None) -> list[str]:
    """Why this setup is open to anyone on the broker's network (issue 13 item 10), one
    message each, for ``check`` and ``run`` to say loudly, once: a non-loopback broker (of
    ``broker_urls``, default the config's) reached over plain ``mqtt://``, without credentials
    (no user name and password, no client certificate), or a device that gives every client
    the operator role (no ``[rbac]``; no ``[auth]`` either). ``[broker] warn_insecure = false``
    says the risk is known and silences them. Empty for a loopback broker."""
    from edge_agent.mqtt.broker_url import parse_broker_url

    if not config.broker.warn_insecure:
        return []
    remote = []
    for url in broker_urls or config.broker.urls:
        try:
            parsed = parse_broker_url(url)
        except ValueError:
            continue
        if not _loopback(parsed.host):
            remote.append(parsed)
    if not remote:
        return []
    out = []
    plain = [str(u) for u in remote if not u.tls]
    if plain:
        out.append(f"broker {', '.join(plain)} is reached over plain mqtt://: anyone on the network path reads and "
                   "forges every call and the password (use mqtts://, docs/security.md)")
    if not (config.broker.username or any(u.username for u in remote)) and not config.broker.cert_file:
        out.append("no broker credentials (username and password, or a client certificate): the broker cannot tell "
                   "this device from anyone else")
    if not config.rbac.enabled and config.rbac.verifier is None:
        out.append("no [rbac] and no [auth]: every client on the broker may move every actuator (add [rbac] with "
                   "default_role = \"viewer\", docs/security.md)")
    return [f"INSECURE: {m}; set [broker] warn_insecure = false to accept the risk" for m in out]


def _loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plugin_warnings(config: Config) -> list[str]:
    """What is wrong with installed driver plugins the config does not use (one message each,
    naming the distribution): ``run`` is not affected, but a config using them would be."""
    used = {dc.kind for dc in config.drivers}
    return [message for kind, message in plugin_problems().items() if kind not in used]


def pin_factory_problem() -> str | None:
    """Why gpiozero's default pin factory cannot be made here (each factory's reason), or None.
    Builds it as ``run`` would (``$GPIOZERO_PIN_FACTORY`` or lgpio, RPi.GPIO, pigpio, native)
    and closes it again."""
    try:
        from gpiozero import Device
    except ImportError:
        return None  # reported as a missing library
    if Device.pin_factory is not None:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            factory = Device._default_pin_factory()
        except Exception as exc:  # noqa: BLE001 - gpiozero raises BadPinFactory, or what a factory raised
            reasons = [str(w.message).removeprefix("Falling back from ") for w in caught]
            return "; ".join(reasons + [str(exc)])
    try:
        factory.close()
    except Exception:  # noqa: BLE001 - only probing
        pass
    return None


def _where(config: Config) -> Callable[[str], str]:
    def where(key: str) -> str:
        line = config.locator.line(key) if config.locator is not None else 0
        return f"{key} (line {line})" if line else key
    return where


def _dkey(dc: DriverConfig) -> str:
    return f"drivers.{dc.name}"


def _driver_class(dc: DriverConfig):
    from edge_agent.drivers import driver_class

    try:
        return driver_class(dc.kind)
    except (ImportError, LookupError):  # reported by config.load, or a broken plugin (reported above)
        return None


def _pin_problems(config: Config, bad, where) -> set[str]:
    """Report bad pin names, pins used twice and serial ports opened twice; the names of the
    drivers with a bad pin (not built again)."""
    refused: set[str] = set()
    claims: dict[int, list[tuple[str, str, str]]] = {}  # bcm -> [(key, label, interface)]
    ports: dict[str, list[tuple[str, str]]] = {}
    for dc in config.drivers:
        cls = _driver_class(dc)
        if cls is None:
            continue
        simulated = config.device.simulate if dc.simulate is None else dc.simulate
        for use in cls.pin_uses(dc.options):
            key = f"{_dkey(dc)}.{use.key}" if use.key else _dkey(dc)
            if use.port and not simulated:
                same = "uart" if use.interface == "uart" else (
                    os.path.realpath(use.port) if use.port.startswith("/") else use.port)
                ports.setdefault(same, []).append((key, use.port))
            if use.interface != "gpio" and use.interface not in pins.INTERFACE_PINS:
                continue
            try:
                numbers = [pins.bcm(use.pin)] if use.pin is not None else list(pins.INTERFACE_PINS[use.interface])
            except ValueError as exc:
                bad(key, str(exc))
                refused.add(dc.name)
                continue
            for n in numbers:
                label = pins.label(use.pin, n) if use.interface == "gpio" else f"GPIO{n}"
                claims.setdefault(n, []).append((key, label, use.interface))
    for n, group in sorted(claims.items()):
        gpio = [c for c in group if c[2] == "gpio"]
        buses = [c for c in group if c[2] != "gpio"]
        for key, _, iface in buses[1:]:
            if iface != buses[0][2]:
                bad(key, f"GPIO{n} is used in multiple places: {pins.INTERFACE_NAMES[iface]} of this driver and "
                         f"{pins.INTERFACE_NAMES[buses[0][2]]} of {where(buses[0][0])}")
        for i, (key, label, _) in enumerate(gpio):
            if buses or i:
                refused.add(key.split(".")[1])
            if buses:
                owner, iface = buses[0][0], buses[0][2]
                bad(key, f"{label} is used in multiple places: {where(owner)} needs it for {pins.INTERFACE_NAMES[iface]}; "
                         f"wire this to a free GPIO{INTERFACE_FIX[iface]}")
            elif i:
                bad(key, f"{label} is used in multiple places: {where(gpio[0][0])} uses it too; "
                         "a GPIO drives one device: wire this to a free pin")
    for opened in ports.values():
        for key, port in opened[1:]:
            bad(key, f"{port} is used in multiple places: {where(opened[0][0])} opens {opened[0][1]} too; "
                     "it serves one driver")
    return refused


def _cert_key_problem(cert: str, key: str) -> str | None:
    """Why the client certificate and key do not load together, or None (PEM shape was
    checked by config.load; unreadable files are reported there)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    def no_passphrase() -> Any:
        raise ValueError("encrypted")

    try:
        ctx.load_cert_chain(cert, key, password=no_passphrase)
    except ValueError:
        return f"{key} is encrypted with a passphrase; the agent cannot ask for it: store the key unencrypted (chmod 600)"
    except ssl.SSLError as exc:
        return f"{cert} and {key} do not load together ({exc.reason or exc}): is this the key of that certificate?"
    except OSError:
        return None
    return None
