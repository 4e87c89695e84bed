"""`eos_ratio` beyond plain SGD: momentum, Nesterov, Adam, AdamW.

References: the dense Hessian, and for Adam a NumPy re-derivation of the
second moments `v_t = beta_2 v_{t-1} + (1 - beta_2) g_t^2` from the gradients of
a hand-written training loop (not the optimizer's slots), the preconditioner
`P = sqrt(v_hat) + eps / sqrt(1 - beta_2^t)` and `eigvalsh(P^-1/2 H P^-1/2)`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import CurvatureProbe
from conftest import explicit_hessian

F64 = "float64"
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)


def _model():
    keras.utils.set_random_seed(11)
    return keras.Sequential([
        keras.Input((2,), dtype=F64),
        keras.layers.Dense(6, activation="tanh", dtype=F64),
        keras.layers.Dense(3, dtype=F64),
    ])


def _data(n=20):
    rng = np.random.default_rng(12)
    return rng.standard_normal((n, 2)), rng.integers(0, 3, n)


def _train(model, optimizer, x, y, steps):
    """Custom loop; returns the gradients of every step (flat, float64)."""
    grads = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            value = LOSS(y, model(x, training=True))
        g = tape.gradient(value, model.trainable_variables)
        grads.append(np.concatenate([t.numpy().ravel() for t in g]))
        optimizer.apply_gradients(zip(g, model.trainable_variables))
    return grads


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_thresholds(momentum, nesterov):
    x, y = _data()
    model = _model()
    opt = keras.optimizers.SGD(0.25, momentum=momentum, nesterov=nesterov)
    _train(model, opt, x, y, 3)
    values = CurvatureProbe((x, y), loss=LOSS, optimizer=opt, lanczos_order=40, tol=1e-10).probe(model)
    lam = np.linalg.eigvalsh(explicit_hessian(model, LOSS, x, y))[-1]
    threshold = (2 + 2 * momentum) / 0.25
    if nesterov:
        threshold /= 1 + 2 * momentum
    assert values["hessian_max_eig"] == pytest.approx(lam, rel=1e-9)
    assert values["eos_ratio"] == pytest.approx(lam / threshold, rel=1e-6)  # lr is float32


@pytest.mark.parametrize("make", [
    lambda: keras.optimizers.Adam(0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-4),
    lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1, beta_1=0.8, beta_2=0.95, epsilon=1e-4),
    lambda: keras.optimizers.Adam(0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-4, amsgrad=True),
], ids=["adam", "adamw", "amsgrad"])
def test_adam_preconditioned_sharpness(make):
    x, y = _data()
    model = _model()
    opt = make()
    probe = CurvatureProbe((x, y), loss=LOSS, optimizer=opt, lanczos_order=40, tol=1e-10)
    opt.build(model.trainable_variables)
    assert np.isnan(probe.probe(model)["eos_ratio"])  # no update yet: P undefined
    t = 5
    grads = _train(model, opt, x, y, t)
    v = np.zeros_like(grads[0])
    v_max = np.zeros_like(grads[0])
    for g in grads:
        v = 0.95 * v + 0.05 * g**2
        v_max = np.maximum(v_max, v)
    if opt.amsgrad:
        v = v_max
    correction = 1 - 0.95**t
    p = np.sqrt(v / correction) + 1e-4 / np.sqrt(correction)
    h = explicit_hessian(model, LOSS, x, y)
    sharpness = np.linalg.eigvalsh(h / np.sqrt(np.outer(p, p)))[-1]
    values = probe.probe(model)
    assert values["preconditioned_max_eig"] == pytest.approx(sharpness, rel=1e-8)
    threshold = (2 + 2 * 0.8) / ((1 - 0.8) * 0.01)
    assert values["eos_ratio"] == pytest.approx(sharpness / threshold, rel=1e-6)  # lr is float32
    # Preconditioning matters: the plain sharpness gives another ratio.
    assert abs(values["hessian_max_eig"] / threshold - values["eos_ratio"]) > 0.1 * values["eos_ratio"]


def test_adam_in_fit_logs_eos_ratio():
    x, y = _data()
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=LOSS)
    probe = CurvatureProbe((x, y), every_n_steps=2, lanczos_order=20)
    history = model.fit(x, y, epochs=2, batch_size=5, verbose=0, callbacks=[probe])
    assert np.isnan(probe.history["eos_ratio"][0]) and np.all(np.isfinite(probe.history["eos_ratio"][1:]))
    assert history.history["eos_ratio"][-1] == probe.history["eos_ratio"][-1]
