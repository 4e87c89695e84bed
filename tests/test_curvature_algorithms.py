"""Matrix-free algorithms checked on plain NumPy matrices (no model)."""


import numpy as np
import pytest

from keras_dynloss.curvature import algorithms as alg


def _sym(n, seed=0, spectrum=None):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    if spectrum is None:
        spectrum = rng.standard_normal(n) * 3
    return (q * spectrum) @ q.T, np.sort(spectrum)[::-1]


def test_full_order_lanczos_rebuilds_matrix():
    a, _ = _sym(25, seed=1)
    dec = alg.lanczos_tridiagonal(lambda v: a @ v, 25, order=25, seed=3)
    q, t = dec.basis, dec.tridiagonal()
    assert q.shape == (25, 25) and t.shape == (25, 25)
    np.testing.assert_allclose(q.T @ q, np.eye(25), atol=1e-12)
    np.testing.assert_allclose(q @ t @ q.T, a, atol=1e-10)
    # T is tridiagonal and equals Q^T A Q.
    np.testing.assert_allclose(q.T @ a @ q, t, atol=1e-10)
    assert dec.num_matvecs == 25 and dec.breakdowns == 0


def test_partial_lanczos_is_a_valid_factorisation():
    a, _ = _sym(40, seed=2)
    dec = alg.lanczos_tridiagonal(lambda v: a @ v, 40, order=12, seed=0)
    q, t = dec.basis, dec.tridiagonal()
    # A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T  =>  residual only in the last column.
    r = a @ q - q @ t
    np.testing.assert_allclose(r[:, :-1], 0, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(r[:, -1]), dec.residual_norm, rtol=1e-10)


def test_lanczos_top_k_matches_eigvalsh():
    spectrum = np.r_[10.0, 7.0, 5.0, np.linspace(-1, 1, 97)]
    a, expected = _sym(100, seed=4, spectrum=spectrum)
    res = alg.lanczos(lambda v: a @ v, 100, k=3, order=40, seed=0, return_eigenvectors=True)
    np.testing.assert_allclose(res.eigenvalues, expected[:3], rtol=1e-10)
    assert res.converged and res.num_matvecs == 40
    for i in range(3):
        u = res.eigenvectors[:, i]
        np.testing.assert_allclose(np.linalg.norm(a @ u - res.eigenvalues[i] * u), 0, atol=1e-8)
    # "smallest" selects the algebraically smallest end; "magnitude" by |lambda|.
    small = alg.lanczos(lambda v: a @ v, 100, k=1, order=100, which="smallest")
    np.testing.assert_allclose(small.eigenvalues, [expected[-1]], atol=1e-10)


def test_lanczos_residuals_bound_error():
    a, expected = _sym(200, seed=5)
    res = alg.lanczos(lambda v: a @ v, 200, k=2, order=15, seed=1)
    err = np.abs(res.eigenvalues - expected[:2])
    # Each Ritz value is within its residual of some eigenvalue.
    for lam, r in zip(res.eigenvalues, res.residuals):
        assert np.min(np.abs(expected - lam)) <= r + 1e-12
    assert err.max() > 0  # not exact at low order: the bound is being tested


def test_lanczos_breakdown_warns_and_restarts():
    a = np.diag(np.r_[np.full(5, 2.0), np.full(5, -1.0)])
    start = np.r_[np.ones(5), np.zeros(5)]  # inside the eigenspace of 2
    with pytest.warns(RuntimeWarning, match="breakdown"):
        res = alg.lanczos(lambda v: a @ v, 10, k=4, order=4, start=start)
    # Without the restart only the eigenvalue 2 would be found.
    assert res.eigenvalues[0] == pytest.approx(2.0, abs=1e-12)
    assert res.eigenvalues[-1] == pytest.approx(-1.0, abs=1e-12)


def test_power_iteration_matches_eigvalsh_with_deflation():
    spectrum = np.r_[9.0, 6.0, 4.0, np.linspace(0, 1, 47)]
    a, expected = _sym(50, seed=6, spectrum=spectrum)
    res = alg.power_iteration(lambda v: a @ v, 50, k=3, max_iter=500, tol=1e-12, seed=0, return_eigenvectors=True)
    np.testing.assert_allclose(res.eigenvalues, expected[:3], rtol=1e-6)
    assert res.converged
    assert res.eigenvectors.shape == (50, 3)
    np.testing.assert_allclose(np.abs(res.eigenvectors[:, 0] @ res.eigenvectors[:, 1]), 0, atol=1e-4)


