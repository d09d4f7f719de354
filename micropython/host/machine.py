# A simulated ``machine`` module for the host interpreter: enough of Pin, PWM and ADC for
# edgemcp.hw and the example main.py. ADC inputs follow a slow sine so readings move.
# Nothing here is copied to a board (the board has the real machine module).
#
# Heap, as on an ESP32 (ports/esp32/machine_pin.c, machine_adc.c, machine_pwm.c): Pin(n) and
# ADC(pin) return objects of a static table (flash: no heap), PWM(...) allocates one. Here the
# tables are made at import, so the benchmarks, whose baseline is taken after ``import
# machine``, charge the library only what a board would.
import math
import time

PINS = 49  # GPIO0..48 (an ESP32-S3 has 49)
_levels = dict.fromkeys(range(PINS), 0)


def unique_id():
    return b"\x24\x6f\x28\x00\x00\x01"


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 2
    PULL_DOWN = 1

    def __new__(cls, pin, *args, **kwargs):
        return _pins[pin] if _pins else object.__new__(cls)

    def __init__(self, pin, mode=-1, pull=None, value=None):
        self.id = pin
        if value is not None:
            _levels[pin] = 1 if value else 0

    def value(self, v=None):
        if v is None:
            return _levels.get(self.id, 0)
        _levels[self.id] = 1 if v else 0


class PWM:
    def __init__(self, pin, freq=1000, duty_u16=0):
        self.pin = pin
        self._freq = freq
        self._duty = duty_u16

    def freq(self, f=None):
        if f is None:
            return self._freq
        self._freq = f

    def duty_u16(self, d=None):
        if d is None:
            return self._duty
        if not 0 <= d <= 65535:
            raise ValueError("duty_u16 must be 0..65535")
        self._duty = d

    def deinit(self):
        pass


class ADC:
    ATTN_11DB = 3

    def __new__(cls, pin, *args, **kwargs):
        return _adcs[pin.id] if _adcs else object.__new__(cls)

    def __init__(self, pin, atten=None):
        self.pin = pin

    def atten(self, a):
        pass

    def read_u16(self):
        # about 0.70..0.80 V: a TMP36 at 20..30 °C, one period every two minutes
        return int((0.75 + 0.05 * math.sin(time.ticks_ms() / 19099)) / 3.3 * 65535)


_pins = []
_pins = [Pin(n) for n in range(PINS)]
_adcs = []
_adcs = [ADC(p) for p in _pins]
