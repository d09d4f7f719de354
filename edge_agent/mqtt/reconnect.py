"""When to reconnect, and when a lost link means another agent has our server-id.

One counter, ``streak``: losses in a row since the link was last stable. A loss is a failed
connection attempt or a connection that ended before it had stayed up ``stable_after``
seconds. The delay before the next attempt is tenacity's full jitter
(``wait_random_exponential(multiplier=reconnect_min, max=reconnect_max)``) at attempt number
``streak``: uniform in ``[0, min(reconnect_max, reconnect_min * 2**(streak-1))]``. A connection
that stayed up ``stable_after`` or longer resets the streak, so its loss is retried at once.

Two agents with one MQTT client id take each other's session over at the broker (MQTT 5
§3.1.4-3): each connect closes the other's connection. Without this policy each reconnect
succeeds, restarts the backoff at attempt 1, and the two reconnect hundreds of times a second.
With it, their connections never become stable, so the delay grows to ``reconnect_max`` and
stays there: in steady state each connects about ``60 / reconnect_max`` times a minute.

The broker says so with a DISCONNECT of reason 0x8E "Session taken over" (EMQX, HiveMQ,
Mosquitto ≥ 2.0.15). Older brokers, among them Mosquitto 2.0.11 of Debian 12 / Raspberry Pi OS
Bookworm, close the old connection without a word; then ``suspect_after`` early losses in a row,
each a connection the broker accepted at the first attempt and closed without a DISCONNECT
packet, are reported as a suspected duplicate.

Pure and single-threaded (the adapter's ``Connection`` owns it, on the event loop); times are monotonic seconds.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, cast

TAKEN_OVER = 0x8E  # MQTT 5 reason code "Session taken over" (§3.14.2.1)
STABLE_AFTER_MIN = 60.0  # s; see ReconnectPolicy


@dataclass(frozen=True)
class Loss:
    """How the policy judged the end of one connection.

    ``delay``: seconds to wait before the next attempt (0 = at once). ``early``: it ended before
    ``stable_after``. ``takeover``: ``"reported"`` (DISCONNECT 0x8E), ``"suspected"`` (the
    pattern of an old broker closing a taken-over connection) or None. ``first_takeover``: the
    first loss with a takeover verdict in this policy's life (log it once, loudly).
    ``uptime``: seconds the connection was up.
    """

    delay: float
    early: bool
    takeover: str | None
    first_takeover: bool
    uptime: float


class ReconnectPolicy:
    """Backoff across connection attempts *and* short-lived connections.

    ``reconnect_min`` / ``reconnect_max``: seconds (> 0; min ≤ max), as in ``[link]``.
    ``stable_after``: seconds a connection must last to reset the streak; default
    ``max(60, 2 * reconnect_max)`` — longer than any wait of the other agent in a takeover fight,
    so such a fight never resets it. ``suspect_after``: silent early closes in a row (≥ 2)
    before a duplicate server-id is suspected.

    Raises:
        ValueError: a bound out of range.
    """

    def __init__(self, reconnect_min: float, reconnect_max: float, *, stable_after: float | None = None,
                 suspect_after: int = 3):
        if not (reconnect_min > 0 and reconnect_max >= reconnect_min):
            raise ValueError(f"need 0 < reconnect_min <= reconnect_max, got {reconnect_min!r}, {reconnect_max!r}")
        if suspect_after < 2:
            raise ValueError(f"suspect_after must be >= 2, got {suspect_after!r}")
        self.reconnect_min, self.reconnect_max = float(reconnect_min), float(reconnect_max)
        self.stable_after = float(stable_after) if stable_after is not None else max(STABLE_AFTER_MIN,
                                                                                     2 * self.reconnect_max)
        self.suspect_after = suspect_after
        self.streak = 0
        self.takeovers_seen = 0
        self._wait: Any = None  # tenacity's full jitter, made (and tenacity imported) at the first wait
        self._silent_closes = 0  # early closes in a row by the broker, each after a first-try connect
        self._attempts = 0  # failed connection attempts since the last successful one
        self._first_try = False  # the current connection succeeded at its first attempt
        self._connected_at: float | None = None

    def delay(self) -> float:
        """Seconds to wait now: 0 when the streak is 0, else full jitter at attempt ``streak``."""
        if self.streak <= 0:
            return 0.0
        if self._wait is None:  # a device whose link never fails never loads tenacity (0.8 MB)
            import tenacity

            self._wait = tenacity.wait_random_exponential(multiplier=self.reconnect_min, max=self.reconnect_max)
        return self._wait(cast(Any, types.SimpleNamespace(attempt_number=self.streak)))

    def attempt_failed(self) -> None:
        """A connection attempt failed (refused, unreachable, no CONNACK)."""
        self.streak += 1
        self._attempts += 1
        self._silent_closes = 0

    def connected(self, now: float) -> None:
        """A connection attempt succeeded (CONNACK 0) at monotonic time ``now``."""
        self._first_try = self._attempts == 0
        self._attempts = 0
        self._connected_at = now

    def lost(self, now: float, *, reason_code: int | None, from_broker: bool, self_inflicted: bool = False) -> Loss:
        """The connection made at :meth:`connected` ended at ``now``.

        ``reason_code``: the DISCONNECT reason the broker sent (e.g. 0x8E), or None.
        ``from_broker``: the broker sent a DISCONNECT packet. ``self_inflicted``: we dropped the
        socket ourselves (half-open link detection). Returns the verdict and the delay.
        """
        uptime = now - self._connected_at if self._connected_at is not None else 0.0
        self._connected_at = None
        early = uptime < self.stable_after
        verdict = None
        if from_broker and reason_code == TAKEN_OVER:
            verdict = "reported"
        if early or verdict is not None:  # a takeover is never a reason to reconnect at once
            self.streak += 1
            silent = early and not from_broker and not self_inflicted and self._first_try
            self._silent_closes = self._silent_closes + 1 if silent else 0
            if verdict is None and self._silent_closes >= self.suspect_after:
                verdict = "suspected"
        else:
            self.streak = 0
            self._silent_closes = 0
        if verdict is not None:
            self.takeovers_seen += 1
        return Loss(delay=self.delay(), early=early, takeover=verdict,
                    first_takeover=verdict is not None and self.takeovers_seen == 1, uptime=uptime)
