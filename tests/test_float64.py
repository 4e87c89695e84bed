"""float64 end to end: ``model.fit`` with a float64 DynamicalLoss vs a NumPy GD loop.

The reference is an independent float64 NumPy re-derivation of the whole step:
forward pass of Dense(W)-ReLU-Dense(3), Γ(t) from ``numpy_gamma`` (conftest),
softmax cross-entropy weighted by Γ_{y_μ}, and the hand-written backward pass

    dF/dlogits = Γ_{y_μ} (softmax(logits) - onehot(y)) / P
    dW2 = hᵀ dlogits, db2 = Σ_μ dlogits, dh = dlogits W2ᵀ ⊙ [z > 0]
    dW1 = xᵀ dh,       db1 = Σ_μ dh

followed by ``W ← W - η dW``. Anything float32 on the way (the points, Γ's
phase, the loss, the recorder) shows as a difference of ~1e-8, far above 1e-12.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_dynloss as kd
from keras_dynloss.datasets import spiral
from keras_dynloss.experiments._spiral import build_mlp, train_spiral

from conftest import numpy_gamma

STEPS, PERIOD, AMPLITUDE, LR, WIDTH = 300, 50, 20.0, 1.0, 12
STATIC_AFTER = STEPS - PERIOD
TOL = 1e-12


def numpy_gd(x, y, weights, *, steps, lr, amplitude, period, static_after):
    """Full-batch GD in float64 NumPy; returns final weights and per-step F, accuracy."""
    w1, b1, w2, b2 = (np.array(w, np.float64) for w in weights)
    p, c = len(y), w2.shape[1]
    onehot = np.eye(c)[y]
    losses, accs = [], []
    for t in range(steps):
        gamma = numpy_gamma(t, c, amplitude, period, static_after=static_after)
        z = x @ w1 + b1
        h = np.maximum(z, 0.0)
        logits = h @ w2 + b2
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        g = gamma[y]
        losses.append(np.mean(-g * logp[np.arange(p), y]))
        accs.append(np.mean(logits.argmax(-1) == y))
        dlogits = g[:, None] * (np.exp(logp) - onehot) / p
        dw2, db2 = h.T @ dlogits, dlogits.sum(0)
        dh = (dlogits @ w2.T) * (z > 0)
        dw1, db1 = x.T @ dh, dh.sum(0)
        w1, b1, w2, b2 = w1 - lr * dw1, b1 - lr * db1, w2 - lr * dw2, b2 - lr * db2
    return [w1, b1, w2, b2], np.array(losses), np.array(accs)


@pytest.fixture(scope="module")
def reference():
    x, y = spiral(dtype="float64")
    weights = build_mlp(WIDTH, dtype="float64", seed=0).get_weights()
    final, losses, accs = numpy_gd(x, y, weights, steps=STEPS, lr=LR, amplitude=AMPLITUDE,
                                   period=PERIOD, static_after=STATIC_AFTER)
    return dict(x=x, y=y, weights=weights, final=final, losses=losses, accs=accs)


def test_reference_is_not_trivial(reference):
    # Γ changes within a period and the weights move far: a wrong Γ, a float32
    # step or no step at all would be visible.
    g = [numpy_gamma(t, 3, AMPLITUDE, PERIOD, static_after=STATIC_AFTER)
         for t in (0, 25, 75, STATIC_AFTER)]
    assert g[1][0] > 2.5 and g[2][1] > 2.5 and np.allclose(g[3], 1) and np.allclose(g[0], 1)
    moved = max(np.abs(a - b).max() for a, b in zip(reference["final"], reference["weights"]))
    assert moved > 0.1
    assert reference["losses"][-1] < reference["losses"][0] - 0.02


def test_float64_fit_matches_numpy_gradient_descent(reference):
    x, y = reference["x"], reference["y"]
    model = build_mlp(WIDTH, dtype="float64", seed=0)
    model.set_weights(reference["weights"])
    loss = kd.DynamicalLoss(3, amplitude=AMPLITUDE, period=PERIOD, from_logits=True,
                            static_after=STATIC_AFTER, dtype="float64")
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss, steps_per_execution=50)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    hist = model.fit(data, epochs=STEPS // 100, steps_per_epoch=100, verbose=0,
                     callbacks=[kd.DynamicalLossScheduler(log_weights=False)], shuffle=False)
    assert int(model.optimizer.iterations.numpy()) == STEPS
    for got, want in zip(model.get_weights(), reference["final"]):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    # Keras's epoch loss is the mean of F over the epoch's steps, kept by Keras's
    # own loss tracker, a float32 `Mean` metric (so float32 tolerance here).
    np.testing.assert_allclose(hist.history["loss"],
                               reference["losses"].reshape(-1, 100).mean(1), rtol=1e-6)


def test_float64_train_spiral_records_float64(reference):
    res = train_spiral(width=WIDTH, amplitude=AMPLITUDE, period=PERIOD, steps=STEPS,
                       seed=0, learning_rate=LR, dtype="float64", record=True,
                       steps_per_execution=60)
    assert res["loss"].dtype == np.float64 and res["accuracy"].dtype == np.float64
    np.testing.assert_allclose(res["loss"], reference["losses"], rtol=TOL, atol=0)
    # Same correct predictions at every step (one is 1/300; XLA's mean may round
    # differently from NumPy's in the last bit).
    np.testing.assert_allclose(res["accuracy"], reference["accs"], rtol=0, atol=1e-15)
    w1, b1, w2, b2 = reference["final"]
    logits = np.maximum(reference["x"] @ w1 + b1, 0) @ w2 + b2
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    final_loss = -np.mean(logp[np.arange(len(reference["y"])), reference["y"]])
    assert abs(res["final_loss"] - final_loss) <= TOL * final_loss
    assert res["final_acc"] == np.mean(logits.argmax(-1) == reference["y"])
