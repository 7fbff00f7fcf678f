"""Confidence intervals for the accuracies the library reports.

An accuracy measured on ``n`` held-out sequences is a binomial proportion; with the few
hundred recordings of a small held-out split its uncertainty is a point or more, so every
accuracy on real recordings is reported with an interval. The interval is Clopper and
Pearson's (1934) "exact" one: the set of success probabilities ``p`` that a two-sided
binomial test at level ``1 - level`` would not reject, from the beta quantiles::

    lower = B^{-1}(alpha / 2; k, n - k + 1),    upper = B^{-1}(1 - alpha / 2; k + 1, n - k)

(``lower = 0`` when ``k = 0``, ``upper = 1`` when ``k = n``). Its coverage is at least
``level`` for every ``p``, at the price of being a little wide.
"""
from __future__ import annotations

import numbers

from scipy import stats

from .validation import check_positive_int, check_real

__all__ = ["binomial_interval"]


def binomial_interval(successes, trials, level=0.95):
    """The Clopper-Pearson confidence interval of a proportion ``successes / trials``.

    Parameters
    ----------
    successes : int
        Correct answers, ``0 <= successes <= trials``.
    trials : int
        Sequences evaluated (>= 1).
    level : float
        Confidence level in (0, 1).

    Returns
    -------
    (float, float)
        The interval's lower and upper ends, within [0, 1].
    """
    n = check_positive_int(trials, "trials")
    if isinstance(successes, bool) or not isinstance(successes, numbers.Integral):
        raise TypeError(f"successes must be an int, got {type(successes).__name__}")
    k = int(successes)
    if not 0 <= k <= n:
        raise ValueError(f"successes must be in 0..trials ({n}), got {k}")
    level = check_real(level, "level", low=0.0, low_open=True)
    if level >= 1.0:
        raise ValueError(f"level must be below 1, got {level!r}")
    alpha = 1.0 - level
    lower = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    upper = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lower, upper
