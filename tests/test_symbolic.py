"""passes.symbolic.same: exact equality of symbolic sizes, as fast as the passes need it."""
import sympy
from torch.utils._sympy.functions import FloorDiv, Mod

from dpcompile.passes import symbolic
from dpcompile.passes.symbolic import same

s, t = sympy.symbols("s0 s1", integer=True, positive=True)  # torch's size symbols carry these assumptions


def test_equal_sizes_through_floor_division_and_products():
    assert same(s, s) and same(2 * s * 3, 6 * s) and same(s * (t + 1), s * t + s)
    assert same(FloorDiv(4 * s, 2), 2 * s)
    assert same(FloorDiv(s + 2, 1), s + 2)
    assert same(sympy.Integer(12), 12)


def test_different_sizes_are_told_apart():
    assert not same(s, 64) and not same(s, t) and not same(2 * s, s + 2)  # equal at s = 2 only
    assert not same(FloorDiv(s + 1, 2) * 2, s + 1)  # equal for odd s only
    assert not same(Mod(s, 2), 0)
    assert not same(s * t, s * t + 1)


def test_the_probe_never_rejects_what_simplify_proves(monkeypatch):
    """A nonzero value at a probe point is only a shortcut: where sympy.simplify proves a difference zero, the
    probes see zero too (they are positive integers, as the symbols are)."""
    for a, b in [(FloorDiv(4 * s, 2), 2 * s), (sympy.Max(s, 1), s), (sympy.Min(s, 0), 0),
                 (FloorDiv(s * t * 6, 3 * t), 2 * s)]:
        diff = sympy.expand(a - b)
        assert sympy.simplify(diff) == 0 and not symbolic.differs_at_a_probe(diff)


def test_verdicts_are_memoised():
    symbolic.same.cache_clear()
    same(2 * s, s + 2)
    same(2 * s, s + 2)
    assert symbolic.same.cache_info().hits >= 1



def test_an_unevaluated_function_is_no_verdict():
    """A difference that stays a function of numbers at a probe point (sympy leaves it unevaluated: is_number but
    not is_Number) is not taken for a nonzero value; the verdict falls to sympy.simplify."""
    class Opaque(sympy.Function):  # never evaluates
        is_integer = True

    assert (Opaque(7) - 3).is_number and not (Opaque(7) - 3).is_Number
    assert not symbolic.differs_at_a_probe(Opaque(s) - 3)
    assert same(Opaque(s) + 1, 1 + Opaque(s)) and not same(Opaque(s), 3)
