"""Shared machinery of the fuzz tests (issue 7, part 5): properties that CI runs briefly and
``bench/fuzz.py`` runs long.

A :class:`Property` is a strategy plus a check that raises ``AssertionError`` (or anything
else) when the code under test misbehaves. :func:`ci_test` turns it into a bounded,
deterministic pytest test (``derandomize``, no example database, no deadline) so ``make
test`` is stable; the bench wraps the very same ``check`` with many more examples.

A property with ``known_bug`` documents a real defect found by fuzzing: in CI it is a strict
``xfail`` (it flips to a failure once the code is fixed, so the marker gets removed), and the
bench reports it as a failure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException

HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
          HealthCheck.large_base_example]


@dataclass
class Property:
    """``target``: the code under test (a row of the bench table); ``name``: what is claimed;
    ``check(value)``: raises when the claim is false for ``value`` drawn from ``strategy``."""

    target: str
    name: str
    strategy: st.SearchStrategy
    check: Callable[[Any], None]
    ci_examples: int = 150
    known_bug: str | None = None

    @property
    def id(self) -> str:
        return f"{self.target}: {self.name}"


def ci_test(prop: Property) -> Callable[[], None]:
    """A pytest test running ``prop`` on ``prop.ci_examples`` deterministic examples."""

    # No shrinking for a known bug (its minimal input is in the report already) and no
    # "explain" phase (it writes patch files under .hypothesis/).
    phases = [Phase.explicit, Phase.generate] + ([] if prop.known_bug else [Phase.shrink])

    @settings(max_examples=prop.ci_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=HEALTH, print_blob=False, phases=phases)
    @given(prop.strategy)
    def test(value):
        prop.check(value)

    test.__doc__ = prop.id
    if not prop.known_bug:
        return test
    inner = test

    def known_bug_test():
        # A strict xfail by hand: the outer function is no Hypothesis test, so a failure does
        # not make the pytest plugin write a patch file under .hypothesis/patches.
        why = None
        try:
            inner()
        except Exception as exc:  # noqa: BLE001
            why = f"known bug {prop.known_bug} ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]})"
        if why is not None:  # outside the except: pytest would format the (deep) traceback
            pytest.xfail(why)
        pytest.fail(f"{prop.id}: known bug {prop.known_bug!r} no longer shows in {prop.ci_examples} examples; "
                    "if it is fixed, drop known_bug from the property")

    known_bug_test.__doc__ = prop.id
    return known_bug_test


def run_long(prop: Property, examples: int, *, seed: int | None = None,
             shrink: bool = True) -> tuple[int, BaseException | None]:
    """Run ``prop`` on up to ``examples`` random inputs (the bench). Returns (inputs tried,
    the failure or None)."""
    count = 0

    def check(value):
        nonlocal count
        count += 1
        prop.check(value)

    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    test = settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), phases=phases, print_blob=False,
                    report_multiple_bugs=False)(given(prop.strategy)(check))
    if seed is not None:
        from hypothesis import seed as with_seed

        test = with_seed(seed)(test)
    try:
        test()
    except HypothesisException as exc:  # e.g. Unsatisfiable: a harness problem, not a finding
        return count, exc
    except BaseException as exc:  # noqa: BLE001 - any failure is a finding
        if isinstance(exc, KeyboardInterrupt):
            raise
        return count, exc
    return count, None


# --------------------------------------------------------------------------- strategies
# JSON as Python's json module produces it (no NaN here; properties that want NaN or lone
# surrogates ask for them explicitly).
json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
                | st.floats(allow_nan=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def strict_json(value: Any) -> str:
    """``value`` as RFC 8259 JSON; raises ValueError for NaN/Infinity, UnicodeEncodeError for
    lone surrogates (what any other JSON parser on the wire would choke on)."""
    text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")
    return text


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------------------- self-test
# Every property must be able to fail: the harness itself must report a broken one.

def _always_fails(value: int) -> None:
    assert value < 1000, "a deliberately false claim"


def test_harness_reports_a_failing_property():
    prop = Property("harness", "integers stay below 1000", st.integers(), _always_fails)
    count, failure = run_long(prop, 200, seed=1)
    assert isinstance(failure, AssertionError) and count >= 1


def test_harness_ci_test_fails_for_a_false_property():
    prop = Property("harness", "integers stay below 1000", st.integers(), _always_fails, ci_examples=50)
    with pytest.raises(AssertionError):
        ci_test(prop)()
