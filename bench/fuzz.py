"""Long fuzz run: the properties of ``tests/test_fuzz_*.py`` (issue 7, part 5) on many inputs.

    python bench/fuzz.py [--examples N | --per-property N] [--target TEXT ...] [--seed S]
                         [--budget SECONDS] [--allow-known] [--skip-known] [--no-shrink]

``make test`` runs every property on 3-400 deterministic inputs; this runs the very same
checks on ``--examples`` random inputs in all (default 100000), shared equally by the
properties that are not known bugs (a known-bug property stops at its first failure, at most
1000 inputs), or on ``--per-property`` inputs each; in chunks of at most 5000 with successive
seeds (``--seed``, default random, printed). It prints a markdown table:

    target | property | examples | time (s) | inputs/s | failures | status

``failures`` is 1 when the property was falsified (Hypothesis stops at the first failure and
shrinks it to a minimal input, printed below the table). ``status``: ``ok``, ``FAIL``,
``known bug Kn`` (a property marked ``known_bug`` in the tests, still failing) or ``FIXED?``
(a known bug that did not show: check, then drop its ``known_bug``); ``FAIL: known bug Kn
found again`` when a general property ran into a known bug by itself. ``--budget`` caps the
seconds spent per property (the examples column then says how many ran).

Exit status: 0 when nothing failed; 1 when any property failed, known bugs included (with
``--allow-known`` only failures that are not known bugs count; ``--skip-known`` does not
run the known-bug properties at all).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis.reporting import with_reporter  # noqa: E402

from tests.test_fuzz_common import Property, run_long  # noqa: E402

MODULES = ["tests.test_fuzz_protocol", "tests.test_fuzz_transport", "tests.test_fuzz_config",
           "tests.test_fuzz_micropython"]
CHUNK = 5000


def properties() -> list[Property]:
    import importlib

    out: list[Property] = []
    for name in MODULES:
        out += importlib.import_module(name).PROPERTIES
    return out


def describe(exc: BaseException) -> str:
    """The failure and Hypothesis' minimal example (its notes), trimmed."""
    lines = [f"{type(exc).__name__}: {str(exc).strip()}"]
    lines += [str(n) for n in getattr(exc, "__notes__", [])]
    if not isinstance(exc, AssertionError):
        tb = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in tb if "/edge_agent/" in f.filename or "/micropython/" in f.filename]
        if ours:
            f = ours[-1]
            lines.append(f"raised at {os.path.relpath(f.filename, ROOT)}:{f.lineno} ({f.name}): {f.line}")
    text = "\n".join(lines)
    return text if len(text) < 2500 else text[:2500] + " ..."


def known_tag(exc: BaseException) -> str | None:
    """``K2`` when a general property's failure message says it is known bug K2 (the checks
    tag the failures they recognise), else None."""
    head = str(exc).strip()[:8]
    if head.startswith("K") and ":" in head and head[1:head.index(":")].isdigit():
        return head[:head.index(":")]
    return None


def run_one(prop: Property, examples: int, seed: int, budget: float | None,
            shrink: bool) -> tuple[int, float, BaseException | None]:
    done, failure, start, k = 0, None, time.perf_counter(), 0
    while done < examples and failure is None:
        if budget is not None and time.perf_counter() - start > budget:
            break
        n = min(CHUNK, examples - done)
        with with_reporter(lambda _msg: None):
            count, failure = run_long(prop, n, seed=seed + k, shrink=shrink and not prop.known_bug)
        k += 1
        done += count
        if count < n and failure is None:
            break  # Hypothesis exhausted the strategy: more chunks would repeat it
    return done, time.perf_counter() - start, failure


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100_000,
                    help="inputs in all, shared by the properties (default 100000)")
    ap.add_argument("--per-property", type=int, default=None, help="inputs per property (instead of --examples)")
    ap.add_argument("--target", action="append", default=[], help="only properties whose target or name contains TEXT")
    ap.add_argument("--seed", type=int, default=None, help="first seed (default: random, printed)")
    ap.add_argument("--budget", type=float, default=None, help="at most this many seconds per property")
    ap.add_argument("--allow-known", action="store_true", help="known bugs do not make the exit status 1")
    ap.add_argument("--skip-known", action="store_true", help="do not run the known-bug properties")
    ap.add_argument("--no-shrink", action="store_true", help="report failures unshrunk (faster)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    logging.basicConfig(handlers=[logging.NullHandler()], force=True)  # the agent logs bad input on purpose

    props = [p for p in properties()
             if (not args.target or any(t.lower() in p.id.lower() for t in args.target))
             and not (args.skip_known and p.known_bug)]
    if not props:
        print("bench/fuzz.py: no property matches", file=sys.stderr)
        return 2
    general = [p for p in props if not p.known_bug]
    each = args.per_property or max(1, args.examples // max(1, len(general)))
    print(f"# fuzz: {len(props)} properties ({len(props) - len(general)} known bugs), up to {each} inputs each, "
          f"seed {seed}"
          + (f", budget {args.budget:g} s each" if args.budget else "") + "\n")
    rows, failures = [], []
    total_n, total_t = 0, 0.0
    for i, prop in enumerate(props, 1):
        print(f"[{i}/{len(props)}] {prop.id} ...", file=sys.stderr, flush=True)
        n, t, failure = run_one(prop, min(each, 1000) if prop.known_bug else each, seed, args.budget,
                                not args.no_shrink)
        total_n, total_t = total_n + n, total_t + t
        if failure is None:
            status = "FIXED?" if prop.known_bug else "ok"
        else:
            tag = known_tag(failure)
            status = (f"known bug {prop.known_bug.split()[0]}" if prop.known_bug
                      else f"FAIL: known bug {tag} found again" if tag else "FAIL")
            failures.append((prop, failure, bool(prop.known_bug or tag)))
        rows.append((prop.target, prop.name, n, t, n / t if t else 0.0, 0 if failure is None else 1, status))

    print("| target | property | examples | time (s) | inputs/s | failures | status |")
    print("|---|---|---:|---:|---:|---:|---|")
    for target, name, n, t, rate, nf, status in rows:
        print(f"| {target} | {name} | {n} | {t:.1f} | {rate:.0f} | {nf} | {status} |")
    print(f"| **all** | {len(rows)} properties | {total_n} | {total_t:.1f} | {total_n / total_t if total_t else 0:.0f} "
          f"| {len(failures)} | |")
    for prop, failure, _ in failures:
        print(f"\n## {prop.id}" + (f" (known bug: {prop.known_bug})" if prop.known_bug else ""))
        print("```\n" + describe(failure) + "\n```")
    fixed = [r for r in rows if r[6] == "FIXED?"]
    if fixed:
        print("\nKnown bugs that did not show (fixed? then drop known_bug in the test): "
              + "; ".join(f"{r[0]}: {r[1]}" for r in fixed))
    counted = [p for p, _, known in failures if not (args.allow_known and known)]
    return 1 if counted else 0


if __name__ == "__main__":
    sys.exit(main())
