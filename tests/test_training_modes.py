"""DynamicalLoss inside model.fit: exact Γ(t) in every Keras training mode."""

import csv
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import numpy_gamma, tiny_mlp
import keras_dynloss as kd

C, A, T, LR = 3, 30.0, 8, 0.5


def _repeat(x, y, sample_weight=None):
    items = (x, y) if sample_weight is None else (x, y, sample_weight)
    return tf.data.Dataset.from_tensors(items).repeat()


def _fit(x, y, steps, *, spe=1, jit=False, callbacks=(), model=None, **loss_kwargs):
    model = model or tiny_mlp()
    loss = kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True, **loss_kwargs)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss, steps_per_execution=spe,
                  jit_compile=jit)
    history = model.fit(_repeat(x, y), steps_per_epoch=steps, epochs=1, verbose=0,
                        callbacks=[kd.DynamicalLossScheduler(), *callbacks])
    return model, history


def _reference_loop(x, y, steps, class_weight=None):
    """Full-batch GD written out by hand, Γ(t) from the NumPy re-derivation."""
    model = tiny_mlp()
    cw = np.ones(C) if class_weight is None else np.array([class_weight[i] for i in range(C)])
    for t in range(steps):
        gamma = numpy_gamma(t, C, A, T)
        w = tf.constant((gamma * cw)[y], tf.float32)
        with tf.GradientTape() as tape:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(x))
            loss = tf.reduce_mean(w * ce)
        grads = tape.gradient(loss, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
            v.assign_sub(LR * g)
    return model


def _assert_same_weights(a, b, atol):
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=atol, rtol=0)


def test_fit_applies_gamma_of_the_true_step(spiral):
    x, y = spiral
    steps = 3 * C * T + 5
    fitted, _ = _fit(x, y, steps)
    assert int(fitted.optimizer.iterations.numpy()) == steps
    _assert_same_weights(fitted, _reference_loop(x, y, steps), atol=2e-5)
    # Γ really varies in this run: a plain-CE run ends elsewhere
    plain = tiny_mlp()
    plain.compile(optimizer=keras.optimizers.SGD(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.fit(_repeat(x, y), steps_per_epoch=steps, epochs=1, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(plain.get_weights(), fitted.get_weights())) > 1e-2


def test_steps_per_execution_50_equals_1(spiral):
    x, y = spiral
    one, _ = _fit(x, y, 100, spe=1)
    fifty, _ = _fit(x, y, 100, spe=50)
    _assert_same_weights(one, fifty, atol=1e-6)


def test_jit_compile_equals_plain(spiral):
    x, y = spiral
    plain, _ = _fit(x, y, 60, jit=False)
    xla, _ = _fit(x, y, 60, jit=True)
    assert xla.jit_compile
    _assert_same_weights(plain, xla, atol=1e-5)


def test_class_weight_and_sample_weight_compose(spiral):
    x, y = spiral
    cw = {0: 2.0, 1: 1.0, 2: 0.5}
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(LR),
                  loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True))
    model.fit(x, y, batch_size=len(x), epochs=30, shuffle=False, verbose=0, class_weight=cw,
              callbacks=[kd.DynamicalLossScheduler()])
    _assert_same_weights(model, _reference_loop(x, y, 30, class_weight=cw), atol=2e-5)
    sw = np.array([cw[int(c)] for c in y], "float32")
    model2 = tiny_mlp()
    model2.compile(optimizer=keras.optimizers.SGD(LR),
                   loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True))
    model2.fit(_repeat(x, y, sw), steps_per_epoch=30, epochs=1, verbose=0,
               callbacks=[kd.DynamicalLossScheduler()])
    _assert_same_weights(model, model2, atol=1e-6)


