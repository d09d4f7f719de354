# main.py of an ESP32 greenhouse node: a vent servo, a circulation fan, the irrigation pump
# relay and a TMP36 soil thermometer, served as MCP tools and resources over MQTT.
# Wi-Fi and broker settings come from site_config.py (see site_config.example.py).
import asyncio

from edgemcp import Device, hw

app = Device(server_name="devices/greenhouse/esp32-01", description="Greenhouse 3 vent and soil node")

hw.servo(app, "vent", pin=13, description="roof vent servo")
hw.pwm(app, "fan", pin=14, description="circulation fan")
hw.digital_out(app, "pump", pin=26, description="irrigation pump relay")
# TMP36: 10 mV/°C with 500 mV at 0 °C, so T = V * 100 - 50 (V = read_u16 * 3.3 / 65535)
hw.adc(app, "soil_temp", pin=34, unit="°C", scale=330 / 65535, offset=-50, digits=1,
       description="soil temperature (TMP36)", poll=5, deadband=0.2)

led = hw.digital_out(app, "status_led", pin=2, description="on-board LED", destructive=False)


@app.tool("status_led_blink", "Blink the on-board LED", idempotent=False,
          params={"times": ("integer", 1, 20, "", "how many blinks", 3),
                  "period": ("number", 0.05, 2, "s", "one on/off cycle", 0.4)})
async def blink(times, period):
    for _ in range(times):
        led.value(1)
        await asyncio.sleep_ms(int(period * 500))
        led.value(0)
        await asyncio.sleep_ms(int(period * 500))
    return {"blinked": times}


app.run()
