"""`InStepProbe`: the probe compiled into the training step, against dense Hessians."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import explicit_hessian, numpy_gamma
from keras_dynloss import DynamicalLoss, DynamicalLossScheduler
from keras_dynloss.curvature import CurvatureProbe, InStepProbe
from keras_dynloss.experiments._spiral import build_mlp

A, T, EVERY = 20.0, 30, 5


def _model(per_batch, x, y, *, every=None, capacity=50, jit=True, micro_batch_size=None):
    model = build_mlp(8, 3, seed=3, dtype="float64", updates_per_batch=per_batch)
    opt = keras.optimizers.SGD(0.5)
    opt.build(model.trainable_variables)
    loss = DynamicalLoss(3, amplitude=A, period=T, from_logits=True, dtype="float64")
    model.compile(optimizer=opt, loss=loss, jit_compile=jit)
    callbacks = [DynamicalLossScheduler(log_weights=False)]
    in_step = None
    if every:
        probe = CurvatureProbe((x, y), every_n_steps=every, lanczos_order=20, tol=1e-7,
                               micro_batch_size=micro_batch_size)
        in_step = InStepProbe(probe, capacity=capacity)
        in_step.build(model)
        model.in_step_probe = in_step
        callbacks.append(in_step)
    return model, callbacks, in_step


def _fit(model, callbacks, x, y, batches, epochs=1):
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    return model.fit(data, steps_per_epoch=batches, epochs=epochs, verbose=0, shuffle=False,
                     callbacks=callbacks)


class _Snapshots(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_train_begin(self, logs=None):
        self._take()

    def on_train_batch_end(self, batch, logs=None):
        self._take()

    def _take(self):
        step = int(self.model.optimizer.iterations.numpy())
        self.weights[step] = [v.numpy() for v in self.model.trainable_variables]


def _dense_max_eig(x, y, weights, step):
    """lambda_max of the dense Hessian of F(step) with Γ from the NumPy formula."""
    model = build_mlp(8, 3, seed=3, dtype="float64")
    for var, w in zip(model.trainable_variables, weights):
        var.assign(w)
    gamma = tf.constant(numpy_gamma(step, 3, A, T))

    def loss(labels, logits):
        ce = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return tf.reduce_mean(tf.gather(gamma, labels) * ce)

    return float(np.linalg.eigvalsh(explicit_hessian(model, loss, x, y))[-1])


@pytest.mark.parametrize("jit, micro_batch_size", [(True, None), (False, None), (True, 30)])
def test_in_step_values_equal_the_dense_hessian_at_every_probed_step(spiral, jit, micro_batch_size):
    x, y = spiral[0].astype("float64"), spiral[1]
    # Probes every 5 steps inside batches of 10 updates: steps 0, 5, ..., 30.
    model, callbacks, in_step = _model(10, x, y, every=EVERY, jit=jit, micro_batch_size=micro_batch_size)
    _fit(model, callbacks, x, y, batches=3)
    reference, ref_callbacks, _ = _model(5, x, y)  # no probe, a snapshot after every 5 updates
    snaps = _Snapshots()
    _fit(reference, ref_callbacks + [snaps], x, y, batches=6)
    history = in_step.probe.history
    assert history["step"] == list(range(0, 31, EVERY))
    for step, value, residual in zip(history["step"], history["hessian_max_eig"],
                                     history["hessian_max_eig_residual"]):
        dense = _dense_max_eig(x, y, snaps.weights[step], step)
        assert abs(value - dense) <= max(residual, 1e-9 * dense) + 1e-7 * dense, (step, value, dense)
    # The probe changes nothing: the same weights as the unprobed 5-update run.
    for a, b in zip(model.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)


def test_in_step_probe_leaves_training_bitwise_unchanged_and_fills_logs(spiral):
    x, y = spiral[0].astype("float64"), spiral[1]
    plain, plain_callbacks, _ = _model(10, x, y)
    _fit(plain, plain_callbacks, x, y, batches=2, epochs=2)
    probed, callbacks, in_step = _model(10, x, y, every=EVERY)
    history = _fit(probed, callbacks, x, y, batches=2, epochs=2)
    for a, b in zip(plain.trainable_variables, probed.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    probe = in_step.probe
    assert probe.history["step"] == list(range(0, 41, EVERY))
    assert probe.history["epoch"] == [0] * 5 + [1] * 4  # flushed at each epoch end
    assert history.history["hessian_max_eig"] == [probe.history["hessian_max_eig"][i] for i in (4, 8)]
    assert max(probe.history["hessian_matvecs"]) <= 20


def test_uneven_micro_batches_are_refused_inside_an_xla_training_step(spiral):
    x, y = spiral[0].astype("float64"), spiral[1]  # 90 samples
    model, callbacks, _ = _model(10, x, y, every=EVERY, micro_batch_size=40)
    with pytest.raises(ValueError, match=r"micro_batch_size.*divisor of the probe batch size \(90\)"):
        _fit(model, callbacks, x, y, batches=1)


def test_a_full_buffer_raises_instead_of_dropping_probes(spiral):
    x, y = spiral[0].astype("float64"), spiral[1]
    model, callbacks, _ = _model(10, x, y, every=EVERY, capacity=3)
    with pytest.raises(RuntimeError, match=r"capacity=3"):
        _fit(model, callbacks, x, y, batches=2)


def test_rejected_arguments_name_themselves(spiral):
    x, y = spiral[0].astype("float64"), spiral[1]
    with pytest.raises(ValueError, match="`probe`"):
        InStepProbe(CurvatureProbe((x, y), every_n_epochs=1), capacity=4)
    with pytest.raises(ValueError, match="`probe`"):
        InStepProbe("probe", capacity=4)
    with pytest.raises(ValueError, match="`capacity`"):
        InStepProbe(CurvatureProbe((x, y), every_n_steps=5), capacity=0)
    data = tf.data.Dataset.from_tensors((x, y))
    model, _, _ = _model(10, x, y)
    with pytest.raises(ValueError, match="`data`"):
        InStepProbe(CurvatureProbe(data, every_n_steps=5), capacity=4).build(model)
    unbuilt = InStepProbe(CurvatureProbe((x, y), every_n_steps=5), capacity=4)
    with pytest.raises(ValueError, match="`model`"):
        unbuilt.maybe_probe()


def test_in_step_probe_in_an_autograph_training_loop_equals_the_dense_hessian(spiral):
    """A custom `tf.function` loop (AutoGraph on: a `for` over `tf.range`)
    calling `maybe_probe()` before each update: the probe's graph code runs
    as written and each value equals the dense lambda_max at its step."""
    x, y = spiral[0].astype("float64"), spiral[1]
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")

    def setup():
        model = build_mlp(8, 3, seed=3, dtype="float64")
        opt = keras.optimizers.SGD(0.5)
        opt.build(model.trainable_variables)
        model.compile(optimizer=opt, loss=ce)
        return model, opt

    model, opt = setup()
    probe = CurvatureProbe((x, y), every_n_steps=EVERY, lanczos_order=20, tol=1e-7)
    in_step = InStepProbe(probe, capacity=10)
    in_step.build(model)

    @tf.function
    def train(steps):
        for _ in tf.range(steps):
            in_step.maybe_probe()
            with tf.GradientTape() as tape:
                value = ce(y, model(x, training=True))
            opt.apply(tape.gradient(value, model.trainable_variables), model.trainable_variables)
        in_step.maybe_probe()

    train(tf.constant(2 * EVERY))
    in_step.flush()
    reference, ref_opt = setup()
    weights = {}
    for step in range(2 * EVERY + 1):
        weights[step] = [v.numpy() for v in reference.trainable_variables]
        with tf.GradientTape() as tape:
            value = ce(y, reference(x, training=True))
        ref_opt.apply(tape.gradient(value, reference.trainable_variables), reference.trainable_variables)
    assert probe.history["step"] == [0, EVERY, 2 * EVERY]
    for step, value, residual in zip(probe.history["step"], probe.history["hessian_max_eig"],
                                     probe.history["hessian_max_eig_residual"]):
        for var, w in zip(reference.trainable_variables, weights[step]):
            var.assign(w)
        dense = float(np.linalg.eigvalsh(explicit_hessian(reference, ce, x, y))[-1])
        assert abs(value - dense) <= max(residual, 1e-9 * dense) + 1e-7 * dense, (step, value, dense)
