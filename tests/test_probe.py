"""`CurvatureProbe` during `fit` and in custom loops, against dense references: the
framework's own Hessian / Jacobian of an independently written MLP (`_curvature_refs`),
closed forms for linear models, and the logs the values must reach."""

import csv
import glob
import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import _curvature_refs as ref
import keras_dynloss as kd
from conftest import BACKEND, numpy_gamma
from keras_dynloss.curvature import CurvatureProbe, InStepProbe

multi_backend = pytest.mark.multi_backend
LOSS = ref.crossentropy_loss
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(optimizer=None, loss=LOSS, **compile_kwargs):
    model = ref.mlp()
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1), loss=loss, **compile_kwargs)
    return model


def _fit(model, x, y, callbacks, epochs=2, batch_size=None, **kwargs):
    return model.fit(x, y, batch_size=batch_size or len(x), epochs=epochs, shuffle=False,
                     verbose=0, callbacks=callbacks, **kwargs).history


def _top(matrix, k=1):
    return np.linalg.eigvalsh(matrix)[::-1][:k]


def _close(value, exact, rtol=None):
    return value == pytest.approx(exact, rel=rtol or max(ref.TOL["rtol"], 1e-8))


class _Snapshots(keras.callbacks.Callback):
    """The weights at every step (listed before the probe: they see the same weights)."""

    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_train_begin(self, logs=None):
        self._take()

    def on_train_batch_end(self, batch, logs=None):
        self._take()

    def _take(self):
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self.weights[step] = ref.theta_of(self.model)


@multi_backend
@pytest.mark.parametrize("operator, micro_batch_size, jit_compile", [
    ("hessian", None, False), ("gauss_newton", None, False), ("hessian", 4, False),
    ("hessian", None, True)])
def test_values_equal_dense_references(float64, operator, micro_batch_size, jit_compile):
    x, _, onehot = ref.data(n=8)
    model = _model()
    probe = CurvatureProbe((x, onehot), every_n_steps=1, operator=operator, top_k=2,
                           lanczos_order=38, tol=1e-10, per_layer=True, ntk=True, ntk_order=8,
                           trace=True, trace_samples=40, micro_batch_size=micro_batch_size,
                           jit_compile=jit_compile, eos_ratio=False)
    _fit(model, x, onehot, [probe])
    assert probe.history["step"] == [0, 1, 2]
    values, p = probe.latest, operator
    dense = ref.hessian(model, x, onehot) if operator == "hessian" else ref.gauss_newton(model, x)
    assert _close(values[f"{p}_max_eig"], _top(dense)[0])
    assert _close(values[f"{p}_eig_2"], _top(dense, 2)[1])
    for name, block in (("hidden", slice(0, 20)), ("head", slice(20, 38))):
        assert _close(values[f"{p}_max_eig/{name}"], _top(dense[block, block])[0])
    assert abs(values[f"{p}_trace"] - np.trace(dense)) <= 4 * values[f"{p}_trace_stderr"]
    jac = ref.jacobian(model, x)
    assert _close(values["ntk_max_eig"], _top(np.einsum("ikp,jkp->ij", jac, jac))[0])
    assert values[f"{p}_max_eig_residual"] <= 1e-6 * values[f"{p}_max_eig"]


@multi_backend
def test_a_dynamical_loss_is_probed_at_each_step(float64):
    """Γ(t) of every probed step (a traced argument under `jax.jit`), not a stale one."""
    x, y, onehot = ref.data(n=12)
    loss = kd.DynamicalLoss(3, amplitude=10.0, period=4, from_logits=True, dtype="float64")
    model = _model(keras.optimizers.SGD(0.5), loss)
    snaps = _Snapshots()
    probe = CurvatureProbe((x, y), every_n_steps=1, lanczos_order=38, tol=1e-10)
    _fit(model, x, y, [kd.DynamicalLossScheduler(), snaps, probe], epochs=6)
    assert probe.history["step"] == list(range(7))
    for step, value in zip(probe.history["step"], probe.history["hessian_max_eig"]):
        gamma = ops.convert_to_tensor(numpy_gamma(step, 3, 10.0, 4)[y])
        exact = _top(ref.dense_hessian(lambda t: ref.crossentropy(
            ref.logits(t, ops.convert_to_tensor(x)), ops.convert_to_tensor(onehot), gamma),
            snaps.weights[step]))[0]
        assert _close(value, exact, 1e-6), (step, value, exact)
        assert probe.history["eos_ratio"][step] == pytest.approx(value * 0.5 / 2)
    plain = _top(ref.hessian(model, x, onehot))[0]  # Γ matters: unweighted is another value
    assert abs(plain - probe.history["hessian_max_eig"][-1]) > 1e-3 * plain


