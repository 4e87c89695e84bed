"""`tridiagonal_top.top_pair` and the XLA Lanczos that uses it, against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import krylov
from keras_dynloss.curvature.tridiagonal_top import top_pair


def _tridiagonal(a, b):
    return np.diag(a) + np.diag(b, 1) + np.diag(b, -1)


def _cases(seed=0, count=120):
    """(a, b, m): random tridiagonals of `steps = len(a)` rows padded to `m`,
    scaled 1e-3..1e3, some with a zero off-diagonal (two blocks, as after a
    Lanczos restart), nearly diagonal ones (close eigenvalues), repeated
    blocks (a double top eigenvalue), negative spectra."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        m = int(rng.choice([1, 2, 5, 10, 20]))
        steps = int(rng.integers(1, m + 1))
        scale = 10 ** rng.uniform(-3, 3)
        a = rng.normal(size=steps) * scale
        b = np.abs(rng.normal(size=steps - 1)) * scale
        kind = i % 5
        if kind == 1 and steps > 2:
            b[rng.integers(0, steps - 1)] = 0.0
        if kind == 2:
            b *= 1e-7
        if kind == 3 and steps >= 4:
            h = steps // 2
            a[h:2 * h], b[h:2 * h - 1], b[h - 1] = a[:h], b[:h - 1], 0.0
        if kind == 4:
            a -= 5 * scale
        yield a, b, m


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_top_pair_equals_numpy_eigh(jit):
    fn = tf.function(top_pair, jit_compile=jit, autograph=False)  # one trace per static m
    for a, b, m in _cases():
        steps = len(a)
        alphas = np.full(m, 123.0)  # padding: must be ignored
        betas = np.full(m, 45.0)
        alphas[:steps], betas[:steps - 1] = a, b
        theta, s = fn(tf.constant(alphas), tf.constant(betas), tf.constant(steps))
        theta, s = float(theta.numpy()[0]), s.numpy()[:, 0]
        t = _tridiagonal(a, b)
        values = np.linalg.eigvalsh(t)
        scale = np.abs(t).max()
        assert abs(theta - values[-1]) <= 1e-13 * scale
        np.testing.assert_array_equal(s[steps:], 0.0)
        v = s[:steps]
        assert abs(np.linalg.norm(v) - 1.0) < 1e-12
        assert np.linalg.norm(t @ v - values[-1] * v) <= 1e-11 * scale  # an eigenvector of the top value


def test_top_pair_last_component_gives_the_lanczos_residual():
    """The stopping rule's `|beta s_last|` equals NumPy's, for a simple top value."""
    rng = np.random.default_rng(3)
    for steps in (2, 4, 7, 10):
        a, b = rng.normal(size=steps), np.abs(rng.normal(size=steps - 1)) + 0.1
        theta, s = top_pair(tf.constant(a), tf.constant(np.append(b, 0.0)), tf.constant(steps))
        _, vectors = np.linalg.eigh(_tridiagonal(a, b))
        assert abs(abs(s.numpy()[-1, 0]) - abs(vectors[-1, -1])) < 1e-12


def test_top_pair_nan_in_nan_out():
    a = tf.constant([1.0, np.nan, 2.0], tf.float64)
    theta, _ = tf.function(top_pair, jit_compile=True)(a, tf.constant([0.5, 0.5, 0.0], tf.float64),
                                                       tf.constant(3))
    assert np.isnan(theta.numpy()[0])


@pytest.mark.parametrize("shift", [0.0, -30.0], ids=["psd", "indefinite"])
def test_xla_lanczos_with_a_tolerance_equals_the_dense_top_pair(shift):
    """`lanczos_loop(k=1, tol)` under XLA (the `top_pair` path): the value
    against `numpy.linalg.eigvalsh` and the residual it reports against
    `||A y - theta y||` of the Ritz vector it returns."""
    rng = np.random.default_rng(1)
    n = 60
    x = rng.normal(size=(n, n))
    a = x @ x.T / n + shift * np.eye(n)
    a[0, 0] += 40.0  # a well-separated top eigenvalue
    matrix = tf.constant(a)

    @tf.function(jit_compile=True, autograph=False)
    def run(v):
        out = krylov.lanczos_loop(lambda q: tf.linalg.matvec(matrix, q), v, 30, tol=1e-9, k=1, seed=3)
        values, residuals, vectors = krylov.ritz(out, 1)
        return values[0], residuals[0], vectors[:, 0], out.steps

    value, residual, vector, steps = (t.numpy() for t in run(tf.constant(rng.normal(size=n))))
    top = np.linalg.eigvalsh(a)[-1]
    assert steps < 30  # stopped on the tolerance
    assert residual <= 1e-9 * abs(value)
    np.testing.assert_allclose(np.linalg.norm(a @ vector - value * vector), residual, rtol=1e-3, atol=1e-12)
    assert abs(value - top) <= 1e-10 * abs(top)
