"""Distribution-aware statistics for small sets of runs (seeds).

Final accuracies over a handful of seeds are often bimodal (most seeds stall, a
few escape), so a mean ± std alone misleads. :func:`describe` gives the whole
picture of one cell (n, mean ± std, median, quartiles, fraction above a
threshold); :func:`mann_whitney` compares two cells with a rank test that makes
no normality assumption; :func:`holm` adjusts a family of p-values for multiple
comparisons.

The rank test needs SciPy, an optional dependency (``pip install
"keras_dynloss[stats]"``), imported only when a test is run.
"""

import dataclasses
import math

import numpy as np

from keras_dynloss._checks import invalid

__all__ = ["Summary", "RankTest", "describe", "mann_whitney", "holm"]

STATS_EXTRA = 'pip install "keras_dynloss[stats]"'


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The Mann-Whitney U test needs SciPy, an optional dependency of keras_dynloss: "
            f"`{STATS_EXTRA}` (or `pip install scipy`)."
        ) from err
    return stats


def _sample(name, values):
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise invalid(name, "a non-empty sequence of finite numbers", values)
    return x


@dataclasses.dataclass(frozen=True)
class Summary:
    """Description of one cell of runs.

    Attributes:
        n: number of runs.
        mean: arithmetic mean.
        std: sample standard deviation (ddof = 1); None for n = 1.
        median: the median.
        q1, q3: first and third quartiles (linear interpolation between order
            statistics, NumPy's default, Hyndman & Fan type 7).
        iqr: ``q3 - q1``.
        min, max: extremes.
        threshold: the threshold of ``above``.
        above: number of runs strictly above ``threshold``.
        frac_above: ``above / n``.
    """

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
    """n, mean ± std (ddof = 1), median, quartiles and the fraction above ``threshold``.

    Args:
        values: the runs' results, shape (n,), finite.
        threshold: ``above`` counts values ``> threshold``.

    Returns:
        A :class:`Summary`.

    Example:
        >>> s = describe([0.45, 0.5, 0.99])
        >>> s.median, s.above, s.frac_above
        (0.5, 1, 0.3333333333333333)
    """
    x = _sample("values", values)
    q1, med, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    above = int(np.sum(x > threshold))
    return Summary(
        n=int(x.size), mean=float(x.mean()),
        std=float(x.std(ddof=1)) if x.size > 1 else None,
        median=float(med), q1=float(q1), q3=float(q3), iqr=float(q3 - q1),
        min=float(x.min()), max=float(x.max()), threshold=float(threshold),
        above=above, frac_above=above / x.size)


@dataclasses.dataclass(frozen=True)
class RankTest:
    """Result of a two-sided Mann–Whitney U test of ``x`` against ``y``.

    Attributes:
        u: U statistic of ``x``, ``#{(i, j): x_i > y_j} + ½ #{x_i = y_j}``
            (0 ≤ U ≤ n_x n_y).
        pvalue: two-sided p-value.
        method: ``"exact"`` (no ties: exact null distribution of U) or
            ``"asymptotic"`` (ties: normal approximation with tie-corrected
            variance and continuity correction).
        n_x, n_y: sample sizes.
        effect: ``U / (n_x n_y)``, the probability that a run of ``x`` beats one
            of ``y`` (ties count ½); 0.5 = no shift.
    """

    u: float
    pvalue: float
    method: str
    n_x: int
    n_y: int
    effect: float

    def significant(self, alpha=0.05):
        """Whether ``pvalue < alpha`` (no multiple-comparison adjustment)."""
        return self.pvalue < alpha

    def as_dict(self):
        return dataclasses.asdict(self)


def mann_whitney(x, y):
    """Two-sided Mann–Whitney U (Wilcoxon rank-sum) test of ``x`` against ``y``.

    Null hypothesis: a run of ``x`` is as likely to beat a run of ``y`` as to lose
    to it. Without ties the p-value is exact; with ties (accuracies on 300 points
    often coincide) it is the normal approximation
    ``z = (|U - n_x n_y / 2| - ½) / σ``,
    ``σ² = n_x n_y / 12 · (n + 1 - Σ_k (t_k³ - t_k) / (n (n - 1)))``
    (``t_k``: sizes of the groups of tied values, ``n = n_x + n_y``). When every
    value is the same the p-value is 1.

    Args:
        x, y: the two samples, shapes (n_x,) and (n_y,), finite.

    Returns:
        A :class:`RankTest`.

    Raises:
        ImportError: SciPy is not installed (``pip install "keras_dynloss[stats]"``).
    """
    x, y = _sample("x", x), _sample("y", y)
    stats = _scipy_stats()
    both = np.concatenate([x, y])
    ties = np.unique(both).size < both.size
    method = "asymptotic" if ties else "exact"
    if np.unique(both).size == 1:
        u, p = x.size * y.size / 2.0, 1.0
    else:
        res = stats.mannwhitneyu(x, y, alternative="two-sided", method=method,
                                 use_continuity=True)
        u, p = float(res.statistic), float(res.pvalue)
    return RankTest(u=u, pvalue=min(p, 1.0), method=method, n_x=int(x.size),
                    n_y=int(y.size), effect=u / (x.size * y.size))


def holm(pvalues):
    """Holm–Bonferroni adjusted p-values of a family of tests.

    Sorted ascending ``p_(1) ≤ … ≤ p_(m)``:
    ``p̃_(k) = max_{j ≤ k} min(1, (m - j + 1) p_(j))``, returned in the input order.
    Rejecting where ``p̃ < α`` controls the family-wise error rate at α.

    Args:
        pvalues: shape (m,), values in [0, 1].

    Returns:
        A list of m adjusted p-values.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise invalid("pvalues", "numbers in [0, 1]", pvalues)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [float(v) for v in adjusted]


def fmt(value, digits=3):
    """``value`` with ``digits`` decimals, or an em dash for None / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def fmt_p(p):
    """A p-value for tables: 3 significant digits, ``< 1e-4`` below that."""
    if p is None:
        return "—"
    return "< 1e-4" if p < 1e-4 else f"{p:.3g}"
