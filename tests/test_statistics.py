"""Confidence intervals of accuracies: the Clopper-Pearson interval's closed forms at the
ends, its symmetry and its guaranteed coverage, computed exactly from the binomial law."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plstm_np.statistics import binomial_interval


@pytest.mark.parametrize("n", [1, 10, 101])
def test_the_ends_have_closed_forms(n):
    """k = 0: the upper end solves (1 - p)^n = alpha / 2; k = n: the lower one p^n = alpha / 2."""
    lo, hi = binomial_interval(0, n)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-10)
    lo, hi = binomial_interval(n, n)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / n), rel=1e-10)


def _binomial_cdf(k, n, p):
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k + 1))


@given(st.integers(1, 60), st.data())
@settings(max_examples=60, deadline=None)
def test_each_end_is_where_the_one_sided_tail_is_alpha_over_two(n, data):
    """The definition, checked with the binomial law summed by hand: at the lower end
    P(X >= k) = alpha / 2, at the upper end P(X <= k) = alpha / 2."""
    k = data.draw(st.integers(0, n))
    lo, hi = binomial_interval(k, n, level=0.9)
    if k > 0:
        assert 1 - _binomial_cdf(k - 1, n, lo) == pytest.approx(0.05, abs=1e-9)
    if k < n:
        assert _binomial_cdf(k, n, hi) == pytest.approx(0.05, abs=1e-9)
    assert 0 <= lo <= k / n <= hi <= 1


@pytest.mark.parametrize("n", [20, 100])
def test_the_coverage_is_at_least_the_level_for_every_p(n):
    p_grid = np.linspace(0.005, 0.995, 199)
    ends = [binomial_interval(k, n) for k in range(n + 1)]
    for p in p_grid:
        coverage = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k)
                       for k, (lo, hi) in enumerate(ends) if lo <= p <= hi)
        assert coverage >= 0.95 - 1e-12, p


def test_the_interval_is_symmetric_under_swapping_right_and_wrong():
    for k in range(0, 31):
        lo, hi = binomial_interval(k, 30)
        lo2, hi2 = binomial_interval(30 - k, 30)
        assert lo == pytest.approx(1 - hi2, abs=1e-12) and hi == pytest.approx(1 - lo2, abs=1e-12)


@pytest.mark.parametrize("args, error, match", [
    ((3, 0), ValueError, "trials must be a positive int"),
    ((4, 3), ValueError, r"successes must be in 0..trials \(3\)"),
    ((-1, 3), ValueError, "successes must be in"),
    ((1.5, 3), TypeError, "successes must be an int"),
    ((1, 3, 1.0), ValueError, "level must be below 1"),
    ((1, 3, 0.0), ValueError, "level must be a finite number > 0"),
])
def test_bad_arguments_are_refused_by_name(args, error, match):
    with pytest.raises(error, match=match):
        binomial_interval(*args)
