"""Statistics of the sweeps (describe, Mann–Whitney U, Holm) against hand-computed values."""

import itertools
import math
import sys

import numpy as np
import pytest

from keras_dynloss.experiments import stats

pytestmark = pytest.mark.multi_backend


def test_describe_quartiles_by_hand():
    s = stats.describe([4.0, 1.0, 3.0, 2.0])
    assert s.n == 4 and s.mean == pytest.approx(2.5)
    # sample std: sqrt((1.5² + 0.5² + 0.5² + 1.5²) / 3) = sqrt(5/3)
    assert s.std == pytest.approx(math.sqrt(5 / 3))
    # type-7 quartiles: positions 0.75 and 2.25 between the sorted values 1, 2, 3, 4
    assert (s.q1, s.median, s.q3) == pytest.approx((1.75, 2.5, 3.25))
    assert s.iqr == pytest.approx(1.5)
    assert (s.min, s.max) == (1.0, 4.0)


def test_describe_counts_strictly_above_threshold():
    s = stats.describe([0.4, 0.99, 0.9, 0.5, 0.95])
    # sorted 0.4, 0.5, 0.9, 0.95, 0.99: 0.9 itself is not above 0.9
    assert s.above == 2 and s.frac_above == pytest.approx(0.4)
    assert (s.q1, s.median, s.q3) == pytest.approx((0.5, 0.9, 0.95))
    assert stats.describe([0.4, 0.99], threshold=0.3).above == 2


def test_describe_single_run_has_no_std():
    s = stats.describe([0.7])
    assert s.std is None and s.median == 0.7 and s.iqr == 0.0


@pytest.mark.parametrize("values", [[], [0.5, float("nan")], [[]]])
def test_describe_rejects_empty_or_nan(values):
    with pytest.raises(ValueError, match="Invalid value for argument `values`"):
        stats.describe(values)


def test_mann_whitney_separated_samples_exact():
    # U = 0; exact null: 1 of C(6, 3) = 20 arrangements, two-sided 2/20.
    res = stats.mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert res.u == 0.0 and res.method == "exact"
    assert res.pvalue == pytest.approx(0.1)
    assert res.effect == 0.0
    assert stats.mann_whitney([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]).u == 9.0


def test_mann_whitney_interleaved_exact_by_hand():
    # x beats y in pairs (3,2), (5,2), (5,4): U = 3. For n_x = n_y = 3 the null
    # counts of U = 0..9 are 1,1,2,3,3,3,3,2,1,1 (of 20): P(U <= 3) = 7/20.
    res = stats.mann_whitney([1.0, 3.0, 5.0], [2.0, 4.0, 6.0])
    assert res.u == 3.0 and res.pvalue == pytest.approx(0.7)
    assert res.effect == pytest.approx(1 / 3)


def _u(x, y):
    return sum((a > b) + 0.5 * (a == b) for a in x for b in y)


def test_mann_whitney_exact_matches_enumeration():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.5, 1, 5), rng.normal(0, 1, 6)
    both = np.concatenate([x, y])
    u_obs = _u(x, y)
    null = []
    for idx in itertools.combinations(range(11), 5):
        rest = [both[i] for i in range(11) if i not in idx]
        null.append(_u(both[list(idx)], rest))
    null = np.array(null)
    p = min(1.0, 2 * min(np.mean(null <= u_obs), np.mean(null >= u_obs)))
    res = stats.mann_whitney(x, y)
    assert res.method == "exact" and res.u == pytest.approx(u_obs)
    assert res.pvalue == pytest.approx(p, rel=1e-12)


def test_mann_whitney_ties_normal_approximation_by_hand():
    # x = 1,2,2; y = 2,3,3: U = ½ + ½ = 1. Ties: three 2s, two 3s ->
    # σ² = 9/12 · (7 − (24 + 6)/30) = 4.5; z = (|1 − 4.5| − ½)/√4.5 = √2;
    # p = 2(1 − Φ(√2)) = erfc(1).
    res = stats.mann_whitney([1.0, 2.0, 2.0], [2.0, 3.0, 3.0])
    assert res.method == "asymptotic" and res.u == 1.0
    assert res.pvalue == pytest.approx(math.erfc(1.0), rel=1e-10)


def test_mann_whitney_all_equal_is_not_significant():
    res = stats.mann_whitney([0.5, 0.5], [0.5, 0.5, 0.5])
    assert res.pvalue == 1.0 and res.u == 3.0 and res.effect == 0.5


def test_mann_whitney_rejects_nan():
    with pytest.raises(ValueError, match="Invalid value for argument `y`"):
        stats.mann_whitney([0.5], [float("nan")])


def test_mann_whitney_without_scipy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(ImportError, match=r"keras_dynloss\[stats\]"):
        stats.mann_whitney([1.0, 2.0], [3.0, 4.0])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04;
    # running maximum 0.02, 0.03, 0.06, 0.06; back in input order:
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []
    with pytest.raises(ValueError, match="Invalid value for argument `pvalues`"):
        stats.holm([0.5, 1.5])


def test_p_value_format():
    assert stats.fmt_p(0.012345) == "0.0123" and stats.fmt_p(3e-6) == "< 1e-4"
    assert stats.fmt_p(None) == "—"
