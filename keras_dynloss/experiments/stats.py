"""Statistics for small sets of runs (seeds): describe a cell, compare two cells.

Final accuracies over a handful of seeds are often bimodal (most seeds stall, a few escape),
so a mean ± std alone misleads. `describe` gives the whole cell (n, mean ± std, median,
quartiles, the number above a threshold); `mann_whitney` compares two cells by ranks, with no
normality assumption; `holm` adjusts a family of p-values. The rank test needs SciPy
(`pip install "keras_dynloss[stats]"`), imported when a test runs.
"""

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
    """One cell of runs: n, mean, sample std (ddof 1; None for n = 1), median, quartiles q1
    and q3 (NumPy's default linear interpolation, Hyndman & Fan type 7), iqr = q3 - q1, min,
    max, and the runs strictly `above` `threshold` (`frac_above = above / n`)."""

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

    def as_dict(self):
        return dataclasses.asdict(self)


def describe(values, *, threshold=0.9):
    """n, mean ± std, median, quartiles and the runs above `threshold` of one cell.

    Args:
        values: the runs' results, shape (n,), finite.
        threshold: `above` counts the values `> threshold`.

    Returns:
        A `Summary`.

    Example:
        >>> s = describe([0.45, 0.5, 0.99])
        >>> s.median, s.above, s.frac_above
        (0.5, 1, 0.3333333333333333)
    """
    x = _sample("values", values)
    q1, median, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    above = int(np.sum(x > threshold))
    return Summary(n=int(x.size), mean=float(x.mean()),
                   std=float(x.std(ddof=1)) if x.size > 1 else None,
                   median=float(median), q1=float(q1), q3=float(q3), iqr=float(q3 - q1),
                   min=float(x.min()), max=float(x.max()), threshold=float(threshold),
                   above=above, frac_above=above / x.size)


@dataclasses.dataclass(frozen=True)
class RankTest:
    """A two-sided Mann–Whitney U test of `x` against `y`.

    Attributes:
        u: U of `x`, `#{(i, j): x_i > y_j} + ½ #{x_i = y_j}`, in [0, n_x n_y].
        pvalue: two-sided p-value.
        method: "exact" (no ties) or "asymptotic" (ties: normal approximation with the
            tie-corrected variance and a continuity correction).
        n_x, n_y: sample sizes.
        effect: `U / (n_x n_y)`, the probability that a run of `x` beats one of `y`
            (ties count ½); 0.5 is no shift.
    """

    u: float
    pvalue: float
    method: str
    n_x: int
    n_y: int
    effect: float

    def as_dict(self):
        return dataclasses.asdict(self)


def mann_whitney(x, y):
    """Two-sided Mann–Whitney U (Wilcoxon rank-sum) test of `x` against `y`.

    Null hypothesis: a run of `x` is as likely to beat a run of `y` as to lose to it. Without
    ties the p-value is exact; with ties (accuracies on 300 points often coincide) it is the
    normal approximation `z = (|U - n_x n_y / 2| - ½) / σ` with
    `σ² = n_x n_y / 12 · (n + 1 - Σ_k (t_k³ - t_k) / (n (n - 1)))` (`t_k`: sizes of the
    groups of tied values, `n = n_x + n_y`). When every value is the same, p = 1.

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
    if distinct == 1:
        u, p = x.size * y.size / 2.0, 1.0
    else:
        res = stats.mannwhitneyu(x, y, alternative="two-sided", method=method,
                                 use_continuity=True)
        u, p = float(res.statistic), float(res.pvalue)
    return RankTest(u=u, pvalue=min(p, 1.0), method=method, n_x=int(x.size), n_y=int(y.size),
                    effect=u / (x.size * y.size))


def holm(pvalues):
    """Holm–Bonferroni adjusted p-values of a family of tests.

    With the p-values sorted, `p_(1) <= ... <= p_(m)`:
    `p̃_(k) = max_{j <= k} min(1, (m - j + 1) p_(j))`, returned in the input order. Rejecting
    where `p̃ < α` controls the family-wise error rate at α.

    Args:
        pvalues: shape (m,), in [0, 1].

    Returns:
        A list of m adjusted p-values.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.005])
        [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise invalid("pvalues", "numbers in [0, 1]", pvalues)
    adjusted = np.empty(p.size)
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return [float(v) for v in adjusted]


def fmt_p(p):
    """A p-value for tables: 3 significant digits, "< 1e-4" below, "—" for None."""
    if p is None:
        return "—"
    return "< 1e-4" if p < 1e-4 else f"{p:.3g}"
