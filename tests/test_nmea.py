"""The pure NMEA-0183 parser: checksums, GGA, RMC, and the sentences the simulator builds."""

from __future__ import annotations

import datetime as dt

import pytest

from edge_agent.drivers import nmea

# The well-known examples (checksums as published).
GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"


def test_checksum():
    assert nmea.checksum(GGA[1:-3]) == 0x47
    assert nmea.sentence("GPRMC" + RMC[6:-3]) == RMC


def test_gga():
    s = nmea.parse(GGA + "\r\n")
    assert s == nmea.GGA("GP", dt.time(12, 35, 19), pytest.approx(48.1173), pytest.approx(11.516667),
                         1, 8, 0.9, 545.4)


def test_rmc():
    s = nmea.parse(RMC)
    assert isinstance(s, nmea.RMC) and s.valid
    assert s.time == dt.datetime(1994, 3, 23, 12, 35, 19, tzinfo=dt.timezone.utc)
    assert s.lat == pytest.approx(48.1173) and s.lon == pytest.approx(11.516667)
    assert s.speed_m_s == pytest.approx(22.4 * 1852 / 3600) and s.course_deg == 84.4


def test_southern_western_hemispheres_and_empty_fix():
    s = nmea.parse(nmea.sentence("GNGGA,000001.50,3351.6000,S,15112.6000,W,0,00,,,M,,M,,"))
    assert (s.talker, s.lat, s.lon, s.quality, s.hdop, s.altitude_m) == ("GN", -33.86, -151.21, 0, None, None)
    assert s.time == dt.time(0, 0, 1, 500000)
    no_fix = nmea.parse(nmea.sentence("GPRMC,,V,,,,,,,,,,N"))
    assert (no_fix.valid, no_fix.lat, no_fix.time, no_fix.speed_m_s) == (False, None, None, None)


@pytest.mark.parametrize("line", [
    GGA[:-2] + "48",                       # wrong checksum
    GGA.replace("545.4", "545.5"),         # corrupted field, old checksum
    GGA[:-3],                              # no checksum
    GGA[1:],                               # no $
    "$GPGGA*ZZ",                           # not hex
    "garbage",
])
def test_bad_sentences_raise(line):
    with pytest.raises(nmea.NMEAError):
        nmea.parse(line)


def test_bad_fields_raise_nmea_error():
    with pytest.raises(nmea.NMEAError, match="bad GGA fields"):
        nmea.parse(nmea.sentence("GPGGA,123519,4807.038,Q,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))


def test_other_sentences_are_generic():
    s = nmea.parse(nmea.sentence("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00"))
    assert s == nmea.Sentence("GP", "GSV", tuple("3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00".split(",")))


def test_proprietary_sentences_are_not_errors():
    s = nmea.parse(nmea.sentence("PUBX,00,081350.00,4717.113210,N"))
    assert (s.talker, s.type, s.fields[0]) == ("P", "UBX", "00")


def test_built_sentences_round_trip():
    when = dt.datetime(2024, 5, 1, 9, 30, 15, 250000, tzinfo=dt.timezone.utc)
    gga = nmea.parse(nmea.gga_sentence(when, 51.99012, -4.21365, 2.5, satellites=9, hdop=0.8))
    assert gga.lat == pytest.approx(51.99012, abs=1e-6) and gga.lon == pytest.approx(-4.21365, abs=1e-6)
    assert (gga.quality, gga.satellites, gga.hdop, gga.altitude_m) == (1, 9, 0.8, 2.5)
    rmc = nmea.parse(nmea.rmc_sentence(when, 51.99012, -4.21365, 1.0, 270.0))
    assert rmc.time == when and rmc.speed_m_s == pytest.approx(1.0, abs=0.01) and rmc.course_deg == 270.0