def _bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(6, activation="tanh"),
                              keras.layers.BatchNormalization(momentum=0.5),
                              keras.layers.Dropout(0.3), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@multi_backend
@pytest.mark.parametrize("training", [False, True])
def test_training_is_bitwise_identical_with_and_without_the_probe(training):
    x, y, _ = ref.data(n=24, dtype="float32")
    x = 3.0 * x + 1.0
    plain = _bn_model()
    keras.utils.set_random_seed(1)
    _fit(plain, x, y, [], epochs=2, batch_size=8)
    probed = _bn_model()
    probe = CurvatureProbe((x[:12], y[:12]), every_n_steps=2, top_k=2, lanczos_order=6,
                           trace=True, trace_samples=3, ntk=True, ntk_order=4, per_layer=True,
                           training=training)
    keras.utils.set_random_seed(1)
    _fit(probed, x, y, [probe], epochs=2, batch_size=8)
    assert probe.history["step"] == [0, 2, 4, 6]
    assert np.isnan(probe.history["eos_ratio"][0]) and np.isfinite(probe.history["eos_ratio"][-1])
    for a, b in zip(plain.variables + plain.optimizer.variables,
                    probed.variables + probed.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    moving = ops.convert_to_numpy(probed.layers[1].moving_mean)
    assert not np.allclose(moving, 0.0)  # training moved the statistics the probe must not


def _scalars(log_dir):
    """{tag: {step: value}} from the event files under `log_dir`."""
    import tensorflow as tf

    out = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = (tf.make_ndarray(value.tensor) if value.HasField("tensor")
                          else value.simple_value)
                if np.asarray(number).dtype.kind == "f":
                    out.setdefault(value.tag, {})[event.step] = float(number)
    return out


class _BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs or {}))


@multi_backend
@pytest.mark.parametrize("tensorboard_first", [False, True])
def test_values_reach_logs_history_csv_and_tensorboard(float64, tmp_path, tensorboard_first):
    x, y, onehot = ref.data(n=16)
    probe = CurvatureProbe((x, onehot), every_n_steps=2, top_k=2, lanczos_order=12, ntk=True,
                           trace=True)
    board = keras.callbacks.TensorBoard(str(tmp_path / "tb"))
    seen = _BatchLogs()
    order = [board, probe] if tensorboard_first else [probe, board]
    history = _fit(_model(), x, onehot, order + [keras.callbacks.CSVLogger(
        str(tmp_path / "log.csv")), seen], epochs=2, batch_size=4)
    h = probe.history
    assert h["step"] == [0, 2, 4, 6, 8] and h["epoch"] == [0, 0, 0, 1, 1]
    keys = ["hessian_max_eig", "hessian_eig_2", "hessian_trace", "ntk_max_eig", "eos_ratio"]
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    for key in keys:  # every epoch's logs: the epoch's last probe
        assert history[key] == [h[key][2], h[key][4]]
        assert [float(r[key]) for r in rows] == pytest.approx([h[key][2], h[key][4]])
    assert [("hessian_max_eig" in logs) for logs in seen.logs] == [False, True] * 4
    assert seen.logs[-1]["hessian_max_eig"] == h["hessian_max_eig"][-1]
    np.testing.assert_allclose(h["eos_ratio"], np.array(h["hessian_max_eig"]) * 0.1 / 2)
    scalars = _scalars(str(tmp_path / "tb" / "train"))
    for key in keys:  # keyed by the optimizer step, in either callback order
        assert scalars[key] == pytest.approx(dict(zip(h["step"], h[key])), rel=1e-6)


@multi_backend
def test_csv_path_streams_what_history_keeps(float64, tmp_path):
    x, _, onehot = ref.data(n=8)
    kept, streamed = (CurvatureProbe((x, onehot), every_n_steps=2, lanczos_order=6, ntk=True,
                                     csv_path=path) for path in (None, tmp_path / "p.csv"))
    for probe in (kept, streamed):
        _fit(_model(), x, onehot, [probe], epochs=4)
    assert streamed.history == {} and len(kept.history["step"]) == 3
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(kept.history)
    for key, column in kept.history.items():
        np.testing.assert_allclose([float(r[key]) for r in rows], column, rtol=1e-12)


