"""Hutchinson's trace and the SLQ density (`curvature.trace`) on explicit matrices."""

import numpy as np
import pytest
from keras import ops

from keras_dynloss import backend
from keras_dynloss.curvature import trace
from keras_dynloss.curvature.lanczos import krylov_dtype

pytestmark = pytest.mark.multi_backend


def _sym(n, spectrum, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * spectrum) @ q.T


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_within_three_standard_errors(float64, distribution):
    a = _sym(60, np.random.default_rng(8).standard_normal(60) * 3, seed=8)
    res = trace.hutchinson_trace(lambda v: a @ v, 60, num_samples=200, distribution=distribution,
                                 seed=0)
    assert res.num_samples == res.num_matvecs == res.samples.shape[0] == 200
    assert res.stderr > 0 and abs(res.trace - np.trace(a)) <= 3 * res.stderr


def test_hutchinson_standard_error_follows_the_rademacher_variance(float64):
    a = _sym(60, np.random.default_rng(9).standard_normal(60), seed=9)
    res = trace.hutchinson_trace(lambda v: a @ v, 60, num_samples=400, seed=1)
    off_diagonal = a - np.diag(np.diag(a))
    predicted = np.sqrt(2 * np.sum(off_diagonal**2) / 400)  # var(z^T A z) = 2 sum_{i!=j} A_ij^2
    assert 0.8 * predicted < res.stderr < 1.2 * predicted


def test_rademacher_is_exact_on_a_diagonal(float64):
    a = np.diag(np.arange(7.0))
    res = trace.hutchinson_trace(lambda v: a @ v, 7, num_samples=3)
    assert res.trace == pytest.approx(21.0, abs=1e-12)
    assert res.stderr == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_in_graph_loop_estimates_the_trace(jit_compile):
    a = _sym(40, np.random.default_rng(7).standard_normal(40), seed=7)
    a_t = ops.convert_to_tensor(a, krylov_dtype())

    def fn(seed):
        return trace.hutchinson_loop(lambda v: ops.einsum("ij,j->i", a_t, v), 40, 300, seed)

    sample = backend.get().compile_function(fn, jit_compile=jit_compile)
    s = ops.convert_to_numpy(sample(backend.seed_pair(3)))
    other = ops.convert_to_numpy(sample(backend.fold_in(backend.seed_pair(3), 1)))
    assert s.shape == (300,) and not np.array_equal(s, other)
    assert abs(s.mean() - np.trace(a)) <= 3 * s.std(ddof=1) / np.sqrt(300)
    d = ops.convert_to_tensor(np.arange(6.0), krylov_dtype())
    exact = trace.hutchinson_loop(lambda v: d * v, 6, 3, 0)  # Rademacher on a diagonal
    np.testing.assert_allclose(ops.convert_to_numpy(exact), 15.0, rtol=1e-6)


def test_density_is_exact_on_a_diagonal_matrix(float64):
    a = np.diag(np.r_[np.zeros(24), np.full(12, 5.0), np.full(4, 10.0)])
    res = trace.spectral_density(lambda v: a @ v, 40, num_vectors=3, order=10, sigma=0.1)
    # Rademacher vectors weigh each coordinate eigenspace by its dimension exactly, and the
    # runs stop at the invariant subspace after 3 steps.
    assert res.num_matvecs == 9
    assert res.mass(-1, 1) == pytest.approx(0.6, abs=1e-12)
    assert res.mass(4, 6) == pytest.approx(0.3, abs=1e-12)
    assert res.mass(9, 11) == pytest.approx(0.1, abs=1e-12)
    np.testing.assert_allclose(np.unique(res.eigenvalues.round(8)), [0.0, 5.0, 10.0], atol=1e-8)


def test_density_integrates_to_one_and_follows_the_eigenvalue_counts(float64):
    spectrum = np.r_[np.zeros(60), np.full(30, 5.0), np.full(10, 10.0)]
    spectrum = spectrum + np.random.default_rng(0).normal(0.0, 0.05, 100)
    a = _sym(100, spectrum, seed=9)
    res = trace.spectral_density(lambda v: a @ v, 100, num_vectors=10, order=30, sigma=0.2)
    assert np.trapezoid(res.density, res.grid) == pytest.approx(1.0, abs=1e-6)
    for low, high, count in ((-1.0, 1.0, 60), (4.0, 6.0, 30), (9.0, 11.0, 10)):
        assert res.mass(low, high) == pytest.approx(count / 100, abs=0.1)
        inside = (res.grid >= low) & (res.grid <= high)
        area = np.trapezoid(res.density[inside], res.grid[inside])
        assert area == pytest.approx(count / 100, abs=0.1)
    assert res.eigenvalues[0] == pytest.approx(spectrum.max(), abs=1e-6)


@pytest.mark.parametrize("call, name", [
    (lambda: trace.hutchinson_trace("nope", 5), "matvec"),
    (lambda: trace.hutchinson_trace(lambda v: v, 5, num_samples=1), "num_samples"),
    (lambda: trace.hutchinson_trace(lambda v: v, 5, distribution="normal"), "distribution"),
    (lambda: trace.hutchinson_trace(lambda v: v, 5, seed=-1), "seed"),
    (lambda: trace.spectral_density(lambda v: v, 0), "size"),
    (lambda: trace.spectral_density(lambda v: v, 5, num_vectors=0), "num_vectors"),
    (lambda: trace.spectral_density(lambda v: v, 5, order=0), "order"),
    (lambda: trace.spectral_density(lambda v: v, 5, sigma=0.0), "sigma"),
    (lambda: trace.spectral_density(lambda v: v, 5, num_points=1), "num_points"),
    (lambda: trace.spectral_density(lambda v: v, 5, grid=[0.0, np.nan]), "grid"),
])
def test_rejected_arguments(call, name):
    with pytest.raises(ValueError, match=f"Invalid value for argument `{name}`"):
        call()
