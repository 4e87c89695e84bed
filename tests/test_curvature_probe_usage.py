"""`CurvatureProbe` beyond a plain `fit`: schedule changes, custom loops, mixed
precision, CSV streaming. References are dense Hessians built independently."""

import csv
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_dynloss as dynloss
from keras_dynloss.curvature import CurvatureProbe
from conftest import explicit_hessian

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2)).astype("float32"), rng.integers(0, 3, n)


def _model(seed=0, width=5):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(width, activation="tanh"), keras.layers.Dense(3)]
    )


def _size(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def _lambda_max(model, loss, x, y):
    return float(np.linalg.eigvalsh(explicit_hessian(model, loss, x, y))[-1])


def test_probe_follows_a_new_period_set_by_the_scheduler():
    x, y = _data()
    loss = dynloss.DynamicalLoss(3, amplitude=10.0, period=4, from_logits=True)
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.3), loss=loss)
    probe = CurvatureProbe((x, y), every_n_steps=1, lanczos_order=_size(model), eos_ratio=False)
    # First fit: traces the probe with period 4.
    model.fit(x, y, epochs=1, batch_size=24, verbose=0,
              callbacks=[dynloss.DynamicalLossScheduler(), probe])
    # Second fit: the scheduler replaces the schedule (period 5 steps = 5 epochs x 1 step).
    model.fit(x, y, epochs=2, batch_size=24, verbose=0,
              callbacks=[dynloss.DynamicalLossScheduler(period_epochs=5), probe])
    t = int(model.optimizer.iterations.numpy())
    assert t == 3 and loss.period == 5 and probe.history["step"][-1] == 3
    gamma = loss.weights_at(t)
    assert not np.allclose(gamma, dynloss.ClassWeightSchedule(3, amplitude=10.0, period=4).weights_at(t))
    # Reference: cross-entropy weighted per sample by Gamma_{y_i}(t) at the new period.
    weighted = lambda yt, yp: LOSS(yt, yp, sample_weight=gamma[y])  # noqa: E731
    exact = _lambda_max(model, weighted, x, y)
    assert probe.history["hessian_max_eig"][-1] == pytest.approx(exact, rel=1e-4)


def test_custom_training_loop():
    x, y = _data()
    model = _model()  # never compiled
    optimizer = keras.optimizers.SGD(0.5)
    probe = CurvatureProbe((x, y), loss=LOSS, optimizer=optimizer, lanczos_order=_size(model))
    expected = []
    for step in range(1, 7):
        with tf.GradientTape() as tape:
            value = LOSS(y, model(x, training=True))
        grads = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if step % 3 == 0:
            values = probe.probe(model)
            expected.append(_lambda_max(model, LOSS, x, y))
            assert values["hessian_max_eig"] == pytest.approx(expected[-1], rel=1e-4)
    assert probe.history["step"] == [3, 6]
    np.testing.assert_allclose(probe.history["hessian_max_eig"], expected, rtol=1e-4)
    np.testing.assert_allclose(probe.history["eos_ratio"], np.array(expected) * 0.5 / 2, rtol=1e-4)
    assert expected[0] != pytest.approx(expected[1], rel=1e-3)  # the weights did move


def test_custom_loop_without_optimizer_needs_a_step():
    x, y = _data(n=8)
    model = _model()
    probe = CurvatureProbe((x, y), loss=LOSS, lanczos_order=4, eos_ratio=False)
    with pytest.raises(ValueError, match="argument `step`"):
        probe.probe(model)
    probe.probe(model, step=7)
    assert probe.history["step"] == [7]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_probe_runs_in_float32(policy):
    x, y = _data(n=32)
    previous = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy(policy)
        model = _model(width=16)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
        probe = CurvatureProbe((x, y), every_n_steps=2, lanczos_order=40)
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[probe])
        low = _lambda_max(model, LOSS, x, y)  # the model itself: 16-bit products
    finally:
        keras.mixed_precision.set_global_policy(previous)
    # Reference: a float32 twin with the same (float32) weights.
    twin = _model(width=16)
    twin.set_weights(model.get_weights())
    exact = _lambda_max(twin, LOSS, x, y)
    probed = probe.history["hessian_max_eig"][-1]
    assert probed == pytest.approx(exact, rel=1e-6)
    # The tolerance is meaningful: 16-bit products miss it (by ~8e-5 here).
    assert abs(low - exact) > 1e-5 * exact
    assert probe.history["eos_ratio"][-1] == pytest.approx(probed * 0.1 / 2, rel=1e-6)
    assert keras.mixed_precision.global_policy().name == previous.name


