"""Exact comparisons of symbolic sizes (sympy), memoised: the passes ask the same questions many times."""
from __future__ import annotations

import functools

import sympy


@functools.lru_cache(maxsize=65536)
def simplified(expr: sympy.Expr) -> sympy.Expr:
    """sympy.simplify(expr), once per distinct expression."""
    return sympy.simplify(expr)


def same(a: sympy.Expr, b: sympy.Expr) -> bool:
    """a == b for every value of the symbols: structural equality, an expanded difference of zero, or
    else sympy.simplify's verdict (the exact answer, memoised)."""
    if a == b:
        return True
    diff = sympy.expand(a - b)
    return diff == 0 or simplified(diff) == 0
