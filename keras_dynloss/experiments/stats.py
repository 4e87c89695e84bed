"""Statistics of a few seeds' (often bimodal) accuracies: `describe`, `mann_whitney`, `holm`."""

import dataclasses

import numpy as np

from keras_dynloss._checks import invalid

__all__ = ["Summary", "RankTest", "describe", "mann_whitney", "holm", "fmt_p"]


def _sample(name, values):
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise invalid(name, "a non-empty sequence of finite numbers", values)
    return x


@dataclasses.dataclass(frozen=True)
class Summary:
    """One cell of runs: n, mean, sample std (ddof 1; None for n = 1), median and quartiles
    (NumPy's linear interpolation, type 7), iqr = q3 - q1, min, max, and the runs strictly
    above `threshold` (`above`, `frac_above = above / n`)."""

    n: int
    mean: float
    std: float
    median: float
    q1: float
    q3: float
    iqr: float
    min: float
    max: float
    threshold: float
    above: int
    frac_above: float

    as_dict = dataclasses.asdict


def describe(values, *, threshold=0.9):
    """The `Summary` of one cell: `values` shape (n,), finite; `above` counts `> threshold`.

    Example:
        >>> s = describe([0.45, 0.5, 0.99])
        >>> s.median, s.above, s.frac_above
        (0.5, 1, 0.3333333333333333)
    """
    x = _sample("values", values)
    q1, median, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    above = int(np.sum(x > threshold))
    std = float(x.std(ddof=1)) if x.size > 1 else None
    return Summary(n=x.size, mean=float(x.mean()), std=std,
                   median=float(median), q1=float(q1), q3=float(q3), iqr=float(q3 - q1),
                   min=float(x.min()), max=float(x.max()), threshold=float(threshold),
                   above=above, frac_above=above / x.size)


@dataclasses.dataclass(frozen=True)
class RankTest:
    """A two-sided Mann–Whitney U test of `x` against `y`: `u = #{x_i > y_j} + ½ #{x_i = y_j}`,
    `pvalue`, `method` ("exact" without ties, else "asymptotic"), `n_x`, `n_y`, and
    `effect = u / (n_x n_y)`, the probability that a run of `x` beats one of `y` (0.5: no
    shift)."""

    u: float
    pvalue: float
    method: str
    n_x: int
    n_y: int
    effect: float

    as_dict = dataclasses.asdict


def mann_whitney(x, y):
    """Two-sided Mann–Whitney U (Wilcoxon rank-sum) test of `x` against `y` (`scipy.stats`).

    Without ties the p-value is exact; with ties (accuracies on 300 points often coincide) it
    is the normal approximation with tie-corrected variance and continuity correction,
    `z = (|U - n_x n_y / 2| - ½) / σ`, `σ² = n_x n_y / 12 · (n + 1 - Σ (t³ - t) / (n (n - 1)))`.
    When every value is the same, p = 1.

    Args:
        x, y: the two samples, shapes (n_x,) and (n_y,), finite.

    Returns:
        A `RankTest`.

    Example:
        >>> mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]).pvalue  # 2 of C(6, 3) orders
        0.1
    """
    x, y = _sample("x", x), _sample("y", y)
    try:
        from scipy import stats
    except ImportError as err:
        raise ImportError('The Mann–Whitney U test needs SciPy: pip install '
                          '"keras_dynloss[stats]" (or pip install scipy).') from err
    distinct = np.unique(np.concatenate([x, y])).size
    method = "asymptotic" if distinct < x.size + y.size else "exact"
    u, p = x.size * y.size / 2.0, 1.0
    if distinct > 1:
        u, p = stats.mannwhitneyu(x, y, alternative="two-sided", method=method)
    return RankTest(u=float(u), pvalue=min(float(p), 1.0), method=method, n_x=x.size,
                    n_y=y.size, effect=float(u) / (x.size * y.size))


def holm(pvalues):
    """Holm–Bonferroni adjusted p-values, in the input order.

    With the m p-values sorted, `p̃_(k) = max_{j <= k} min(1, (m - j + 1) p_(j))`; rejecting
    where `p̃ < α` controls the family-wise error rate at α.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.005])
        [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if p.size and not np.all((p >= 0) & (p <= 1)):
        raise invalid("pvalues", "numbers in [0, 1]", pvalues)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(p.size)
    scaled = np.minimum(1.0, (p.size - np.arange(p.size)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def fmt_p(p):
    """A p-value for tables: 3 significant digits, "< 1e-4" below, "—" for None."""
    return "—" if p is None else "< 1e-4" if p < 1e-4 else f"{p:.3g}"
