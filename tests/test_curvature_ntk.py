"""Empirical NTK Gram matrices against an explicit Jacobian."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import NTKOperator
from keras_dynloss.curvature import ntk_eigenvalues
from keras_dynloss.curvature import ntk_gram
from conftest import columns_in_one_loop

F64 = "float64"


def model_and_inputs(dtype=F64, n=6):
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((5,), dtype=dtype),
            keras.layers.Dense(7, activation="tanh", dtype=dtype),
            keras.layers.BatchNormalization(dtype=dtype),
            keras.layers.Dense(3, dtype=dtype),
        ]
    )
    x = np.random.default_rng(0).standard_normal((n, 5)).astype(dtype)
    return model, x


def explicit_jacobian(model, x):
    """J[i, c, :] = d f_c(x_i) / d theta, one gradient per sample and output."""
    n, k = x.shape[0], 3
    rows = np.zeros((n, k, sum(int(np.prod(v.shape)) for v in model.trainable_variables)))
    for i in range(n):
        for c in range(k):
            with tf.GradientTape() as tape:
                out = model(x[i : i + 1], training=False)[0, c]
            grads = tape.gradient(out, model.trainable_variables)
            rows[i, c] = np.concatenate([g.numpy().reshape(-1) for g in grads])
    return rows


def test_traced_gram_equals_sum_over_outputs_of_j_jt():
    model, x = model_and_inputs()
    jac = explicit_jacobian(model, x)
    expected = sum(jac[:, c] @ jac[:, c].T for c in range(3))
    gram = ntk_gram(model, x)
    assert gram.shape == (6, 6)
    np.testing.assert_allclose(gram, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gram, gram.T, atol=1e-12)
    assert np.linalg.eigvalsh(gram).min() > -1e-10


def test_full_gram_equals_j_jt():
    model, x = model_and_inputs()
    jac = explicit_jacobian(model, x).reshape(18, -1)
    gram = ntk_gram(model, x, trace_outputs=False, batch_size=4)
    assert gram.shape == (18, 18)
    np.testing.assert_allclose(gram, jac @ jac.T, rtol=1e-10, atol=1e-12)
    # The traced kernel is the trace of each 3x3 block of the full one.
    blocks = gram.reshape(6, 3, 6, 3)
    np.testing.assert_allclose(np.einsum("icjc->ij", blocks), ntk_gram(model, x), rtol=1e-10)
    assert np.linalg.eigvalsh(gram).min() > -1e-10


@pytest.mark.parametrize("trace_outputs", [True, False])
def test_matrix_free_operator_matches_gram(trace_outputs):
    model, x = model_and_inputs()
    gram = ntk_gram(model, x, trace_outputs=trace_outputs)
    op = NTKOperator(model, x, trace_outputs=trace_outputs)
    assert op.size == gram.shape[0]
    u = np.random.default_rng(1).standard_normal(op.size)
    np.testing.assert_allclose(op(u), gram @ u, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("trace_outputs", [True, False])
def test_ntk_eigenvalues_dense_and_lanczos(trace_outputs):
    model, x = model_and_inputs(dtype="float32", n=10)
    gram = ntk_gram(model, x, trace_outputs=trace_outputs)
    exact = np.linalg.eigvalsh(gram)[::-1]
    dense = ntk_eigenvalues(model, x, k=2, trace_outputs=trace_outputs)
    np.testing.assert_allclose(dense.eigenvalues, exact[:2], rtol=1e-10)
    lanczos = ntk_eigenvalues(model, x, k=2, trace_outputs=trace_outputs, algorithm="lanczos", order=10)
    np.testing.assert_allclose(lanczos.eigenvalues, exact[:2], rtol=1e-4)
    assert dense.eigenvalues[0] > dense.eigenvalues[1] > 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, x: ntk_eigenvalues(m, x, k=0), "`k`"),
        (lambda m, x: ntk_eigenvalues(m, x, k=7), "`k`"),
        (lambda m, x: ntk_eigenvalues(m, x, algorithm="svd"), "`algorithm`"),
        (lambda m, x: ntk_gram(m, x, trace_outputs="yes"), "`trace_outputs`"),
        (lambda m, x: ntk_gram(m, x, batch_size=0), "`batch_size`"),
        (lambda m, x: NTKOperator(m, x, trace_outputs=1), "`trace_outputs`"),
        (lambda m, x: NTKOperator(m, x)(np.ones(5)), "`u`"),
    ],
)
def test_rejected_inputs(call, match):
    model, x = model_and_inputs()
    with pytest.raises(ValueError, match="Invalid value for argument " + match):
        call(model, x)


def test_auto_is_dense_when_small_and_matrix_free_above_the_limit(monkeypatch):
    from keras_dynloss.curvature import ntk_api as api

    model, x = model_and_inputs(dtype="float32", n=10)
    exact = np.linalg.eigvalsh(ntk_gram(model, x))[::-1]
    small = ntk_eigenvalues(model, x, k=2)
    assert small.method == "dense"
    np.testing.assert_allclose(small.eigenvalues, exact[:2], rtol=1e-10)
    n = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    limit = 10 * 3 * n * 8  # the Jacobian's bytes: a lower limit switches to Lanczos
    monkeypatch.setattr(api, "DENSE_NTK_MAX_BYTES", limit - 1)
    big = ntk_eigenvalues(model, x, k=2, order=10)
    assert big.method == "lanczos" and big.num_matvecs == 10
    np.testing.assert_allclose(big.eigenvalues, exact[:2], rtol=1e-4)
    monkeypatch.setattr(api, "DENSE_NTK_MAX_BYTES", limit)
    assert ntk_eigenvalues(model, x).method == "dense"


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("trace_outputs", [True, False])
def test_one_recorded_forward_pass_serves_every_product(trace_outputs, jit):
    # ntk_linearized_fn records the forward pass once; every product in the
    # compiled loop (J^T u, then J w as the transpose of that VJP) reuses it.
    from keras_dynloss.curvature.flat import FlatParameters
    from keras_dynloss.curvature.operators import ntk_linearized_fn

    model, x = model_and_inputs()
    jac = explicit_jacobian(model, x)
    if trace_outputs:
        expected = sum(jac[:, c] @ jac[:, c].T for c in range(3))
    else:
        expected = jac.reshape(18, -1) @ jac.reshape(18, -1).T
    flat = FlatParameters(model)
    lin = ntk_linearized_fn(flat, trace_outputs=trace_outputs, num_outputs=3)
    size = expected.shape[0]
    xt = tf.constant(x)

    dense = columns_in_one_loop(lambda: lin(flat.read(), xt), size, tf.float64, jit)
    np.testing.assert_allclose(dense, expected, rtol=1e-10, atol=1e-12)
