"""NMEA-0183 sentences: checksum, GGA and RMC parsing, and building them (for the simulator).

Pure: no I/O. Source: NMEA 0183 v4.11 (sentence ``$<talker><type>,<fields>*<hh>``; the checksum
is the XOR of every character between ``$`` and ``*``, as two hex digits); field layouts as
documented by u-blox ("u-blox 8 / M8 Receiver Description", NMEA protocol section).
Latitude/longitude are ``ddmm.mmmm``/``dddmm.mmmm`` plus hemisphere; speed is in knots.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from edge_agent.errors import EdgeAgentError

KNOT = 1852 / 3600  # m/s


class NMEAError(EdgeAgentError, ValueError):
    """A line is not a valid NMEA sentence (framing, checksum, or field)."""


@dataclass(frozen=True)
class Sentence:
    """Any checksum-valid sentence: ``talker`` ("GP", "GN"...; "P" for proprietary ones like
    ``$PUBX``), ``type`` ("GSV", "UBX"...), ``fields``."""

    talker: str
    type: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class GGA:
    """Fix data. ``time`` UTC; ``lat``/``lon`` ° (None without a fix); ``quality`` 0 = no fix,
    1 = GPS, 2 = DGPS, 4/5 = RTK...; ``satellites`` in use; ``hdop``; ``altitude_m`` above mean
    sea level (m)."""

    talker: str
    time: dt.time | None
    lat: float | None
    lon: float | None
    quality: int
    satellites: int
    hdop: float | None
    altitude_m: float | None


@dataclass(frozen=True)
class RMC:
    """Recommended minimum data. ``valid``: status A (else V); ``time`` UTC datetime; ``lat``/``lon``
    °; ``speed_m_s`` over ground (m/s, from knots); ``course_deg`` true (°)."""

    talker: str
    time: dt.datetime | None
    valid: bool
    lat: float | None
    lon: float | None
    speed_m_s: float | None
    course_deg: float | None


def checksum(body: str) -> int:
    """XOR of the characters of ``body`` (the text between ``$`` and ``*``)."""
    value = 0
    for ch in body.encode("ascii"):
        value ^= ch
    return value


def sentence(body: str) -> str:
    """``"$" + body + "*hh"`` with the checksum (no line ending)."""
    return f"${body}*{checksum(body):02X}"


def split(line: str) -> Sentence:
    """Check framing and checksum of ``line`` and split it.

    Raises ``NMEAError`` when ``$`` or ``*hh`` is missing or the checksum does not match.
    """
    line = line.strip()
    if not line.startswith("$") or len(line) < 9 or line[-3] != "*":
        raise NMEAError(f"not an NMEA sentence: {line[:90]!r}")
    body, given = line[1:-3], line[-2:]
    try:
        expected = int(given, 16)
    except ValueError:
        raise NMEAError(f"bad checksum field {given!r} in {line[:90]!r}") from None
    if checksum(body) != expected:
        raise NMEAError(f"checksum mismatch in {line[:90]!r}: computed {checksum(body):02X}")
    head, *fields = body.split(",")
    if head.startswith("P") and head.isalnum():  # proprietary ($PUBX, $PMTK...): talker "P"
        return Sentence("P", head[1:], tuple(fields))
    if len(head) != 5 or not head.isalnum():
        raise NMEAError(f"bad address field {head!r}")
    return Sentence(head[:2], head[2:], tuple(fields))


def parse(line: str) -> GGA | RMC | Sentence:
    """Parse one sentence: :class:`GGA`, :class:`RMC`, or a generic :class:`Sentence` for other
    types. Raises ``NMEAError`` for bad framing, checksum or fields."""
    s = split(line)
    try:
        if s.type == "GGA":
            return _gga(s)
        if s.type == "RMC":
            return _rmc(s)
    except (IndexError, ValueError) as exc:
        raise NMEAError(f"bad {s.type} fields {','.join(s.fields)!r}: {exc}") from None
    return s


def _float(text: str) -> float | None:
    return float(text) if text else None


def _time(text: str) -> dt.time | None:
    if not text:
        return None
    seconds = float(text[4:])
    return dt.time(int(text[:2]), int(text[2:4]), int(seconds), round((seconds % 1) * 1e6) % 1000000)


def degrees(value: str, hemisphere: str) -> float | None:
    """``ddmm.mmmm`` (or ``dddmm.mmmm``) + ``N/S/E/W`` -> signed decimal degrees (None if empty)."""
    if not value:
        return None
    if hemisphere not in ("N", "S", "E", "W"):
        raise ValueError(f"hemisphere {hemisphere!r}")
    whole, minutes = divmod(float(value), 100)
    result = whole + minutes / 60
    return -result if hemisphere in ("S", "W") else result


def _gga(s: Sentence) -> GGA:
    f = s.fields
    return GGA(s.talker, _time(f[0]), degrees(f[1], f[2]), degrees(f[3], f[4]), int(f[5] or 0),
               int(f[6] or 0), _float(f[7]), _float(f[8]))


def _rmc(s: Sentence) -> RMC:
    f = s.fields
    when = None
    clock = _time(f[0])
    if clock is not None and f[8]:
        day, month, yy = int(f[8][:2]), int(f[8][2:4]), int(f[8][4:6])
        year = (1900 if yy >= 80 else 2000) + yy  # two-digit year; GPS time starts in 1980
        when = dt.datetime.combine(dt.date(year, month, day), clock, tzinfo=dt.timezone.utc)
    speed = _float(f[6])
    return RMC(s.talker, when, f[1] == "A", degrees(f[2], f[3]), degrees(f[4], f[5]),
               None if speed is None else speed * KNOT, _float(f[7]))


def _ddmm(value: float, lat: bool) -> tuple[str, str]:
    hemisphere = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    value = abs(value)
    whole = int(value)
    minutes = round((value - whole) * 60, 5)
    if minutes >= 60:
        whole, minutes = whole + 1, 0.0
    return f"{whole:0{2 if lat else 3}d}{minutes:08.5f}", hemisphere


def gga_sentence(when: dt.datetime, lat: float, lon: float, altitude_m: float, satellites: int = 8,
                 hdop: float = 0.9, quality: int = 1, talker: str = "GP") -> str:
    """A GGA sentence with checksum for a fix at ``lat``/``lon`` (°), ``altitude_m`` (m)."""
    la, ns = _ddmm(lat, True)
    lo, ew = _ddmm(lon, False)
    return sentence(f"{talker}GGA,{when:%H%M%S}.{when.microsecond // 10000:02d},{la},{ns},{lo},{ew},"
                    f"{quality},{satellites:02d},{hdop:.1f},{altitude_m:.1f},M,47.0,M,,")


def rmc_sentence(when: dt.datetime, lat: float, lon: float, speed_m_s: float, course_deg: float,
                 talker: str = "GP") -> str:
    """An RMC sentence (status A, mode A) with checksum; speed given in m/s, written in knots."""
    la, ns = _ddmm(lat, True)
    lo, ew = _ddmm(lon, False)
    return sentence(f"{talker}RMC,{when:%H%M%S}.{when.microsecond // 10000:02d},A,{la},{ns},{lo},{ew},"
                    f"{speed_m_s / KNOT:.2f},{course_deg:.1f},{when:%d%m%y},,,A")