def test_power_iteration_reports_non_convergence():
    a, _ = _sym(30, seed=7, spectrum=np.r_[1.0, 0.999, np.zeros(28)])
    res = alg.power_iteration(lambda v: a @ v, 30, max_iter=3, tol=1e-12)
    assert not res.converged and res.num_matvecs == 3


def test_hutchinson_within_three_standard_errors():
    a, spectrum = _sym(60, seed=8)
    exact = np.trace(a)
    res = alg.hutchinson_trace(lambda v: a @ v, 60, num_samples=200, seed=2)
    assert res.stderr > 0
    assert abs(res.trace - exact) <= 3 * res.stderr
    # The standard error is honest: close to the Rademacher variance formula.
    off = a - np.diag(np.diag(a))
    predicted = np.sqrt(2 * np.sum(off**2) / 200)
    assert 0.7 * predicted < res.stderr < 1.3 * predicted
    assert res.num_matvecs == 200


def test_hutchinson_exact_on_diagonal():
    a = np.diag(np.arange(7.0))
    res = alg.hutchinson_trace(lambda v: a @ v, 7, num_samples=3)
    assert res.trace == pytest.approx(21.0) and res.stderr == pytest.approx(0.0)


def test_density_integrates_to_one_and_mass_sits_on_eigenvalues():
    spectrum = np.r_[np.zeros(60), np.full(30, 5.0), np.full(10, 10.0)]
    spectrum = spectrum + np.random.default_rng(0).normal(0, 0.05, 100)
    a, _ = _sym(100, seed=9, spectrum=spectrum)
    res = alg.spectral_density(lambda v: a @ v, 100, num_vectors=10, order=30, sigma=0.2, seed=0)
    integral = np.trapezoid(res.density, res.grid)
    assert integral == pytest.approx(1.0, abs=1e-3)
    for center, frac in ((0.0, 0.6), (5.0, 0.3), (10.0, 0.1)):
        mask = np.abs(res.grid - center) < 1.5
        mass = np.trapezoid(res.density[mask], res.grid[mask])
        assert mass == pytest.approx(frac, abs=0.1)
    # Against the exact smoothed density on the grid.
    exact = alg.gaussian_density(spectrum[None], np.full((1, 100), 0.01), res.grid, 0.2)
    assert np.trapezoid(np.abs(exact - res.density), res.grid) < 0.25
    # The first moment estimates tr(A)/n.
    mean = np.trapezoid(res.grid * res.density, res.grid)
    assert mean == pytest.approx(np.trace(a) / 100, abs=0.5)
    assert res.eigenvalues[0] == pytest.approx(spectrum.max(), abs=0.1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: alg.lanczos(np.eye, 5, k=0), "`k`"),
        (lambda: alg.lanczos(lambda v: v, 5, k=2, order=1), "`order`"),
        (lambda: alg.lanczos(lambda v: v, 5, which="top"), "`which`"),
        (lambda: alg.lanczos("nope", 5), "`matvec`"),
        (lambda: alg.lanczos(lambda v: v, 0), "`size`"),
        (lambda: alg.lanczos(lambda v: v, 5, seed=-1), "`seed`"),
        (lambda: alg.lanczos_tridiagonal(lambda v: v, 5, order=6), "`order`"),
        (lambda: alg.lanczos_tridiagonal(lambda v: v, 5, order=2, start=np.zeros(5)), "`start`"),
        (lambda: alg.power_iteration(lambda v: v, 5, max_iter=0), "`max_iter`"),
        (lambda: alg.power_iteration(lambda v: v, 5, tol=-1.0), "`tol`"),
        (lambda: alg.hutchinson_trace(lambda v: v, 5, num_samples=1), "`num_samples`"),
        (lambda: alg.hutchinson_trace(lambda v: v, 5, distribution="normal"), "`distribution`"),
        (lambda: alg.spectral_density(lambda v: v, 5, sigma=0.0), "`sigma`"),
        (lambda: alg.spectral_density(lambda v: v, 5, num_vectors=0), "`num_vectors`"),
    ],
)
def test_rejected_inputs(call, match):
    with pytest.raises(ValueError, match="Invalid value for argument " + match):
        call()


def test_error_message_format():
    with pytest.raises(ValueError) as info:
        alg.lanczos(lambda v: v, 5, k=0)
    assert str(info.value) == (
        "Invalid value for argument `k`: expected an integer in [1, 5]. Received: k=0"
    )