@multi_backend
def test_warm_start_saves_products_and_the_residual_bounds_the_error(float64):
    x, _, onehot = ref.data(n=32)
    runs = {}
    for warm in (True, False):
        model = _model(keras.optimizers.SGD(0.5))
        runs[warm] = CurvatureProbe((x, onehot), every_n_steps=1, lanczos_order=38, tol=1e-4,
                                    warm_start=warm)
        _fit(model, x, onehot, [runs[warm]], epochs=8)
    exact = _top(ref.hessian(model, x, onehot))[0]
    for probe in runs.values():
        h = probe.history
        assert h["hessian_max_eig_residual"][-1] <= 1e-4 * h["hessian_max_eig"][-1]
        assert abs(h["hessian_max_eig"][-1] - exact) <= h["hessian_max_eig_residual"][-1] * 1.01
    np.testing.assert_allclose(runs[True].history["hessian_max_eig"],
                               runs[False].history["hessian_max_eig"], rtol=3e-4)
    warm, cold = runs[True].history["hessian_matvecs"], runs[False].history["hessian_matvecs"]
    assert warm[0] == cold[0] and sum(warm[1:]) < 0.8 * sum(cold[1:])


def _linear(d=4, k=2):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((d,), dtype="float64"),
                             keras.layers.Dense(k, use_bias=False, dtype="float64")])


