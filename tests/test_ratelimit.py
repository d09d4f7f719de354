"""edge_agent.device.ratelimit.TokenBucket on a test clock: burst, refill, waits, bad limits."""

from __future__ import annotations

import math

import pytest

from edge_agent.device.ratelimit import TokenBucket


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_new_bucket_is_full_then_says_how_long_to_wait():
    clock = Clock()
    bucket = TokenBucket(2.0, 3, clock=clock)  # 2 calls/s, 3 saved up
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token takes 1/rate s
    assert bucket.take() == pytest.approx(0.5)  # refused calls take nothing
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)


def test_refill_never_exceeds_burst():
    clock = Clock()
    bucket = TokenBucket(10.0, 2, clock=clock)
    bucket.take()
    bucket.take()
    clock.now += 3600  # an hour idle saves up only `burst` tokens
    assert [bucket.take() for _ in range(2)] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(0.1)
    assert bucket.tokens >= 0


def test_sustained_rate_is_the_rate():
    clock = Clock()
    bucket = TokenBucket(4.0, 1, clock=clock)
    taken = 0
    for _ in range(1024):  # t = 0 .. 15.984 s in steps of 1/64 s (exact in binary: no drift)
        if bucket.take() == 0.0:
            taken += 1
        clock.now += 1 / 64
    assert taken == 64  # at t = 0, 0.25, 0.5 ... 15.75: 4/s


def test_fractional_rate_waits():
    clock = Clock()
    bucket = TokenBucket(0.1, 1, clock=clock)  # one call every 10 s
    assert bucket.take() == 0.0
    clock.now += 4
    assert bucket.take() == pytest.approx(6.0)


def test_the_default_clock_is_monotonic():
    bucket = TokenBucket(1.0, 1)
    assert bucket.take() == 0.0
    wait = bucket.take()
    assert 0.0 < wait <= 1.0


@pytest.mark.parametrize("rate, burst", [(0, 1), (-1, 1), (1, 0), (1, 0.5), (math.nan, 1), (1, math.nan)])
def test_bad_limits_are_refused(rate, burst):
    with pytest.raises(ValueError, match="rate must be > 0 and burst >= 1"):
        TokenBucket(rate, burst, clock=Clock())
