# Ready-made tools and resources for machine.Pin, machine.PWM and machine.ADC. Each helper
# declares on a Device and returns the machine object. Units and ranges come from the ESP32
# Technical Reference Manual (ADC: 12 bit, read_u16 scaled to 0..65535; LEDC PWM: duty_u16).
# Tool descriptions and resource names are declared as (template, argument), formatted only
# when listed (mcp.text): the template stays in flash (frozen), the heap holds no formatted copy.
from machine import ADC, PWM, Pin


def digital_out(app, name, pin, description="", inverted=False, destructive=True):
    """An on/off output (relay, LED): tool ``{name}_set`` {on: boolean}, resource
    ``sensor://{name}/state`` (true = on)."""
    p = Pin(pin, Pin.OUT, value=1 if inverted else 0)
    uri = "sensor://%s/state" % name  # one string for the resource and the tool's updates

    def state():
        return bool(p.value()) != inverted

    @app.tool(name + "_set", ("%s: switch on (true) or off (false)", description or name),
              params={"on": ("boolean", None, None, "", "true = on")}, destructive=destructive, idempotent=True,
              updates=(uri,))
    def set_(on):
        p.value(1 if on != inverted else 0)
        return {"on": state()}

    app.resource(uri, ("%s state", name), "", state, poll=1, description=description or name)
    return p


def digital_in(app, name, pin, description="", pull=None, inverted=False, poll=0.2):
    """A digital input (button, reed switch, PIR): resource ``sensor://{name}/state``
    (true = active), polled every ``poll`` s. ``pull``: None, ``Pin.PULL_UP``, ``Pin.PULL_DOWN``."""
    p = Pin(pin, Pin.IN, pull) if pull is not None else Pin(pin, Pin.IN)
    app.resource("sensor://%s/state" % name, ("%s state", name), "", lambda: bool(p.value()) != inverted, poll=poll,
                 description=description or name)
    return p


def pwm(app, name, pin, description="", freq=1000):
    """A PWM output (dimmable LED, fan): tool ``{name}_set`` {duty: 0..1}, resource
    ``sensor://{name}/duty`` (0..1). ``freq``: Hz."""
    p = PWM(Pin(pin), freq=freq, duty_u16=0)
    uri = "sensor://%s/duty" % name

    def duty():
        return round(p.duty_u16() / 65535, 4)

    @app.tool(name + "_set", ("%s: set the PWM duty cycle (0 = off, 1 = full)", description or name),
              params={"duty": ("number", 0, 1, "", "duty cycle")}, destructive=False, idempotent=True,
              updates=(uri,))
    def set_(duty):
        p.duty_u16(int(duty * 65535 + 0.5))
        return {"duty": duty}

    app.resource(uri, ("%s duty", name), "", duty, poll=5, description=description or name)
    return p


def servo(app, name, pin, description="", min_us=500, max_us=2500):
    """A hobby servo on 50 Hz PWM: tool ``{name}_set_angle`` {angle: -90..90 °}, resource
    ``sensor://{name}/angle`` (°). ``min_us``/``max_us``: pulse widths (µs) at -90/+90 °."""
    p = PWM(Pin(pin), freq=50, duty_u16=0)
    st = [0.0]
    uri = "sensor://%s/angle" % name

    def move(angle):
        us = min_us + (angle + 90) * (max_us - min_us) / 180
        p.duty_u16(int(us * 65535 / 20000))
        st[0] = angle

    @app.tool(name + "_set_angle", ("%s: turn to an angle", description or name),
              params={"angle": ("number", -90, 90, "°", "target angle")}, destructive=True, idempotent=True,
              updates=(uri,))
    def set_angle(angle):
        move(angle)
        return {"angle": angle}

    app.resource(uri, ("%s angle", name), "°", lambda: st[0], poll=5, description=description or name)
    move(0)
    return p


def adc(app, name, pin, unit="V", scale=3.3 / 65535, offset=0.0, description="", poll=5, deadband=0.0, digits=3):
    """An analog input: resource ``sensor://{name}/value`` = ``read_u16() * scale + offset``
    in ``unit``, rounded to ``digits``. The default scale gives volts at 11 dB attenuation
    (about 0..3.3 V; the ESP32 ADC is not linear near the ends)."""
    a = ADC(Pin(pin))
    try:
        a.atten(ADC.ATTN_11DB)
    except (AttributeError, ValueError):
        pass
    app.resource("sensor://%s/value" % name, name, unit, lambda: round(a.read_u16() * scale + offset, digits),
                 poll=poll, description=description or name, deadband=deadband)
    return a