def test_gamma_in_progress_bar_history_and_csv(spiral, tmp_path, capsys):
    x, y = spiral
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(LR),
                  loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True))
    log = tmp_path / "log.csv"
    history = model.fit(_repeat(x, y), steps_per_epoch=3, epochs=6, verbose=2,
                        callbacks=[kd.DynamicalLossScheduler(), keras.callbacks.CSVLogger(str(log))])
    out = capsys.readouterr().out
    assert "gamma_0:" in out and "emphasized_class:" in out
    for epoch in range(6):
        last = 3 * epoch + 2
        want = numpy_gamma(last, C, A, T)
        got = [history.history[f"gamma_{i}"][epoch] for i in range(C)]
        np.testing.assert_allclose(got, want, rtol=1e-5)
        assert history.history["emphasized_class"][epoch] == (last // T) % C
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and float(rows[-1]["gamma_1"]) == pytest.approx(history.history["gamma_1"][-1])


def test_period_in_epochs(spiral):
    x, y = spiral
    loss = kd.DynamicalLoss(C, amplitude=A, period=1, from_logits=True)
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss)
    history = model.fit(_repeat(x, y), steps_per_epoch=4, epochs=5, verbose=0,
                        callbacks=[kd.DynamicalLossScheduler(period_epochs=2)])
    assert loss.period == 8
    np.testing.assert_allclose(history.history["gamma_0"][-1], numpy_gamma(19, C, A, 8)[0], rtol=1e-5)
    with pytest.raises(ValueError, match=r"`steps_per_epoch`"):
        unknown_length = _repeat(x, y).take(3).filter(lambda *_: True)
        model.fit(unknown_length, epochs=1, verbose=0,
                  callbacks=[kd.DynamicalLossScheduler(period_epochs=2)])
    with pytest.raises(ValueError, match=r"`period_epochs`.*period_epochs=0"):
        kd.DynamicalLossScheduler(period_epochs=0)
    with pytest.raises(ValueError, match=r"`loss`"):
        kd.DynamicalLossScheduler(keras.losses.MeanSquaredError())


def test_backup_and_restore_resumes_weights_and_gamma(spiral, tmp_path):
    x, y = spiral

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    def run(extra, backup_dir):
        model = tiny_mlp()
        model.compile(optimizer=keras.optimizers.SGD(LR),
                      loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True))
        history = model.fit(_repeat(x, y), steps_per_epoch=5, epochs=7, verbose=0,
                            callbacks=[kd.DynamicalLossScheduler(),
                                       keras.callbacks.BackupAndRestore(str(backup_dir)), *extra])
        return model, history

    straight, h_straight = run([], tmp_path / "a")
    with pytest.raises(RuntimeError, match="interrupted"):
        run([Interrupt()], tmp_path / "b")
    resumed, h_resumed = run([], tmp_path / "b")
    assert int(resumed.optimizer.iterations.numpy()) == 35
    _assert_same_weights(straight, resumed, atol=1e-6)
    for i in range(C):
        np.testing.assert_allclose(h_resumed.history[f"gamma_{i}"], h_straight.history[f"gamma_{i}"][3:],
                                   rtol=1e-6)


def test_save_load_continues_schedule_and_evaluate_does_not_advance(spiral, tmp_path):
    x, y = spiral
    model, _ = _fit(x, y, 20, static_after=40)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, kd.DynamicalLoss) and loaded.loss.dtype == "float32"
    assert int(loaded.optimizer.iterations.numpy()) == 20

    sched = kd.DynamicalLossScheduler()
    before = loaded.evaluate(x, y, batch_size=len(x), verbose=0, callbacks=[sched])
    again = loaded.evaluate(x, y, batch_size=len(x), verbose=0, callbacks=[sched])
    assert int(loaded.optimizer.iterations.numpy()) == 20  # evaluate never advances it
    assert before == pytest.approx(again, rel=1e-7)
    gamma = numpy_gamma(20, C, A, T)
    logits = loaded.predict(x, verbose=0)
    from conftest import numpy_crossentropy
    assert before == pytest.approx(np.mean(gamma[y] * numpy_crossentropy(y, logits)), rel=1e-5)

    for m in (model, loaded):
        m.fit(_repeat(x, y), steps_per_epoch=30, epochs=1, verbose=0,
              callbacks=[kd.DynamicalLossScheduler()])
    _assert_same_weights(model, loaded, atol=1e-6)
    _assert_same_weights(model, _reference_loop_static(x, y, 50, 40), atol=2e-5)


