"""`CurvatureProbe` during `model.fit`."""

import csv

import keras
import numpy as np
import pytest

from keras_dynloss.curvature import CurvatureProbe
from keras_dynloss.curvature import hessian_eigenvalues
from keras_dynloss.curvature import hessian_trace
from keras_dynloss.curvature import ntk_eigenvalues

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2)).astype("float32"), rng.integers(0, 3, n)


def _model(seed=0, bn=True, lr=0.1, momentum=0.9, steps_per_execution=1, loss=LOSS):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((2,)), keras.layers.Dense(8, activation="tanh")]
    if bn:
        layers += [keras.layers.BatchNormalization(), keras.layers.Dropout(0.3)]
    layers += [keras.layers.Dense(3)]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=momentum),
        loss=loss,
        steps_per_execution=steps_per_execution,
    )
    return model


def test_training_is_identical_with_and_without_probe():
    x, y = _data()
    plain = _model()
    plain.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    probed = _model()
    probe = CurvatureProbe(
        (x[:16], y[:16]), every_n_steps=3, top_k=2, lanczos_order=6, trace=True, trace_samples=3, ntk=True, ntk_order=4
    )
    probed.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[probe])
    assert len(probe.history["step"]) == 1 + 2  # start, steps 3 and 6 (8 steps)
    for a, b in zip(plain.variables, probed.variables):  # weights, BN stats, RNG state
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(plain.optimizer.variables, probed.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Training did move the weights (the comparison above is not vacuous).
    assert not np.allclose(_model().layers[0].kernel.numpy(), probed.layers[0].kernel.numpy())


class _BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))


def test_logs_history_and_csv(tmp_path):
    x, y = _data()
    model = _model(bn=False, momentum=0.0)
    probe = CurvatureProbe((x, y), every_n_steps=2, top_k=3, lanczos_order=8, trace=True, ntk=True)
    path = tmp_path / "log.csv"
    seen = _BatchLogs()
    history = model.fit(
        x, y, epochs=2, batch_size=8, verbose=0,
        callbacks=[probe, keras.callbacks.CSVLogger(str(path)), seen],
    )
    keys = ["hessian_max_eig", "hessian_eig_2", "hessian_eig_3", "hessian_trace",
            "hessian_trace_stderr", "ntk_max_eig", "eos_ratio"]
    for key in keys:
        assert key in history.history and len(history.history[key]) == 2
        assert len(probe.history[key]) == len(probe.history["step"])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for key in keys:
        assert float(rows[-1][key]) == pytest.approx(probe.history[key][-1], rel=1e-6)
    # Batch logs carry the values exactly on probing steps (2, 4, 6, 8).
    assert probe.history["step"] == [0, 2, 4, 6, 8]
    assert [("hessian_max_eig" in logs) for logs in seen.logs] == [False, True] * 4
    assert seen.logs[-1]["hessian_max_eig"] == probe.history["hessian_max_eig"][-1]
    h = probe.history
    assert all(a >= b >= c for a, b, c in zip(h["hessian_max_eig"], h["hessian_eig_2"], h["hessian_eig_3"]))
    np.testing.assert_allclose(h["eos_ratio"], np.array(h["hessian_max_eig"]) * 0.1 / 2, rtol=1e-6)


def test_steps_per_execution_records_true_steps():
    x, y = _data(n=48)
    model = _model(bn=False, steps_per_execution=4)
    probe = CurvatureProbe((x[:8], y[:8]), every_n_steps=5, lanczos_order=4)
    model.fit(x, y, epochs=1, batch_size=2, verbose=0, callbacks=[probe])  # 24 steps, 6 executions
    assert int(model.optimizer.iterations.numpy()) == 24
    # Hooks fire after steps 4, 8, ..., 24: probe at the first hook past each multiple of 5.
    assert probe.history["step"] == [0, 8, 12, 16, 20]


def test_every_n_epochs():
    x, y = _data()
    model = _model(bn=False)
    probe = CurvatureProbe((x, y), every_n_epochs=2, probe_at_start=False, lanczos_order=4)
    model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[probe])
    assert probe.history["step"] == [8, 16]
    assert probe.history["epoch"] == [1, 3]


