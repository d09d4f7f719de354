"""Token buckets for actuator rate limits: one per physical output (a driver's ``rate_limit``)
and one per client (``[limits]``), see :class:`RateLimits`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.errors import ToolInputError


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

    def peek(self) -> float:
        """What :meth:`take` would return, taking nothing: 0.0, or the seconds to wait."""
        now = self.clock()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


RETRY_AFTER_META = "dev.edge-agent/retryAfter"  # seconds, in the _meta of a refused call's result


class RateLimited(ToolInputError):
    """A call refused by a rate limit: the caller's doing (an ``isError`` result, never a driver
    fault). ``retry_after``: seconds until the call would be taken; ``result_meta``: what the
    result's ``_meta`` carries (``{"dev.edge-agent/retryAfter": s}``)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after
        self.result_meta = {RETRY_AFTER_META: round(retry_after, 3)}


class RateLimits:
    """The device's rate limits on actuator calls (issue 13 item 5):

    - one :class:`TokenBucket` per **physical output**, shared by every tool that moves it
      (a driver's ``rate_limit``: its ``on``, ``off``, ``set``, ``toggle``... all take from
      the same bucket, so switching through three tools is no faster than through one);
    - one bucket per **client** (``client_rate``/``client_burst``, keyed by the session's
      authenticated subject, else its mcp-client-id), so one client's burst cannot use up an
      output for everyone else. At most ``max_clients`` client buckets are kept (a bucket
      that refilled is dropped first: a new one is full anyway).

    :meth:`take` takes from the client's bucket and the output's together, or from neither.
    """

    def __init__(self, client_rate: float | None = None, client_burst: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic, max_clients: int = 4096):
        self.client_rate, self.client_burst = client_rate, max(1.0, client_burst)
        self.clock = clock
        self.max_clients = max_clients
        self.outputs: dict[str, TokenBucket] = {}
        self.clients: dict[str, TokenBucket] = {}
        self.refused = 0

    def output(self, key: str, rate: float, burst: float) -> TokenBucket:
        """The bucket of output ``key`` (made on first use; later calls share it)."""
        bucket = self.outputs.get(key)
        if bucket is None:
            bucket = self.outputs[key] = TokenBucket(rate, burst, clock=self.clock)
        return bucket

    def _client(self, client: str) -> TokenBucket | None:
        if self.client_rate is None:
            return None
        bucket = self.clients.get(client)
        if bucket is None:
            if len(self.clients) >= self.max_clients:
                self._forget()
            bucket = self.clients[client] = TokenBucket(self.client_rate, self.client_burst, clock=self.clock)
        return bucket

    def _forget(self) -> None:
        now = self.clock()
        for key, b in list(self.clients.items()):  # full again: dropping it loses nothing
            if b.tokens + (now - b.stamp) * b.rate >= b.burst:
                del self.clients[key]
        while len(self.clients) >= self.max_clients:  # else the oldest
            del self.clients[next(iter(self.clients))]

    def take(self, tool: str, client: str, output: str | None = None,
             limit: tuple[float, float] | None = None) -> None:
        """Take one token for ``client`` calling ``tool`` that moves ``output`` (limited by
        ``limit`` = ``(rate, burst)``; None: the output is not limited).

        Raises:
            RateLimited: either bucket is empty; nothing was taken; the message says which
                limit and when to retry.
        """
        out = self.output(output, *limit) if output is not None and limit is not None else None
        mine = self._client(client)
        waits = [(out.peek() if out else 0.0, "output"), (mine.peek() if mine else 0.0, "client")]
        wait, which = max(waits)
        if wait > 0:
            self.refused += 1
            if which == "output":
                assert limit is not None
                why = (f"rate limit of {output} ({limit[0]:g} change(s)/s, burst {limit[1]:g}, shared by all its "
                       "tools and clients)")
            else:
                why = f"this client's rate limit ({self.client_rate:g} actuator call(s)/s, burst {self.client_burst:g})"
            raise RateLimited(f"{tool} refused: {why} reached; the actuator did not move; retry in {wait:.1f} s", wait)
        for b in (out, mine):
            if b is not None:
                b.take()