def _run_spiral(spiral, **probe_kwargs):
    x, y = spiral
    model = _model(seed=3, width=6)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=LOSS)
    probe = CurvatureProbe((x, y), every_n_steps=2, top_k=2, lanczos_order=6, trace=True,
                           trace_samples=3, ntk=True, ntk_order=4, seed=4, **probe_kwargs)
    model.fit(x, y, epochs=2, batch_size=30, verbose=0, callbacks=[probe])
    return probe


def test_csv_stream_equals_history(tmp_path, spiral):
    kept = _run_spiral(spiral)
    path = tmp_path / "probe.csv"
    streamed = _run_spiral(spiral, csv_path=path)
    assert streamed.history == {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(kept.history["step"]) == 1 + 3 * 2 // 2  # start + steps 2,4,6
    assert list(rows[0]) == list(kept.history)  # same columns, same order
    for key, column in kept.history.items():
        np.testing.assert_allclose([float(r[key]) for r in rows], column, rtol=1e-12)
    assert streamed.latest == {k: v[-1] for k, v in kept.history.items() if k not in ("step", "epoch")}


def test_csv_and_history_keep_columns_aligned_when_a_key_appears(tmp_path):
    from keras_dynloss.curvature._records import Recorder

    for path in (None, tmp_path / "r.csv"):
        rec = Recorder(path)
        rec.record({"step": 0, "a": 1.0})
        rec.record({"step": 1, "a": 2.0, "b": 5.0})
        rec.record({"step": 2, "b": 6.0})
        if path is None:
            table = rec.history
        else:
            with open(path) as f:
                rows = list(csv.DictReader(f))
            table = {k: [float(r[k]) for r in rows] for k in rows[0]}
        np.testing.assert_array_equal(table["step"], [0, 1, 2])
        np.testing.assert_array_equal(table["a"], [1.0, 2.0, np.nan])
        np.testing.assert_array_equal(table["b"], [np.nan, 5.0, 6.0])


def _conv_model(seed=0):
    """A tiny CNN whose convolution sits in a nested Sequential."""
    keras.utils.set_random_seed(seed)
    features = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3, activation="tanh")])
    inputs = keras.Input((4, 4, 1))
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(features(inputs))))


_ON_CPU = not tf.config.list_logical_devices("GPU") and not tf.config.list_logical_devices("TPU")


def _xla_cpu_warnings(fn):
    """Runs `fn()`; returns the messages of the warnings naming the XLA CPU issue."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in seen if "jax-ml/jax#12868" in str(w.message)]


def test_xla_probe_of_a_cnn_warns_on_cpu_only_and_stays_exact():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4, 4, 1)).astype("float32"), rng.integers(0, 3, 6)
    model = _conv_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    probe = CurvatureProbe((x, y), lanczos_order=_size(model), tol=None, warm_start=False, eos_ratio=False,
                           jit_compile=True)
    values, messages = _xla_cpu_warnings(lambda: probe.probe(model))
    if _ON_CPU:  # XLA's CPU convolutions in loops are slow; a GPU or TPU machine gets no warning
        assert len(messages) == 1 and re.search(r"jit_compile=True.*convolutions", messages[0])
    else:
        assert not messages
    assert values["hessian_max_eig"] == pytest.approx(_lambda_max(model, LOSS, x, y), rel=1e-4)


def test_no_xla_warning_without_convolutions_or_without_xla():
    x, y = _data()
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    probe = CurvatureProbe((x, y), lanczos_order=4, eos_ratio=False, jit_compile=True)
    assert not _xla_cpu_warnings(lambda: probe.probe(model))[1]
    cnn = _conv_model()
    cnn.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    rng = np.random.default_rng(0)
    xc, yc = rng.standard_normal((6, 4, 4, 1)).astype("float32"), rng.integers(0, 3, 6)
    assert not _xla_cpu_warnings(lambda: CurvatureProbe((xc, yc), lanczos_order=4, eos_ratio=False).probe(cnn))[1]


def test_in_step_probe_in_a_jit_compiled_cnn_step_warns_on_cpu_only():
    from keras_dynloss.curvature import InStepProbe

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4, 4, 1)).astype("float32"), rng.integers(0, 3, 6)
    model = _conv_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, jit_compile=True)
    in_step = InStepProbe(CurvatureProbe((x, y), every_n_steps=5, eos_ratio=False), capacity=4)
    _, messages = _xla_cpu_warnings(lambda: in_step.build(model))
    if _ON_CPU:
        assert len(messages) == 1 and "jit-compiled training step" in messages[0]
    else:
        assert not messages
    plain = _conv_model()
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, jit_compile=False)
    _, messages = _xla_cpu_warnings(
        lambda: InStepProbe(CurvatureProbe((x, y), every_n_steps=5, eos_ratio=False), capacity=4).build(plain))
    assert not messages
