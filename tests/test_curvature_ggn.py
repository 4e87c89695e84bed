"""Generalised Gauss-Newton `J^T H_out J` against a dense NumPy construction.

The reference builds the explicit output Jacobian `J` (one gradient per sample
and output) and the loss Hessian in the outputs from the closed-form softmax
cross-entropy Hessian `(diag(p) - p p^T) / N` (or `2 / (N K) I` for MSE).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import CurvatureProbe
from keras_dynloss.curvature import HessianOperator
from keras_dynloss.curvature import hessian_eigenvalues
from conftest import explicit_hessian

F64 = "float64"


def _model(regularizer=None):
    keras.utils.set_random_seed(7)
    return keras.Sequential([
        keras.Input((3,), dtype=F64),
        keras.layers.Dense(5, activation="tanh", dtype=F64, kernel_regularizer=regularizer),
        keras.layers.Dense(3, dtype=F64),
    ])


def _data(n=12):
    rng = np.random.default_rng(8)
    return rng.standard_normal((n, 3)) * 2, rng.integers(0, 3, n)


def _jacobian(model, x):
    n, k = x.shape[0], 3
    rows = []
    for i in range(n):
        for c in range(k):
            with tf.GradientTape() as tape:
                out = model(x[i:i + 1], training=False)[0, c]
            rows.append(np.concatenate([g.numpy().ravel() for g in tape.gradient(out, model.trainable_variables)]))
    return np.array(rows).reshape(n, k, -1)


def dense_ggn_crossentropy(model, x):
    jac = _jacobian(model, x)
    logits = model(x, training=False).numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = x.shape[0]
    return sum(jac[i].T @ ((np.diag(p[i]) - np.outer(p[i], p[i])) / n) @ jac[i] for i in range(n))


def test_ggn_equals_dense_jt_h_j_for_crossentropy():
    model = _model()
    x, y = _data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)
    op = HessianOperator(model, loss, (x, y), operator="gauss_newton")
    reference = dense_ggn_crossentropy(model, x)
    np.testing.assert_allclose(op.dense(), reference, rtol=1e-10, atol=1e-12)
    # Positive semi-definite, unlike the Hessian of the same loss here.
    assert np.linalg.eigvalsh(reference).min() > -1e-12
    hess = explicit_hessian(model, loss, x, y)
    assert np.linalg.eigvalsh(hess).min() < -1e-4
    assert not np.allclose(reference, hess, atol=1e-4)
    res = hessian_eigenvalues(model, loss, (x, y), operator="gauss_newton", order=20)
    assert res.eigenvalues[0] == pytest.approx(np.linalg.eigvalsh(reference)[-1], rel=1e-8)


def test_ggn_for_mse_is_two_over_nk_jt_j_plus_regularizer_hessian():
    model = _model(regularizer=keras.regularizers.L2(0.5))
    x, _ = _data()
    y = np.random.default_rng(9).standard_normal((12, 3))
    op = HessianOperator(model, keras.losses.MeanSquaredError(dtype=F64), (x, y), operator="gauss_newton")
    jac = _jacobian(model, x).reshape(36, -1)
    reg = np.zeros((op.size, op.size))
    reg[:15, :15] = np.eye(15)  # d^2/dW^2 of 0.5 * ||W||^2 on the first kernel (3 x 5)
    np.testing.assert_allclose(op.dense(), 2.0 / 36 * jac.T @ jac + reg, rtol=1e-10, atol=1e-12)


def test_probe_with_gauss_newton():
    model = _model()
    x, y = _data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss=loss)
    probe = CurvatureProbe((x, y), operator="gauss_newton", lanczos_order=30, tol=1e-9, trace=True,
                           trace_samples=300)
    model.fit(x, y, epochs=2, batch_size=6, verbose=0, callbacks=[probe])
    reference = dense_ggn_crossentropy(model, x)
    h = probe.history
    assert "hessian_max_eig" not in h
    assert h["gauss_newton_max_eig"][-1] == pytest.approx(np.linalg.eigvalsh(reference)[-1], rel=1e-8)
    assert h["eos_ratio"][-1] == pytest.approx(h["gauss_newton_max_eig"][-1] * 0.2 / 2, rel=1e-6)  # lr is float32
    assert abs(h["gauss_newton_trace"][-1] - np.trace(reference)) <= 3 * h["gauss_newton_trace_stderr"][-1]
