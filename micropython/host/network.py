# A test double of MicroPython's ``network`` module on an ESP32 (MicroPython 1.27:
# ports/esp32/modnetwork_globals.h, network_wlan.c), for the host harness only: the WebAssembly
# port has no radio. ``WLAN(STA_IF)`` behaves as the ESP32 station does: ``connect()`` starts an
# attempt, ``status()`` is ``STAT_CONNECTING`` until the access point answers, then
# ``STAT_GOT_IP`` or what ``status()`` makes of the disconnect reason the ESP-IDF reports
# (network_wlan.c ``network_wlan_status``): ``STAT_NO_AP_FOUND`` (201) at once, even while the
# station retries; a wrong key is reason 15 (4-way handshake timeout: what IDF 5 reports for a
# wrong WPA2 password), shown as ``STAT_CONNECTING`` while the station retries (forever by
# default) and as 15 once it gave up (``config(reconnects=n)``: after n + 1 attempts of
# ``delay_ms`` each). The access point is described by
# the test in the harness's world file (board.mjs ``--world``), read at every call:
# ``{"wlan": {"ssid": "...", "password": "...", "delay_ms": 200, "up": true}}``; no "wlan": no
# access point in range.
import time

import hostworld as hostio

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_CONNECT_FAIL = 203  # the same ESP-IDF reason (WIFI_REASON_ASSOC_FAIL)
STAT_HANDSHAKE_TIMEOUT = 204


station = None  # the station WLAN, once made (ntptime.py: no NTP while it is not connected)


class WLAN:
    def __init__(self, interface=STA_IF):
        global station
        if interface == STA_IF:
            station = self
        self._active = False
        self._try = None  # (ssid, key, ticks_ms of connect())
        self._reason = 0  # last disconnect reason; connect() does not clear it (as on the ESP32)
        self._reconnects = 0  # conf_wifi_sta_reconnects: 0 retries forever, else attempts in all

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)
        if not on:
            self._try = None

    def connect(self, ssid=None, key=None):
        if not self._active:
            raise OSError("Wifi Not Started")  # ESP_ERR_WIFI_NOT_STARTED
        self._try = (ssid, key, time.ticks_ms())
        hostio.count("wlan_connects")

    def disconnect(self):
        self._try = None
        self._reason = 8  # WIFI_REASON_ASSOC_LEAVE: status() is STAT_IDLE

    def _outcome(self):
        # (reason of the attempts so far or STAT_GOT_IP / STAT_CONNECTING, attempts failed)
        if self._try is None:
            return STAT_IDLE, 0
        ssid, key, t0 = self._try
        ap = hostio.world().get("wlan")
        if ap is None or not ap.get("up", True) or ap.get("ssid") != ssid:
            reason = STAT_NO_AP_FOUND
        elif ap.get("password") != key:
            reason = 15  # WIFI_REASON_4WAY_HANDSHAKE_TIMEOUT
        else:
            reason = 0
        failed = time.ticks_diff(time.ticks_ms(), t0) // (ap.get("delay_ms", 200) if ap else 200)
        if not failed:
            return STAT_CONNECTING, 0
        return reason or STAT_GOT_IP, failed

    def status(self, param=None):
        s, failed = self._outcome()
        if s == STAT_GOT_IP:
            self._reason = 0
            return s
        if s != STAT_CONNECTING and s != STAT_IDLE:
            self._reason = s
        r = self._reason
        if r in (STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD):
            return r  # reported from the disconnect event on, even while retrying
        if r == 8:
            return STAT_IDLE
        if self._try and (not self._reconnects or failed < self._reconnects):
            return STAT_CONNECTING  # the station still retries
        return r or STAT_IDLE  # given up: the raw reason

    def isconnected(self):
        return self._outcome()[0] == STAT_GOT_IP

    def ifconfig(self):
        return ("192.168.4.2", "255.255.255.0", "192.168.4.1", "192.168.4.1")

    def config(self, *args, **kwargs):
        if "reconnects" in kwargs:  # -1: forever (0 inside), else that many retries after the first
            n = kwargs["reconnects"]
            self._reconnects = 0 if n == -1 else n + 1
        return None