@multi_backend
def test_dataset_probes_draw_fresh_batches_and_skip_a_short_one(float64):
    """Linear model, MSE: `H = 2 / (N K) X^T X (x) I_K`, known from each batch."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    scales = [[3.0, 1.0, 0.5, 0.2], [0.5, 1.0, 4.0, 0.2], [1.0, 1.0, 1.0, 9.0]]
    x = np.concatenate([rng.standard_normal((n, 4)) * s for n, s in zip((16, 16, 8), scales)])
    y = rng.standard_normal((40, 2))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # 16, 16, then 8
    probe = CurvatureProbe(dataset, loss=keras.losses.MeanSquaredError(dtype="float64"),
                           lanczos_order=8, tol=1e-8, eos_ratio=False)
    model = _linear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = [probe.probe(model, step=i)["hessian_max_eig"] for i in range(4)]
    exact = [_top(2.0 / 32 * b.T @ b)[0] for b in (x[:16], x[16:32])]
    # Probe 1 starts from probe 0's top vector (along e0), yet finds batch 1's (along e2).
    np.testing.assert_allclose(values, [exact[0], exact[1], exact[0], exact[1]],
                               rtol=max(ref.TOL["rtol"], 1e-8))
    skipped = [str(w.message) for w in caught if "skipped a probe batch" in str(w.message)]
    assert len(skipped) == 1 and "of 8 samples" in skipped[0]
    assert probe.history["probe_batch"] == [0, 1, 2, 3]
    empty = CurvatureProbe(dataset.take(0), loss=keras.losses.MeanSquaredError())
    with pytest.raises(ValueError, match="argument `data`: expected a non-empty dataset"):
        empty.probe(model, step=0)


@multi_backend
def test_custom_loops_probe_at_the_optimizer_step_or_a_given_one(float64):
    x, _, onehot = ref.data(n=8)
    model = _model(keras.optimizers.SGD(0.3))
    _fit(model, x, onehot, [], epochs=3)
    probe = CurvatureProbe((x, onehot), lanczos_order=38, tol=1e-10)
    values = probe.probe(model)
    assert probe.history["step"] == [3]
    assert _close(values["hessian_max_eig"], _top(ref.hessian(model, x, onehot))[0])
    assert values["eos_ratio"] == pytest.approx(values["hessian_max_eig"] * 0.3 / 2)
    bare = ref.mlp()  # never compiled: no optimizer, no step
    probe = CurvatureProbe((x, onehot), loss=LOSS, lanczos_order=4)
    with pytest.raises(ValueError, match="argument `step`"):
        probe.probe(bare)
    probe.probe(bare, step=7)
    assert probe.history["step"] == [7] and "eos_ratio" not in probe.latest


@multi_backend
def test_probe_schedule_steps_epochs_and_steps_per_execution(float64):
    x, _, onehot = ref.data(n=48)
    if BACKEND != "torch":  # PyTorch has no steps_per_execution
        model = _model(steps_per_execution=4)
        probe = CurvatureProbe((x[:8], onehot[:8]), every_n_steps=5, lanczos_order=4)
        _fit(model, x, onehot, [probe], epochs=1, batch_size=2)  # 24 steps, hooks every 4
        assert probe.history["step"] == [0, 8, 12, 16, 20]  # the first hook past each multiple
    probe = CurvatureProbe((x[:8], onehot[:8]), every_n_epochs=2, probe_at_start=False,
                           lanczos_order=4)
    _fit(_model(), x, onehot, [probe], epochs=4, batch_size=24)
    assert probe.history["step"] == [4, 8] and probe.history["epoch"] == [1, 3]


@multi_backend
def test_a_new_period_set_by_the_scheduler_rebuilds_the_probe(float64):
    x, y, onehot = ref.data(n=12)
    loss = kd.DynamicalLoss(3, amplitude=10.0, period=4, from_logits=True, dtype="float64")
    model = _model(keras.optimizers.SGD(0.3), loss)
    probe = CurvatureProbe((x, y), every_n_steps=1, lanczos_order=38, tol=1e-10, eos_ratio=False)
    _fit(model, x, y, [kd.DynamicalLossScheduler(), probe], epochs=1)
    _fit(model, x, y, [kd.DynamicalLossScheduler(period_epochs=5), probe], epochs=2)
    assert loss.schedule.period == 5 and probe.history["step"][-1] == 3
    gamma = numpy_gamma(3, 3, 10.0, 5)
    assert not np.allclose(gamma, numpy_gamma(3, 3, 10.0, 4))
    exact = _top(ref.dense_hessian(lambda t: ref.crossentropy(
        ref.logits(t, ops.convert_to_tensor(x)), ops.convert_to_tensor(onehot),
        ops.convert_to_tensor(gamma[y])), ref.theta_of(model)))[0]
    assert _close(probe.history["hessian_max_eig"][-1], exact, 1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(every_n_steps=2, every_n_epochs=1), "every_n_epochs"),
    (dict(every_n_steps=0), "every_n_steps"), (dict(every_n_epochs=1.5), "every_n_epochs"),
    (dict(top_k=5, lanczos_order=4), "top_k"), (dict(operator="fisher"), "operator"),
    (dict(tol=0.0), "tol"), (dict(warm_start_noise=-0.1), "warm_start_noise"),
    (dict(per_layer=1), "per_layer"), (dict(csv_path=3), "csv_path"),
    (dict(log_dir=3), "log_dir"), (dict(optimizer="sgd"), "optimizer"),
    (dict(jit_compile="yes"), "jit_compile"), (dict(lanczos_order=0), "lanczos_order"),
    (dict(trace_samples=1), "trace_samples"), (dict(ntk="yes"), "ntk"),
    (dict(seed=-1), "seed"), (dict(loss=3), "loss"), (dict(micro_batch_size=0),
                                                      "micro_batch_size")])
@multi_backend
def test_rejected_inputs(kwargs, match):
    x, y, _ = ref.data(n=4)
    with pytest.raises(ValueError, match=f"Invalid value for argument `{match}`"):
        CurvatureProbe((x, y), **kwargs)


@multi_backend
def test_rejected_data_and_models(float64):
    x, _, onehot = ref.data(n=6)
    for data in (x, (x[:0], onehot[:0])):
        with pytest.raises(ValueError, match="argument `data`"):
            CurvatureProbe(data)
    model = _model()
    with pytest.raises(ValueError, match="argument `micro_batch_size`: expected a divisor"):
        CurvatureProbe((x, onehot), micro_batch_size=4).probe(model)
    probe = CurvatureProbe((x, onehot), loss=LOSS)
    probe.set_model(ref.mlp())  # never compiled
    with pytest.raises(ValueError, match="argument `model`: expected a compiled model"):
        probe.on_train_begin()


def _cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 1))
    features = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3)])  # nested
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(features(inputs))))


def _xla_cpu_warnings(fn):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in seen if "jax-ml/jax#12868" in str(w.message)]


def _on_cpu():
    if BACKEND == "jax":
        import jax
        return jax.default_backend() == "cpu"
    import tensorflow as tf
    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


@multi_backend
@pytest.mark.parametrize("jit_compile", [False, True])
def test_an_xla_probe_of_a_cnn_on_cpu_warns_where_xla_compiles_it(jit_compile):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4, 4, 1)).astype("float32"), rng.integers(0, 3, 6)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model, mlp = _cnn(), ref.mlp(dtype="float32")
    for m in (model, mlp):
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, jit_compile=jit_compile)
    xla = BACKEND == "jax" or (BACKEND == "tensorflow" and jit_compile)
    expected = 1 if xla and _on_cpu() else 0
    probe = CurvatureProbe((x, y), lanczos_order=4, eos_ratio=False, jit_compile=jit_compile,
                           every_n_steps=5)
    messages = _xla_cpu_warnings(lambda: probe.probe(model, step=0))
    assert len(messages) == expected and all("convolution" in m for m in messages)
    xm = np.zeros((6, 3), "float32")
    assert not _xla_cpu_warnings(lambda: CurvatureProbe(
        (xm, y), lanczos_order=4, jit_compile=jit_compile).probe(mlp, step=0))
    if BACKEND != "torch":  # a jit-compiled training step with the probe inside
        in_step = InStepProbe(CurvatureProbe((x, y), every_n_steps=5, lanczos_order=4),
                              capacity=2)
        messages = _xla_cpu_warnings(lambda: in_step.build(model))
        xla_step = BACKEND == "jax" or model.jit_compile
        assert len(messages) == (1 if xla_step and _on_cpu() else 0)


def test_mixed_precision_probe_runs_in_float32():
    x, y, _ = ref.data(n=32, dtype="float32")
    previous = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(16, activation="tanh"),
                                  keras.layers.Dense(3, dtype="float32")])
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        probe = CurvatureProbe((x, y), every_n_steps=2, lanczos_order=40, tol=1e-8)
        _fit(model, x, y, [probe], epochs=1, batch_size=8)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    twin = keras.Sequential([keras.Input((3,)), keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(3)])
    twin.set_weights(model.get_weights())
    exact = kd.curvature.hessian_eigenvalues(twin, loss, (x, y), order=40, tol=1e-8)
    assert probe.history["hessian_max_eig"][-1] == pytest.approx(exact.eigenvalues[0], rel=1e-5)


RELOAD = r'''
import os, sys
import keras, numpy as np
sys.path.insert(0, sys.argv[1])
import _curvature_refs as ref
import keras_dynloss as kd
x, y, onehot = ref.data(n=12, dtype="float32")
loss = kd.DynamicalLoss(3, amplitude=10.0, period=4, from_logits=True)
model = ref.mlp(dtype="float32")
model.compile(optimizer=keras.optimizers.SGD(0.3), loss=loss)
model.fit(x, y, batch_size=12, epochs=3, verbose=0, callbacks=[kd.DynamicalLossScheduler()])
model.save(sys.argv[2])
again = keras.models.load_model(sys.argv[2])
found = kd.hessian_eigenvalues(again, again.loss, (x, y), order=38, tol=1e-8).eigenvalues[0]
probed = kd.CurvatureProbe((x, y), lanczos_order=38, tol=1e-8).probe(again)["hessian_max_eig"]
print("VALUES", found, probed, int(keras.ops.convert_to_numpy(again.optimizer.iterations)),
      " ".join(map(str, ref.theta_of(again).tolist())))
'''


@multi_backend
def test_a_reloaded_model_is_probed_at_its_restored_step(tmp_path):
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="0", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, str(script), os.path.dirname(__file__),
                          str(tmp_path / "m.keras")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "never used" not in out.stderr  # TensorFlow's TensorArray dump
    line = next(s for s in out.stdout.splitlines() if s.startswith("VALUES")).split()
    found, probed, step = float(line[1]), float(line[2]), int(line[3])
    theta = np.array([float(v) for v in line[4:]])
    x, y, onehot = ref.data(n=12, dtype="float32")
    gamma = ops.convert_to_tensor(numpy_gamma(step, 3, 10.0, 4)[y])
    exact = _top(ref.dense_hessian(lambda t: ref.crossentropy(
        ref.logits(t, ops.convert_to_tensor(x.astype(np.float64))),
        ops.convert_to_tensor(onehot.astype(np.float64)), gamma), theta))[0]
    assert step == 3 and found == pytest.approx(exact, rel=1e-4)
    assert probed == pytest.approx(exact, rel=1e-4)
