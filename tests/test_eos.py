"""`eos_ratio`: the stability edges of SGD (momentum, Nesterov) and Adam found by simulating
their updates on a quadratic, learning rates read from schedules (NaN at 0, the start of a
warmup), and Adam's preconditioner from a NumPy re-derivation of its second moments."""

import keras
import numpy as np
import pytest
from keras import ops

import _curvature_refs as ref
from keras_dynloss.curvature import CurvatureProbe, eos

pytestmark = pytest.mark.multi_backend


def _spectral_radius(curvature, lr, *, momentum=0.0, nesterov=False, beta_1=None):
    """Growth factor of Keras's update on `f(x) = curvature x^2 / 2` (frozen `P = 1` for
    Adam, whose first moment is `m <- beta_1 m + (1 - beta_1) g`)."""
    h = curvature
    if beta_1 is not None:  # (x, m) -> (x - lr m', m'), m' = beta_1 m + (1 - beta_1) h x
        a = np.array([[1 - lr * (1 - beta_1) * h, -lr * beta_1], [(1 - beta_1) * h, beta_1]])
    elif nesterov:  # v' = mu v - lr h x; x' = x + mu v' - lr h x
        a = np.array([[1 - lr * h * (1 + momentum), momentum ** 2], [-lr * h, momentum]])
    else:  # v' = mu v - lr h x; x' = x + v'
        a = np.array([[1 - lr * h, momentum], [-lr * h, momentum]])
    return np.abs(np.linalg.eigvals(a)).max()


def _edge(lr, **kwargs):
    """The curvature where the update stops converging, by bisection."""
    low, high = 1e-6, 1e6
    for _ in range(200):
        mid = np.sqrt(low * high)
        low, high = (mid, high) if _spectral_radius(mid, lr, **kwargs) < 1 else (low, mid)
    return low


@pytest.mark.parametrize("make, kwargs", [
    (lambda: keras.optimizers.SGD(0.25), {}),
    (lambda: keras.optimizers.SGD(0.25, momentum=0.9), dict(momentum=0.9)),
    (lambda: keras.optimizers.SGD(0.25, momentum=0.9, nesterov=True),
     dict(momentum=0.9, nesterov=True)),
    (lambda: keras.optimizers.Adam(0.25, beta_1=0.8), dict(beta_1=0.8)),
    (lambda: keras.optimizers.AdamW(0.25, beta_1=0.5), dict(beta_1=0.5))])
def test_the_ratio_is_one_at_the_edge_of_stability(make, kwargs):
    optimizer, edge = make(), _edge(0.25, **kwargs)
    assert eos.ratio(optimizer, edge) == pytest.approx(1.0, rel=1e-6)
    assert eos.ratio(keras.optimizers.LossScaleOptimizer(optimizer), edge / 2) == pytest.approx(
        0.5, rel=1e-6)
    assert np.isnan(eos.ratio(optimizer, edge, 0.0))  # learning rate 0: no update, undefined


def test_the_learning_rate_is_the_schedules_at_the_current_step():
    schedule = keras.optimizers.schedules.CosineDecay(0.0, 20, warmup_target=0.1, warmup_steps=4)
    optimizer = keras.optimizers.SGD(schedule)
    optimizer.build([keras.Variable(np.zeros(2))])
    for step, expected in ((0, 0.0), (3, 0.075), (14, 0.05)):  # warmup t/4, then a cosine
        optimizer.iterations.assign(step)
        assert float(ops.convert_to_numpy(eos.learning_rate(optimizer))) == pytest.approx(
            expected, rel=1e-6)


def _schedule():
    return keras.optimizers.schedules.CosineDecay(0.0, 20, warmup_target=0.1, warmup_steps=4)


def _lr(t):
    return 0.1 * t / 4 if t < 4 else 0.05 * (1 + np.cos(np.pi * (t - 4) / 20))


class _Snapshots(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_train_batch_begin(self, batch, logs=None):
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self.weights[step] = ref.theta_of(self.model)

    def on_train_end(self, logs=None):
        self.on_train_batch_begin(None)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw_amsgrad"])
def test_eos_ratio_through_a_warmup_from_zero(float64, name):
    make = {"sgd": lambda s: keras.optimizers.SGD(s),
            "momentum": lambda s: keras.optimizers.SGD(s, momentum=0.9),
            "nesterov": lambda s: keras.optimizers.SGD(s, momentum=0.9, nesterov=True),
            "adam": lambda s: keras.optimizers.Adam(s, beta_1=0.8, beta_2=0.95, epsilon=1e-4),
            "adamw_amsgrad": lambda s: keras.optimizers.AdamW(
                s, weight_decay=0.1, beta_1=0.8, beta_2=0.95, epsilon=1e-4, amsgrad=True)}[name]
    x, _, onehot = ref.data(n=16)
    model = ref.mlp()
    model.compile(optimizer=make(_schedule()), loss=ref.crossentropy_loss)
    snaps = _Snapshots()
    probe = CurvatureProbe((x, onehot), every_n_steps=1, lanczos_order=38, tol=1e-10)
    model.fit(x, onehot, batch_size=16, epochs=5, shuffle=False, verbose=0,
              callbacks=[snaps, probe])
    history = probe.history
    assert history["step"] == list(range(6)) and np.isnan(history["eos_ratio"][0])
    loss = ref.loss_of_theta(x, onehot)
    v = v_max = np.zeros(38)
    for t in range(1, 6):
        h = ref.dense_hessian(loss, snaps.weights[t])
        if name.startswith("adam"):
            g = ref.dense_jacobian(loss, snaps.weights[t - 1])
            v = 0.95 * v + 0.05 * g ** 2
            v_max = np.maximum(v_max, v)
            correction = 1 - 0.95 ** t
            p = np.sqrt((v_max if "amsgrad" in name else v) / correction) + 1e-4 / np.sqrt(
                correction)
            curvature = np.linalg.eigvalsh(h / np.sqrt(np.outer(p, p)))[-1]
            expected = curvature * _lr(t) * 0.2 / 3.6
            assert history["preconditioned_max_eig"][t] == pytest.approx(curvature, rel=1e-6)
        else:
            mu = 0.0 if name == "sgd" else 0.9
            factor = (1 + 2 * mu if name == "nesterov" else 1.0) / (2 + 2 * mu)
            expected = np.linalg.eigvalsh(h)[-1] * _lr(t) * factor
        assert history["eos_ratio"][t] == pytest.approx(expected, rel=1e-5), t


def test_an_optimizer_without_a_threshold_warns_and_logs_no_ratio(float64):
    x, _, onehot = ref.data(n=8)
    model = ref.mlp()
    model.compile(optimizer="rmsprop", loss=ref.crossentropy_loss)
    probe = CurvatureProbe((x, onehot), lanczos_order=3)
    with pytest.warns(RuntimeWarning, match="eos_ratio"):
        model.fit(x, onehot, epochs=1, verbose=0, callbacks=[probe])
    assert "eos_ratio" not in probe.history and "hessian_max_eig" in probe.history
