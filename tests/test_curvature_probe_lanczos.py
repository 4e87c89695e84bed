"""`CurvatureProbe`'s Lanczos: warm start, residual stop, fresh probe batches.
References are dense Hessians (explicit or closed form)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import CurvatureProbe
from conftest import explicit_hessian, tiny_mlp

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit(spiral, **probe_kwargs):
    x, y = spiral
    model = tiny_mlp(width=10, seed=1)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=LOSS)
    probe = CurvatureProbe((x, y), every_n_steps=1, lanczos_order=40, **probe_kwargs)
    model.fit(x, y, epochs=8, batch_size=90, verbose=0, callbacks=[probe])
    return model, probe


def test_warm_start_saves_products_and_the_residual_bounds_the_error(spiral):
    x, y = spiral
    model, warm = _fit(spiral, tol=1e-4, warm_start_noise=0.01)
    _, cold = _fit(spiral, tol=1e-4, warm_start=False)
    exact = np.linalg.eigvalsh(explicit_hessian(model, LOSS, x, y))[-1]
    for probe in (warm, cold):
        h = probe.history
        assert len(h["step"]) == 9
        assert h["hessian_max_eig_residual"][-1] <= 1e-4 * h["hessian_max_eig"][-1]
        # |theta - lambda| <= residual (Kato/Weyl bound for a unit Ritz vector).
        assert abs(h["hessian_max_eig"][-1] - exact) <= h["hessian_max_eig_residual"][-1] * (1 + 1e-6) + 1e-6
    # Same values both ways, to the residuals ...
    np.testing.assert_allclose(warm.history["hessian_max_eig"], cold.history["hessian_max_eig"], rtol=3e-4)
    # ... for fewer products after the first (cold) probe.
    w, c = warm.history["hessian_matvecs"], cold.history["hessian_matvecs"]
    assert w[0] == c[0]
    assert sum(w[1:]) < 0.8 * sum(c[1:])


def test_without_tolerance_every_probe_runs_the_full_order(spiral):
    x, y = spiral
    model = tiny_mlp(width=4, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=LOSS)
    probe = CurvatureProbe((x, y), every_n_steps=2, lanczos_order=7, tol=None)
    model.fit(x, y, epochs=4, batch_size=90, verbose=0, callbacks=[probe])
    assert probe.history["hessian_matvecs"] == [7, 7, 7]


def _linear(k=2, d=4):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((d,), dtype="float64"),
                             keras.layers.Dense(k, use_bias=False, dtype="float64")])


def test_fresh_batches_and_a_new_top_direction():
    # Linear model, MSE: H = 2 / (N K) X^T X (x) I_K, independent of the weights,
    # so the exact value of each probe is known in closed form from its batch.
    rng = np.random.default_rng(0)
    scales = [np.array([3.0, 1.0, 0.5, 0.2]), np.array([0.5, 1.0, 4.0, 0.2])]  # top direction moves e0 -> e2
    batches = []
    for s in scales:
        x = rng.standard_normal((16, 4)) * s
        batches.append((x, rng.standard_normal((16, 2))))
    ds = tf.data.Dataset.from_tensor_slices(
        (np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])))
    model = _linear()
    probe = CurvatureProbe(ds, loss=keras.losses.MeanSquaredError(dtype="float64"), lanczos_order=8,
                           tol=1e-8, eos_ratio=False)
    assert probe.stochastic
    values = [probe.probe(model, step=i)["hessian_max_eig"] for i in range(3)]
    exact = [np.linalg.eigvalsh(2.0 / 32 * b[0].T @ b[0])[-1] for b in batches]
    # Probe 2 starts from probe 1's top vector (direction ~e0) yet finds e2's eigenvalue.
    np.testing.assert_allclose(values, [exact[0], exact[1], exact[0]], rtol=1e-8)
    assert exact[1] > 2 * exact[0] or exact[0] > 2 * exact[1]
    assert probe.history["probe_batch"] == [0, 1, 2]  # the dataset is re-iterated when exhausted


def test_xla_compiled_probe_matches_the_dense_hessian():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((2,), dtype="float64"),
                              keras.layers.Dense(5, activation="tanh", dtype="float64"),
                              keras.layers.Dense(3, dtype="float64")])
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((20, 2)), rng.integers(0, 3, 20)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    probe = CurvatureProbe((x, y), loss=loss, jit_compile=True, lanczos_order=30, tol=1e-10, top_k=2,
                           ntk=True, trace=True, trace_samples=200, eos_ratio=False)
    values = probe.probe(model, step=0)
    h = explicit_hessian(model, loss, x, y)
    exact = np.linalg.eigvalsh(h)[::-1]
    np.testing.assert_allclose([values["hessian_max_eig"], values["hessian_eig_2"]], exact[:2], rtol=1e-9)
    assert abs(values["hessian_trace"] - np.trace(h)) <= 3 * values["hessian_trace_stderr"]
    from keras_dynloss.curvature import ntk_gram
    assert values["ntk_max_eig"] == pytest.approx(np.linalg.eigvalsh(ntk_gram(model, x))[-1], rel=1e-6)