def _reference_loop_static(x, y, steps, static_after):
    model = tiny_mlp()
    for t in range(steps):
        gamma = numpy_gamma(t, C, A, T, static_after=static_after)
        with tf.GradientTape() as tape:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model(x))
            loss = tf.reduce_mean(tf.constant(gamma[y], tf.float32) * ce)
        grads = tape.gradient(loss, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
            v.assign_sub(LR * g)
    return model


def test_fit_without_scheduler_says_what_to_do(spiral):
    x, y = spiral
    model = tiny_mlp()
    model.compile(optimizer="sgd", loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True))
    with pytest.raises(RuntimeError, match=r"DynamicalLossScheduler"):
        model.fit(x, y, epochs=1, verbose=0)
    model.loss.bind(model)  # or bind by hand
    model.fit(x, y, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) > 0


MIRRORED = textwrap.dedent("""
    import os, sys, json
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
            model.compile(optimizer=keras.optimizers.SGD(0.5),
                          loss=kd.DynamicalLoss(3, amplitude=30, period=4, from_logits=True))
        h = model.fit(x, y, batch_size=90, epochs=24, shuffle=False, verbose=0,
                      callbacks=[kd.DynamicalLossScheduler()])
        return h.history["loss"], int(model.optimizer.iterations.numpy())

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    print(json.dumps({"one": run(tf.distribute.get_strategy()), "two": run(mirrored)}))
""")


def test_mirrored_strategy_two_cpus_matches_one_device(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    out = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import json
    result = json.loads(out.stdout.strip().splitlines()[-1])
    (one, it_one), (two, it_two) = result["one"], result["two"]
    assert it_one == it_two == 24  # the step is counted once, not per replica
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)
    assert max(one) - min(one) > 0.05  # the curve moves


def test_scheduler_config_round_trip(spiral):
    """The reloaded scheduler sets the period from its epochs and logs as configured."""
    x, y = spiral
    for log_weights in (False, True):
        sched = kd.DynamicalLossScheduler(period_epochs=3, steps_per_epoch=7,
                                          log_weights=log_weights)
        back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sched))
        assert isinstance(back, kd.DynamicalLossScheduler)
        model = tiny_mlp()
        loss = kd.DynamicalLoss(C, amplitude=A, period=1, from_logits=True)
        model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss)
        # fit's own count (5 steps) is overridden by the scheduler's steps_per_epoch=7
        history = model.fit(_repeat(x, y), steps_per_epoch=5, epochs=2, verbose=0,
                            callbacks=[back])
        assert loss.period == 21
        assert ("gamma_0" in history.history) == log_weights
        if log_weights:
            np.testing.assert_allclose([history.history[f"gamma_{i}"][-1] for i in range(C)],
                                       numpy_gamma(9, C, A, 21), rtol=1e-6)


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
    assert first.step.optimizer is model.optimizer and second.step.optimizer is model.optimizer
    np.testing.assert_allclose(history.history["first_gamma_0"][-1], numpy_gamma(3, C, A, T)[0], rtol=1e-5)
    np.testing.assert_allclose(history.history["second_gamma_1"][-1], numpy_gamma(3, C, 5, 3)[1], rtol=1e-5)
    assert "gamma_0" not in history.history


