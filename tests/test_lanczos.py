"""Lanczos (`curvature.lanczos`) on explicit symmetric matrices, against NumPy's `eigh`."""

import importlib

import numpy as np
import pytest
from keras import ops

from keras_dynloss import backend

lz = importlib.import_module("keras_dynloss.curvature.lanczos")  # not the function `lanczos`

pytestmark = pytest.mark.multi_backend


def _sym(n, spectrum, seed=0):
    """A dense symmetric matrix with the given spectrum in a random eigenbasis."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * spectrum) @ q.T


def _compiled(a, order, ritz_k=1, jit_compile=False, **options):
    """`start -> (steps, breakdowns, values, residuals, vectors)`: the in-graph loop on `a`
    and its top-`ritz_k` Ritz pairs."""
    a = ops.convert_to_tensor(a, lz.krylov_dtype())

    def fn(start):
        run = lz.lanczos_loop(lambda v: ops.einsum("ij,j->i", a, v), start, order, **options)
        return (run.steps, run.breakdowns) + lz.ritz(run, ritz_k)

    compiled = backend.get().compile_function(fn, jit_compile=jit_compile)
    return lambda start: [ops.convert_to_numpy(x) for x in
                          compiled(ops.convert_to_tensor(start, lz.krylov_dtype()))]


def test_full_order_rebuilds_the_matrix(float64):
    a = _sym(25, np.random.default_rng(1).standard_normal(25) * 3)
    dec = lz.lanczos_tridiagonal(lambda v: a @ v, 25, order=25, seed=3)
    q, t = dec.basis, dec.tridiagonal()
    assert q.shape == (25, 25) and dec.num_matvecs == 25 and dec.breakdowns == 0
    np.testing.assert_allclose(q.T @ q, np.eye(25), atol=1e-12)
    np.testing.assert_allclose(q @ t @ q.T, a, atol=1e-10)


def test_partial_factorisation_leaves_the_residual_in_the_last_column(float64):
    a = _sym(40, np.random.default_rng(2).standard_normal(40))
    dec = lz.lanczos_tridiagonal(lambda v: a @ v, 40, order=12, seed=0)
    r = a @ dec.basis - dec.basis @ dec.tridiagonal()
    assert dec.order == 12
    np.testing.assert_allclose(r[:, :-1], 0.0, atol=1e-10)
    assert np.linalg.norm(r[:, -1]) == pytest.approx(dec.residual_norm, rel=1e-8)
    np.testing.assert_allclose(dec.basis.T @ r[:, -1], 0.0, atol=1e-10)


def test_top_k_and_eigenvectors_match_eigh(float64):
    spectrum = np.r_[10.0, 7.0, 5.0, np.linspace(-1.0, 1.0, 97)]
    a = _sym(100, spectrum, seed=4)
    res = lz.lanczos(lambda v: a @ v, 100, k=3, order=40, return_eigenvectors=True)
    np.testing.assert_allclose(res.eigenvalues, [10.0, 7.0, 5.0], rtol=1e-10)
    assert res.converged and res.num_matvecs == 40 and res.max_eigenvalue == res.eigenvalues[0]
    _, exact = np.linalg.eigh(a)
    for i in range(3):
        assert abs(res.eigenvectors[:, i] @ exact[:, -1 - i]) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("which, expected",
                         [("smallest", [-2.0, -3.0]), ("magnitude", [4.0, -3.0])])
def test_which_selects_the_other_ends(float64, which, expected):
    a = _sym(30, np.r_[4.0, -3.0, -2.0, np.linspace(-1.0, 1.0, 27)], seed=5)
    res = lz.lanczos(lambda v: a @ v, 30, k=2, order=30, which=which)
    np.testing.assert_allclose(res.eigenvalues, expected, atol=1e-10)


def test_residuals_bound_the_error(float64):
    spectrum = np.random.default_rng(6).standard_normal(200)
    a = _sym(200, spectrum, seed=6)
    res = lz.lanczos(lambda v: a @ v, 200, k=2, order=15, seed=1)
    assert not res.converged  # 15 steps are not enough here: the bound is what is tested
    for value, residual in zip(res.eigenvalues, res.residuals):
        assert 0 < np.min(np.abs(spectrum - value)) <= residual


def test_repeated_eigenvalues_break_down_warn_and_restart(float64):
    a = np.diag(np.r_[np.full(5, 2.0), np.full(5, -1.0)])
    start = np.r_[np.ones(5), np.zeros(5)]  # inside the eigenspace of 2: invariant at once
    with pytest.warns(RuntimeWarning, match="breakdown"):
        dec = lz.lanczos_tridiagonal(lambda v: a @ v, 10, order=4, start=start)
    assert dec.breakdowns >= 1 and dec.order == 4 and 0.0 in dec.betas
    theta = np.linalg.eigvalsh(dec.tridiagonal())
    assert theta.max() == pytest.approx(2.0, abs=1e-12)
    assert theta.min() == pytest.approx(-1.0, abs=1e-12)  # reached only by the restart
    with pytest.warns(RuntimeWarning, match="stopped after 1 of 4"):
        stopped = lz.lanczos_tridiagonal(lambda v: a @ v, 10, order=4, start=start,
                                         restart_on_breakdown=False)
    assert stopped.order == 1 and stopped.residual_norm == 0.0


@pytest.mark.parametrize("jit_compile", [False, True])
def test_in_graph_loop_gives_the_dense_top_eigenvalues(jit_compile):
    spectrum = np.r_[10.0, 6.0, 5.0, np.linspace(-1.0, 1.0, 57)]
    a = _sym(60, spectrum, seed=7)
    start = np.random.default_rng(8).standard_normal(60)
    run = _compiled(a, 40, ritz_k=3, jit_compile=jit_compile)
    steps, breakdowns, values, residuals, vectors = run(start)
    exact = np.linalg.eigvalsh(a)[::-1][:3]
    rtol = 1e-10 if lz.krylov_dtype() == "float64" else 1e-4
    assert steps == 40 and breakdowns == 0 and vectors.shape == (60, 3)
    np.testing.assert_allclose(values, exact, rtol=rtol)
    # The free residual beta |s_last| is the true one, ||A u - theta u||, down to the
    # accuracy of the eigenvectors of T (TensorFlow's XLA eigh on CPU: ~1e-7 ||T||).
    floor = 1e-6 if backend.name() == "tensorflow" and jit_compile else rtol
    true = np.linalg.norm(a @ vectors - vectors * values, axis=0)
    np.testing.assert_allclose(residuals, true, rtol=0.01, atol=floor)


def test_tolerance_stops_early_and_the_residual_bounds_the_error(float64):
    a = _sym(200, np.r_[10.0, 6.0, np.linspace(-1.0, 1.0, 198)], seed=3)
    start = np.random.default_rng(4).standard_normal(200)
    steps, _, values, residuals, _ = _compiled(a, 60, tol=1e-6)(start)
    assert 1 < steps < 60
    assert residuals[0] <= 1e-6 * values[0]
    assert abs(values[0] - 10.0) <= residuals[0]
    _, _, shorter, short_residuals, _ = _compiled(a, steps - 1)(start)  # one step fewer
    assert short_residuals[0] > 1e-6 * shorter[0]


def test_tolerance_watches_each_of_the_top_k(float64):
    a = _sym(100, np.r_[10.0, 5.0, 1.5, np.linspace(0.0, 1.0, 97)], seed=5)
    start = np.random.default_rng(6).standard_normal(100)
    one = _compiled(a, 80, ritz_k=3, tol=1e-4, min_steps=3)(start)  # watches the top pair
    steps, _, values, residuals, _ = _compiled(a, 80, ritz_k=3, k=3, tol=1e-4)(start)
    assert one[0] < steps < 80
    assert one[3][2] > 1e-4 * one[2][2]  # the third pair had not converged
    assert np.all(residuals <= 1e-4 * values)
    np.testing.assert_allclose(values, [10.0, 5.0, 1.5], rtol=1e-4)


def test_warm_start_converges_in_fewer_steps(float64):
    a = _sym(150, np.r_[5.0, 4.8, np.linspace(-1.0, 1.0, 148)], seed=9)
    rng = np.random.default_rng(10)
    top = np.linalg.eigh(a)[1][:, -1]
    cold = _compiled(a, 50, tol=1e-6)(rng.standard_normal(150))
    warm = _compiled(a, 50, tol=1e-6)(top + 1e-3 * rng.standard_normal(150))
    assert warm[0] < cold[0] < 50
    assert warm[2][0] == pytest.approx(5.0, rel=1e-6) and cold[2][0] == pytest.approx(5.0, rel=1e-6)


def test_in_graph_breakdown_restarts_or_stops(float64):
    a = np.diag(np.r_[np.full(5, 2.0), np.full(5, -1.0)])
    start = np.r_[np.ones(5), np.zeros(5)]
    steps, breakdowns, values, _, _ = _compiled(a, 4, ritz_k=4)(start)
    assert steps == 4 and breakdowns >= 1
    assert values[0] == pytest.approx(2.0, abs=1e-12)
    assert values[-1] == pytest.approx(-1.0, abs=1e-12)  # reached only by the restart
    steps, breakdowns, values, residuals, vectors = _compiled(a, 4, ritz_k=2, restart=False)(start)
    assert steps == 1 and breakdowns == 1
    assert values[0] == pytest.approx(2.0) and residuals[0] == 0.0
    assert np.isnan(values[1]) and np.isnan(residuals[1]) and not np.any(vectors[:, 1])


def _rejected():
    mv = lambda v: v  # noqa: E731
    return [
        (lambda: lz.lanczos("nope", 5), "matvec"),
        (lambda: lz.lanczos(mv, 0), "size"),
        (lambda: lz.lanczos(mv, 5, k=0), "k"),
        (lambda: lz.lanczos(mv, 5, k=2, order=1), "order"),
        (lambda: lz.lanczos(mv, 5, which="top"), "which"),
        (lambda: lz.lanczos(mv, 5, tol=-1.0), "tol"),
        (lambda: lz.lanczos(mv, 5, seed=-1), "seed"),
        (lambda: lz.lanczos(lambda v: v[:3], 5), "matvec"),
        (lambda: lz.lanczos_tridiagonal(mv, 5, order=6), "order"),
        (lambda: lz.lanczos_tridiagonal(mv, 5, order=2, start=np.zeros(5)), "start"),
        (lambda: lz.lanczos_tridiagonal(mv, 5, order=2, start=np.ones(4)), "start"),
        (lambda: lz.lanczos_loop(mv, ops.ones((5,)), 3, k=4), "k"),
    ]


@pytest.mark.parametrize("call, name", _rejected())
def test_rejected_arguments(call, name):
    with pytest.raises(ValueError, match=f"Invalid value for argument `{name}`"):
        call()
