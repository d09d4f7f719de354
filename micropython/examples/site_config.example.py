# site_config.py: this board's secrets and site settings. Copy to the board as
# :site_config.py (never commit the real one). Keys override main.py's Device(...) options.
config = {
    "wifi_ssid": "greenhouse-iot",
    "wifi_password": "change-me",
    "broker": "192.168.1.10",  # the broker's host name or address
    "port": 1883,
    "username": "esp32-01",  # omit both without broker authentication
    "password": "change-me",
    # "server_name": "devices/greenhouse/esp32-02",  # per-board override of main.py
    # "serial": "usb",  # also serve MCP on the USB cable (newline-delimited JSON-RPC)
}
