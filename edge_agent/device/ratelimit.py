"""Token buckets for actuator rate limits (per tool, from the config's ``rate_limit``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; one call takes one token.

    ``take()`` returns 0.0 when a token was taken, else the seconds until one is available (and
    takes nothing). A new bucket is full. ``clock``: monotonic seconds (tests pass their own).

    Raises:
        ValueError: ``rate`` <= 0 or ``burst`` < 1.
    """

    rate: float
    burst: float
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.rate > 0 or not self.burst >= 1:  # NaN fails both
            raise ValueError("rate must be > 0 and burst >= 1")
        self.tokens = float(self.burst)
        self.stamp = self.clock()

    def take(self) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
