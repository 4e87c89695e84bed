"""The spiral runner (`FullBatchSequential` in one `fit` call) against a NumPy gradient-descent
loop: the weights, the recorded F(t) and accuracy, on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from conftest import BACKEND, numpy_gamma, numpy_gd
from keras_dynloss.datasets import spiral
from keras_dynloss.experiments import _spiral

pytestmark = pytest.mark.multi_backend


def _numpy_record(weights, x, y, steps, lr, gamma_at):
    """F(t) and accuracy(t) before each update, from the NumPy loop's weights."""
    loss, acc = [], []
    for t in range(steps):
        w1, b1, w2, b2 = weights
        z = np.maximum(x @ w1 + b1, 0) @ w2 + b2
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        loss.append(np.mean(gamma_at(t)[y] * -logp[np.arange(len(y)), y]))
        acc.append(np.mean(z.argmax(-1) == y))
        weights = numpy_gd(weights, x, y, 1, lr, lambda _: gamma_at(t))
    return np.array(loss), np.array(acc), weights


@pytest.mark.parametrize("jit_compile", [True, False])
def test_runner_equals_numpy_gradient_descent(jit_compile, float64):
    steps, period, width = 23, 6, 5  # 23 = 4 batches of 6 updates, the last one cut short
    dtype = "float32" if BACKEND == "torch" else "float64"  # torch: keras-team/keras#23704
    x, y = spiral(dtype=dtype)
    start = _spiral.build_mlp(width, seed=3, dtype=dtype).get_weights()
    out = _spiral.train_spiral(width=width, amplitude=20.0, period=period, steps=steps, seed=3,
                               dtype=dtype, record=True, updates_per_batch=6,
                               jit_compile=jit_compile)

    def gamma(t):
        return numpy_gamma(t, 3, 20.0, period, static_after=steps - period)

    loss, acc, final = _numpy_record(start, x.astype(np.float64), y, steps, 1.0, gamma)
    tol = 1e-5 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(out["loss"], loss, rtol=tol)
    np.testing.assert_allclose(out["accuracy"], acc)
    assert out["loss"].dtype == dtype
    np.testing.assert_allclose(out["gamma"][out["gamma_steps"] == 9][0], gamma(9), rtol=tol)
    logits = np.maximum(x @ final[0] + final[1], 0) @ final[2] + final[3]
    assert out["final_acc"] == pytest.approx(np.mean(logits.argmax(-1) == y))