def _accumulation_fit(x, y, optimizer, micro_steps, batch_size):
    model = tiny_mlp()
    model.compile(optimizer=optimizer,
                  loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat()
    history = model.fit(data, steps_per_epoch=micro_steps, epochs=1, verbose=0,
                        callbacks=[kd.DynamicalLossScheduler()])
    return model, history


def test_gradient_accumulation_counts_updates(spiral):
    """t counts optimizer updates: two micro-batches of 45 with Γ(k) give exactly
    full-batch GD with Γ(k) (the NumPy Γ), k = 0, 1, ... updates."""
    x, y = spiral
    updates = 2 * C * T + 3
    opt = keras.optimizers.SGD(LR, gradient_accumulation_steps=2)
    model, history = _accumulation_fit(x, y, opt, 2 * updates, len(x) // 2)
    assert int(opt.iterations.numpy()) == updates
    assert model.loss.step.optimizer is opt
    _assert_same_weights(model, _reference_loop(x, y, updates), atol=2e-5)
    np.testing.assert_allclose(history.history["gamma_0"][-1],
                               numpy_gamma(updates - 1, C, A, T)[0], rtol=1e-5)


@pytest.mark.parametrize("accumulation", [None, 2])
def test_loss_scale_optimizer_follows_applied_updates(spiral, accumulation):
    """LossScaleOptimizer skips micro-batches whose scaled gradients overflow
    (here the first few, from a huge initial scale): t counts only the applied
    updates. Every micro-batch is the whole spiral, so any N applied ones make
    one full-batch update whatever was skipped."""
    x, y = spiral
    x = 100 * x  # large gradients: the scaled ones overflow at first
    lr = 1e-3
    inner = keras.optimizers.SGD(lr, gradient_accumulation_steps=accumulation)
    opt = keras.optimizers.LossScaleOptimizer(inner, initial_scale=2.0**127)
    per_update = accumulation or 1
    micro_steps = per_update * (C * T + 6)
    model, _ = _accumulation_fit(x, y, opt, micro_steps, len(x))
    applied = int(opt.iterations.numpy())
    assert float(opt.dynamic_scale.numpy()) < 2.0**127  # some updates were skipped
    assert C * T // 2 < applied < micro_steps // per_update
    reference = tiny_mlp()
    for t in range(applied):  # full-batch GD, Γ of the applied-update count
        w = tf.constant(numpy_gamma(t, C, A, T)[y], tf.float32)
        with tf.GradientTape() as tape:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=reference(x))
            loss = tf.reduce_mean(w * ce)
        for v, g in zip(reference.trainable_variables,
                        tape.gradient(loss, reference.trainable_variables)):
            v.assign_sub(lr * g)
    _assert_same_weights(model, reference, atol=2e-5)


def _sine_profile(phase, power):
    return tf.sin(np.pi * phase) ** power


def _numpy_gamma_profile(t, period, h):
    k, r = divmod(t, period)
    raw = np.ones(C)
    raw[k % C] = 1 + (A - 1) * h(r / period)
    return C * raw / raw.sum()


@pytest.mark.parametrize("kind", ["lambda", "partial"])
def test_period_epochs_keeps_callable_profile_and_retraces_evaluate(spiral, kind):
    import functools

    x, y = spiral
    shape = (lambda phase: tf.sin(np.pi * phase) ** 2) if kind == "lambda" else \
        functools.partial(_sine_profile, power=2)
    loss = kd.DynamicalLoss(C, amplitude=A, period=1, shape=shape, from_logits=True)
    original = loss.schedule
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss)
    sched = kd.DynamicalLossScheduler()
    model.evaluate(x, y, batch_size=len(x), verbose=0, callbacks=[sched])  # traced, T = 1
    history = model.fit(_repeat(x, y), steps_per_epoch=3, epochs=3, verbose=0,
                        callbacks=[kd.DynamicalLossScheduler(period_epochs=2)])
    assert loss.period == 6 and loss.schedule is not original and original.period == 1
    assert loss.schedule.shape is shape  # the very callable, not a rebuilt one
    h = lambda p: np.sin(np.pi * p) ** 2  # noqa: E731
    np.testing.assert_allclose([history.history[f"gamma_{i}"][-1] for i in range(C)],
                               _numpy_gamma_profile(8, 6, h), rtol=1e-5)
    # evaluate at step 9 with the new period (T = 1 would give Γ ≡ 1 here)
    value = model.evaluate(x, y, batch_size=len(x), verbose=0, callbacks=[sched])
    gamma = _numpy_gamma_profile(9, 6, h)
    assert gamma.max() > 1.5
    from conftest import numpy_crossentropy
    logits = model.predict(x, verbose=0)
    assert value == pytest.approx(np.mean(gamma[y] * numpy_crossentropy(y, logits)), rel=1e-5)


def test_period_epochs_counts_updates_under_gradient_accumulation(spiral):
    x, y = spiral
    loss = kd.DynamicalLoss(C, amplitude=A, period=1, from_logits=True)
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(LR, gradient_accumulation_steps=2), loss=loss)
    model.fit(_repeat(x, y), steps_per_epoch=4, epochs=1, verbose=0,
              callbacks=[kd.DynamicalLossScheduler(period_epochs=3)])
    assert loss.period == 6  # 3 epochs of 4 batches = 6 updates
    with pytest.raises(ValueError, match=r"`steps_per_epoch`: expected a multiple of.*"
                                         r"gradient_accumulation_steps=2.*steps_per_epoch=5"):
        model.fit(_repeat(x, y), steps_per_epoch=5, epochs=1, verbose=0,
                  callbacks=[kd.DynamicalLossScheduler(period_epochs=3)])