def test_probe_values_match_entry_points_with_dynamical_loss():
    import keras_dynloss as dynloss
    x, y = _data(n=24)
    loss = dynloss.DynamicalLoss(3, amplitude=10.0, period=6, from_logits=True)
    model = _model(bn=False, lr=0.3, momentum=0.0, loss=loss)
    n_params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    probe_at_end = CurvatureProbe((x, y), every_n_steps=1, lanczos_order=20, ntk=True, ntk_order=12)
    model.fit(x, y, epochs=3, batch_size=24, verbose=0,
              callbacks=[dynloss.DynamicalLossScheduler(), probe_at_end])
    t = int(model.optimizer.iterations.numpy())
    assert probe_at_end.history["step"] == [0, 1, 2, 3] and t == 3
    fixed = loss.at_step(t)
    exact = hessian_eigenvalues(model, fixed, (x, y), order=n_params).eigenvalues[0]
    assert probe_at_end.history["hessian_max_eig"][-1] == pytest.approx(exact, rel=1e-3)
    assert probe_at_end.history["eos_ratio"][-1] == pytest.approx(exact * 0.3 / 2, rel=1e-3)
    ntk = ntk_eigenvalues(model, x).eigenvalues[0]
    assert probe_at_end.history["ntk_max_eig"][-1] == pytest.approx(ntk, rel=1e-3)
    # The Gamma(t) weighting matters: the unweighted loss gives another value.
    other = hessian_eigenvalues(model, LOSS, (x, y), order=n_params).eigenvalues[0]
    assert abs(other - exact) > 1e-3 * exact


def test_trace_matches_hutchinson_on_final_weights():
    x, y = _data(n=16)
    model = _model(bn=False, momentum=0.0)
    probe = CurvatureProbe((x, y), every_n_steps=2, trace=True, trace_samples=20, lanczos_order=3)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[probe])
    exact = hessian_trace(model, LOSS, (x, y), num_samples=200, seed=5)
    est, se = probe.history["hessian_trace"][-1], probe.history["hessian_trace_stderr"][-1]
    assert abs(est - exact.trace) <= 3 * np.hypot(se, exact.stderr)


def test_eos_ratio_with_unsupported_optimizer_warns():
    x, y = _data(n=8)
    model = _model(bn=False)
    model.compile(optimizer="rmsprop", loss=LOSS)
    probe = CurvatureProbe((x, y), lanczos_order=3)
    with pytest.warns(RuntimeWarning, match="eos_ratio"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[probe])
    assert "eos_ratio" not in probe.history and "hessian_max_eig" in probe.history


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(every_n_steps=2, every_n_epochs=1), "`every_n_epochs`"),
        (dict(every_n_steps=0), "`every_n_steps`"),
        (dict(every_n_epochs=1.5), "`every_n_epochs`"),
        (dict(top_k=5, lanczos_order=4), "`top_k`"),
        (dict(operator="fisher"), "`operator`"),
        (dict(tol=0.0), "`tol`"),
        (dict(warm_start_noise=-0.1), "`warm_start_noise`"),
        (dict(per_layer=1), "`per_layer`"),
        (dict(csv_path=3), "`csv_path`"),
        (dict(optimizer="sgd"), "`optimizer`"),
        (dict(jit_compile="yes"), "`jit_compile`"),
        (dict(lanczos_order=0), "`lanczos_order`"),
        (dict(trace_samples=1), "`trace_samples`"),
        (dict(ntk="yes"), "`ntk`"),
        (dict(hvp_mode="exact"), "`hvp_mode`"),
        (dict(seed=-1), "`seed`"),
        (dict(loss=3), "`loss`"),
    ],
)
def test_rejected_inputs(kwargs, match):
    x, y = _data(n=4)
    with pytest.raises(ValueError, match="Invalid value for argument " + match):
        CurvatureProbe((x, y), **kwargs)


def test_rejected_data():
    import tensorflow as tf

    x, y = _data(n=4)
    with pytest.raises(ValueError, match="Invalid value for argument `data`"):
        CurvatureProbe(x)
    with pytest.raises(ValueError, match="Invalid value for argument `data`"):
        CurvatureProbe((x[:0], y[:0]))
    # An empty dataset is refused at the first probe.
    model = _model(bn=False)
    probe = CurvatureProbe(tf.data.Dataset.from_tensor_slices((x, y)).batch(2).take(0))
    with pytest.raises(ValueError, match="Invalid value for argument `data`: expected a non-empty dataset"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[probe])
