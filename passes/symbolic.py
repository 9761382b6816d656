"""Exact comparisons of symbolic sizes (sympy), memoised: the passes ask the same questions many times."""
from __future__ import annotations

import functools

import sympy

# Points at which a difference of sizes is evaluated before sympy.simplify is asked: sizes are positive
# integers (torch's size symbols carry integer=True, positive=True), and a nonzero value at one such point
# proves the two sizes different. Distinct primes ≥ 7, so that no small coincidence (2·s = s + 2) hides one.
PROBES = (7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


@functools.lru_cache(maxsize=65536)
def simplified(expr: sympy.Expr) -> sympy.Expr:
    """sympy.simplify(expr), once per distinct expression."""
    return sympy.simplify(expr)


@functools.lru_cache(maxsize=65536)
def same(a: sympy.Expr, b: sympy.Expr) -> bool:
    """a == b for every value of the symbols: structural equality or an expanded difference of zero (equal);
    a nonzero number as the difference, or a nonzero value at a probe point (different); else
    sympy.simplify's verdict (the exact answer)."""
    a, b = sympy.sympify(a), sympy.sympify(b)
    if a == b:
        return True
    diff = sympy.expand(a - b)
    if diff == 0:
        return True
    if diff.is_Number:
        return False
    if differs_at_a_probe(diff):
        return False
    return simplified(diff) == 0


def differs_at_a_probe(diff: sympy.Expr) -> bool:
    """Whether diff evaluates to a nonzero number with its symbols set to positive integers (two points). Only an
    evaluated number counts (is_Number): a function left unevaluated at the point says nothing."""
    symbols = sorted(diff.free_symbols, key=str)
    for shift in (0, 1):
        value = diff.subs({s: PROBES[(i + shift) % len(PROBES)] for i, s in enumerate(symbols)})
        if value.is_Number and value != 0:
            return True
    return False
