"""Γ(t) inside `model.fit` is exact in every Keras training mode, on every backend: the
weights equal a NumPy gradient-descent loop with an independent NumPy Γ(t)."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from conftest import BACKEND, numpy_crossentropy, numpy_gamma, numpy_gd, tiny_mlp
import keras_dynloss as kd

pytestmark = pytest.mark.multi_backend
C, A, T, LR = 3, 30.0, 8, 0.5
SPE = 1 if BACKEND == "torch" else 5  # PyTorch's trainer runs one step per call


def _batches(x, y, steps, sw=None):
    """`steps` full batches of (x, y) in a row, for `fit(..., batch_size=len(x))`."""
    out = [np.concatenate([x] * steps), np.concatenate([y] * steps)]
    return out + ([np.concatenate([sw] * steps)] if sw is not None else [])


def _compile(model, optimizer=None, jit=False, spe=1, **loss_kwargs):
    model.compile(optimizer=optimizer or keras.optimizers.SGD(LR), jit_compile=jit,
                  steps_per_execution=spe,
                  loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True, **loss_kwargs))
    return model


def _fit(model, x, y, steps, sw=None, callbacks=(), epochs=1):
    data = _batches(x, y, steps, sw)
    return model.fit(data[0], data[1], sample_weight=data[2] if sw is not None else None,
                     batch_size=len(x), epochs=epochs, shuffle=False, verbose=0,
                     callbacks=[kd.DynamicalLossScheduler(), *callbacks])


def _iterations(model):
    return int(ops.convert_to_numpy(model.optimizer.iterations))


def _assert_weights(model, want, atol):
    for got, ref in zip(model.get_weights(), want):
        np.testing.assert_allclose(got, ref, atol=atol, rtol=0)


def _gamma(t):
    return numpy_gamma(t, C, A, T)


@pytest.mark.parametrize("jit, spe", [(False, 1), (True, SPE)])
def test_fit_applies_gamma_of_the_true_step(spiral, jit, spe):
    x, y = spiral
    steps = 3 * C * T + 5
    model = _compile(tiny_mlp(), jit=jit, spe=spe)
    start = model.get_weights()
    _fit(model, x, y, steps)
    assert _iterations(model) == steps
    _assert_weights(model, numpy_gd(start, x, y, steps, LR, _gamma, dtype="float32"), 3e-5)
    plain = numpy_gd(start, x, y, steps, LR, lambda t: np.ones(C), dtype="float32")
    assert max(np.abs(a - b).max() for a, b in zip(plain, model.get_weights())) > 1e-2


@pytest.mark.parametrize("jit, spe", [(False, SPE), (True, SPE)])
def test_warm_up_and_an_amplitude_schedule_inside_fit(spiral, jit, spe):
    """`start_after` and A(t) decaying to 1 (a Keras learning-rate schedule), against NumPy."""
    x, y = spiral
    decay = keras.optimizers.schedules.PolynomialDecay(40.0, 30, end_learning_rate=1.0)
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(LR), jit_compile=jit, steps_per_execution=spe,
                  loss=kd.DynamicalLoss(C, amplitude=decay, period=T, start_after=5,
                                        from_logits=True))
    start = model.get_weights()
    _fit(model, x, y, 40)

    def gamma(t):
        return numpy_gamma(t, C, 1 + 39 * (1 - min(t, 30) / 30), T, start_after=5)

    assert gamma(4).max() == 1 and gamma(9).max() > 2  # the warm-up, then a peak
    _assert_weights(model, numpy_gd(start, x, y, 40, LR, gamma, dtype="float32"), 3e-5)


def test_a_built_subclassed_model(spiral):
    """A subclassed model is built (and its state locked) before the scheduler binds."""
    x, y = spiral

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.out = keras.layers.Dense(C)

        def call(self, inputs):
            return self.out(self.hidden(inputs))

    keras.utils.set_random_seed(0)
    model = _compile(Net(), spe=SPE)
    model(x[:1])
    start = model.get_weights()
    _fit(model, x, y, 12)
    _assert_weights(model, numpy_gd(start, x, y, 12, LR, _gamma, dtype="float32"), 3e-5)


def test_class_weight_and_sample_weight_multiply_gamma(spiral):
    x, y = spiral
    cw = {0: 2.0, 1: 1.0, 2: 0.5}
    model = _compile(tiny_mlp())
    start = model.get_weights()
    model.fit(*_batches(x, y, 20), batch_size=len(x), epochs=1, shuffle=False, verbose=0,
              class_weight=cw, callbacks=[kd.DynamicalLossScheduler()])
    sw = np.array([cw[int(c)] for c in y], "float32")
    want = numpy_gd(start, x, y, 20, LR, _gamma, weight=sw, dtype="float32")
    _assert_weights(model, want, 3e-5)
    other = _compile(tiny_mlp())
    _fit(other, x, y, 20, sw=sw)
    _assert_weights(other, want, 3e-5)


def test_gradient_accumulation_counts_updates(spiral):
    """Two micro-batches of 45 with Γ(k) make exactly one full-batch step with Γ(k)."""
    x, y = spiral
    updates = 2 * C * T + 3
    opt = keras.optimizers.SGD(LR, gradient_accumulation_steps=2)
    model = _compile(tiny_mlp(), optimizer=opt, spe=SPE)
    start = model.get_weights()
    history = model.fit(*_batches(x, y, updates), batch_size=len(x) // 2, epochs=1,
                        shuffle=False, verbose=0, callbacks=[kd.DynamicalLossScheduler()])
    assert _iterations(model) == updates
    _assert_weights(model, numpy_gd(start, x, y, updates, LR, _gamma, dtype="float32"), 3e-5)
    want = np.array([_gamma(t) for t in range(updates)])
    np.testing.assert_allclose(history.history["gamma_0_max"], [want[:, 0].max()], rtol=1e-5)


@pytest.mark.parametrize("accumulation", [None, 2])
def test_loss_scale_optimizer_counts_applied_updates(spiral, accumulation):
    """A LossScaleOptimizer skips micro-batches whose scaled gradients overflow (here the
    first ones, from a huge initial scale): t counts the applied updates only."""
    x, y = spiral
    x = 100 * x
    lr = 1e-3
    inner = keras.optimizers.SGD(lr, gradient_accumulation_steps=accumulation)
    opt = keras.optimizers.LossScaleOptimizer(inner, initial_scale=2.0**127)
    model = _compile(tiny_mlp(), optimizer=opt)
    start = model.get_weights()
    per_update = accumulation or 1
    micro = per_update * (C * T + 6)
    model.fit(*_batches(x, y, micro), batch_size=len(x), epochs=1, shuffle=False, verbose=0,
              callbacks=[kd.DynamicalLossScheduler()])
    applied = _iterations(model)
    assert C * T // 2 < applied < micro // per_update  # some were skipped
    # every micro-batch is the whole spiral: N applied ones make one full-batch update
    _assert_weights(model, numpy_gd(start, x, y, applied, lr, _gamma, dtype="float32"), 3e-5)


def test_backup_and_restore_resumes_weights_and_gamma(spiral, tmp_path):
    x, y = spiral

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    def run(extra, backup):
        model = _compile(tiny_mlp(), spe=SPE)
        start = model.get_weights()
        history = _fit(model, x, y, 5, epochs=7,
                       callbacks=[keras.callbacks.BackupAndRestore(str(backup)), *extra])
        return model, history, start

    straight, h_straight, start = run([], tmp_path / "a")
    with pytest.raises(RuntimeError, match="interrupted"):
        run([Interrupt()], tmp_path / "b")
    resumed, h_resumed, _ = run([], tmp_path / "b")
    assert _iterations(resumed) == 35
    _assert_weights(resumed, straight.get_weights(), 1e-6)
    _assert_weights(resumed, numpy_gd(start, x, y, 35, LR, _gamma, dtype="float32"), 3e-5)
    for key in ("gamma_0_max", "gamma_2_mean"):
        np.testing.assert_allclose(h_resumed.history[key], h_straight.history[key][3:], rtol=1e-6)


def test_save_load_continues_the_schedule_and_evaluate_does_not_advance(spiral, tmp_path):
    x, y = spiral
    model = _compile(tiny_mlp(), static_after=40)
    start = model.get_weights()
    _fit(model, x, y, 20)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert _iterations(loaded) == 20 and isinstance(loaded.loss, kd.DynamicalLoss)
    scheduler = kd.DynamicalLossScheduler()
    before = loaded.evaluate(x, y, batch_size=len(x), verbose=0, callbacks=[scheduler])
    again = loaded.evaluate(x, y, batch_size=len(x), verbose=0, callbacks=[scheduler])
    assert _iterations(loaded) == 20 and before == pytest.approx(again, rel=1e-7)
    logits = ops.convert_to_numpy(loaded.predict(x, verbose=0))
    assert before == pytest.approx(np.mean(_gamma(20)[y] * numpy_crossentropy(y, logits)), rel=1e-5)
    for m in (model, loaded):
        _fit(m, x, y, 30)
    _assert_weights(loaded, model.get_weights(), 1e-6)
    want = numpy_gd(start, x, y, 50, LR, lambda t: numpy_gamma(t, C, A, T, static_after=40),
                    dtype="float32")
    _assert_weights(loaded, want, 3e-5)


def test_period_in_epochs_keeps_a_callable_profile_and_retraces_evaluate(spiral):
    x, y = spiral
    shape = lambda phase: ops.sin(np.pi * phase) ** 2  # noqa: E731
    loss = kd.DynamicalLoss(C, amplitude=A, period=1, shape=shape, from_logits=True)
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss)
    scheduler = kd.DynamicalLossScheduler()
    model.evaluate(x, y, batch_size=len(x), verbose=0, callbacks=[scheduler])  # traced, T = 1
    history = model.fit(*_batches(x, y, 9), batch_size=len(x), epochs=3, shuffle=False,
                        verbose=0, callbacks=[kd.DynamicalLossScheduler(period_epochs=2,
                                                                        steps_per_epoch=3)])
    assert loss.schedule.period == 6 and loss.schedule.shape is shape

    def gamma(t):
        k, r = divmod(t, 6)
        raw = np.ones(C)
        raw[k % C] = 1 + (A - 1) * np.sin(np.pi * r / 6) ** 2
        return C * raw / raw.sum()

    want = np.array([gamma(t) for t in range(6, 9)])
    np.testing.assert_allclose(history.history["gamma_1_max"][-1], want[:, 1].max(), rtol=1e-5)
    value = model.evaluate(x, y, batch_size=len(x), verbose=0, callbacks=[scheduler])
    logits = ops.convert_to_numpy(model.predict(x, verbose=0))
    assert gamma(9).max() > 1.5
    assert value == pytest.approx(np.mean(gamma(9)[y] * numpy_crossentropy(y, logits)), rel=1e-5)
    with pytest.raises(ValueError, match=r"`steps_per_epoch`: expected a multiple of the "
                                         r"optimizer's gradient_accumulation_steps=2"):
        other = tiny_mlp()
        other.compile(optimizer=keras.optimizers.SGD(LR, gradient_accumulation_steps=2),
                      loss=kd.DynamicalLoss(C, amplitude=A, period=1))
        other.fit(*_batches(x, y, 5), batch_size=len(x), epochs=1, verbose=0,
                  callbacks=[kd.DynamicalLossScheduler(period_epochs=3)])


def test_two_dynamical_losses_on_a_two_output_model(spiral):
    x, y = spiral
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(C, name="a")(hidden),
                                 keras.layers.Dense(C, name="b")(hidden)])
    first = kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True, name="first")
    second = kd.DynamicalLoss(C, amplitude=5, period=3, from_logits=True, name="second")
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=[first, second])
    history = model.fit(x, (y, y), batch_size=len(x), epochs=4, shuffle=False, verbose=0,
                        callbacks=[kd.DynamicalLossScheduler()])
    np.testing.assert_allclose(history.history["first_gamma_0_mean"][-1], _gamma(3)[0], rtol=1e-5)
    np.testing.assert_allclose(history.history["second_gamma_1_max"][-1],
                               numpy_gamma(3, C, 5, 3)[1], rtol=1e-5)
    assert "gamma_0_max" not in history.history


def test_float64_fit_equals_numpy_gradient_descent(spiral, float64):
    x, y = spiral
    x = x.astype("float64")
    model = tiny_mlp(width=12, dtype="float64")
    model.compile(optimizer=keras.optimizers.SGD(1.0),
                  loss=kd.DynamicalLoss(C, amplitude=20, period=50, from_logits=True,
                                        dtype="float64"))
    start = model.get_weights()
    assert start[0].dtype == np.float64
    _fit(model, x, y, 300)
    want = numpy_gd(start, x, y, 300, 1.0, lambda t: numpy_gamma(t, C, 20, 50))
    # Keras's torch backend computes a float64 Dense in float32 (keras-team/keras#23704).
    _assert_weights(model, want, 1e-6 if BACKEND == "torch" else 1e-11)


MIRRORED = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np, keras
    import keras_dynloss as kd
    sys.path.insert(0, sys.argv[1])
    from conftest import tiny_mlp
    rng = np.random.RandomState(0)
    x = rng.normal(size=(90, 2)).astype("float32"); y = (rng.rand(90) * 3).astype("int32")

    def run(strategy):
        with strategy.scope():
            model = tiny_mlp()
            model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False,
                          loss=kd.DynamicalLoss(3, amplitude=30, period=4, from_logits=True))
        h = model.fit(x, y, batch_size=90, epochs=24, shuffle=False, verbose=0,
                      callbacks=[kd.DynamicalLossScheduler()])
        return h.history["loss"], h.history["gamma_0_max"], int(model.optimizer.iterations.numpy())

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(json.dumps({"one": run(tf.distribute.get_strategy()), "two": run(mirrored)}))
""")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's")
def test_mirrored_strategy_on_two_cpus_equals_one_device(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    out = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    (one, g_one, it_one), (two, g_two, it_two) = result["one"], result["two"]
    assert it_one == it_two == 24
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)
    np.testing.assert_allclose(g_two, g_one, rtol=1e-6)  # replicas' statistics are not summed
    assert max(one) - min(one) > 0.05
