"""`InStepProbe` inside the spiral runner's compiled loop (`FullBatchSequential`): every
probed value against the dense Hessian and NTK at the weights of a NumPy gradient-descent
loop (`conftest.numpy_gd`), and training unchanged by the probe."""

import keras
import numpy as np
import pytest
from keras import ops

import _curvature_refs as ref
from conftest import BACKEND, numpy_gamma, numpy_gd
from keras_dynloss import DynamicalLoss, DynamicalLossScheduler
from keras_dynloss.curvature import CurvatureProbe, InStepProbe
from keras_dynloss.experiments._spiral import build_mlp, full_batch_data

A, T, EVERY, WIDTH, LR = 20.0, 30, 5, 6, 0.5
DTYPE = "float32" if BACKEND == "torch" else "float64"  # torch: float64 matmuls round
multi_backend = pytest.mark.multi_backend


def _runner(x, y, *, every=None, jit=True, per_batch=10, capacity=50, **probe_kwargs):
    model = build_mlp(WIDTH, 3, seed=3, dtype=DTYPE, updates_per_batch=per_batch)
    model.compile(optimizer=keras.optimizers.SGD(LR), jit_compile=jit and BACKEND != "torch",
                  loss=DynamicalLoss(3, amplitude=A, period=T, from_logits=True, dtype=DTYPE))
    model.optimizer.build(model.trainable_variables)
    callbacks, in_step = [DynamicalLossScheduler(log_weights=False)], None
    if every:
        options = dict(lanczos_order=39, tol=1e-10, ntk=True, ntk_order=60)
        probe = CurvatureProbe((x, y), every_n_steps=every, **{**options, **probe_kwargs})
        in_step = InStepProbe(probe, capacity=capacity)
        in_step.build(model)
        model.in_step_probe = in_step
        callbacks.append(in_step)
    return model, callbacks, in_step


def _fit(model, callbacks, x, y, epochs):
    return model.fit(full_batch_data(x, y), steps_per_epoch=1, epochs=epochs, verbose=0,
                     callbacks=callbacks)


def _relu_logits(theta, x):
    """The runner's Dense(6)-ReLU-Dense(3) from theta, written on keras.ops."""
    w1, b1 = ops.reshape(theta[:2 * WIDTH], (2, WIDTH)), theta[2 * WIDTH:3 * WIDTH]
    w2 = ops.reshape(theta[3 * WIDTH:6 * WIDTH], (WIDTH, 3))
    return ops.matmul(ops.relu(ops.matmul(x, w1) + b1), w2) + theta[6 * WIDTH:]


def _dense(x, y, weights, step):
    """(lambda_max(H), lambda_max(NTK)) of the Γ(step)-weighted cross-entropy at `weights`."""
    theta = np.concatenate([np.ravel(w) for w in weights])
    xs, onehot = ops.convert_to_tensor(x.astype(np.float64)), ops.convert_to_tensor(np.eye(3)[y])
    gamma = ops.convert_to_tensor(numpy_gamma(step, 3, A, T)[y])
    hessian = ref.dense_hessian(
        lambda t: ref.crossentropy(_relu_logits(t, xs), onehot, gamma), theta)
    jac = ref.dense_jacobian(lambda t: _relu_logits(t, xs), theta)  # (N, K, n)
    ntk = np.einsum("ikp,jkp->ij", jac, jac)
    return np.linalg.eigvalsh(hessian)[-1], np.linalg.eigvalsh(ntk)[-1]


def _close(value, exact, residual):
    tol = 1e-4 * exact if DTYPE == "float32" else max(residual, 1e-9 * exact) + 1e-7 * exact
    return abs(value - exact) <= tol


@multi_backend
@pytest.mark.parametrize("jit", [True, False])
def test_in_step_values_equal_dense_hessians_at_every_probed_step(spiral, float64, jit):
    x, y = spiral[0].astype(DTYPE), spiral[1]
    # Probes every 5 steps inside 3 batches of 10 updates: steps 0, 5, ..., 30.
    model, callbacks, in_step = _runner(x, y, every=EVERY, jit=jit)
    start = [w.astype(np.float64) for w in model.get_weights()]
    _fit(model, callbacks, x, y, epochs=3)
    history = in_step.history
    assert history["step"] == list(range(0, 31, EVERY))
    assert history["epoch"] == [0, 0, 0, 1, 1, 2, 2]  # flushed at every epoch end
    for i, step in enumerate(history["step"]):
        weights = numpy_gd(start, x, y, step, LR, lambda t: numpy_gamma(t, 3, A, T))
        hessian, ntk = _dense(x, y, weights, step)
        assert _close(history["hessian_max_eig"][i], hessian,
                      history["hessian_max_eig_residual"][i]), (step, history, hessian)
        assert _close(history["ntk_max_eig"][i], ntk, history["ntk_max_eig_residual"][i])
        assert history["eos_ratio"][i] == pytest.approx(history["hessian_max_eig"][i] * LR / 2)
    assert len(set(np.round(history["hessian_max_eig"], 6))) == len(history["step"])


@multi_backend
def test_training_is_bitwise_unchanged_and_epoch_logs_carry_the_values(spiral, float64):
    x, y = spiral[0].astype(DTYPE), spiral[1]
    plain, plain_callbacks, _ = _runner(x, y)
    _fit(plain, plain_callbacks, x, y, epochs=2)
    probed, callbacks, in_step = _runner(x, y, every=EVERY, lanczos_order=10, tol=1e-3,
                                         ntk_order=10)
    logs = _fit(probed, callbacks, x, y, epochs=2).history
    for a, b in zip(plain.trainable_variables, probed.trainable_variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    assert not np.allclose(ops.convert_to_numpy(probed.trainable_variables[0]),
                           build_mlp(WIDTH, 3, seed=3, dtype=DTYPE).get_weights()[0])
    history = in_step.history
    assert history["step"] == [0, 5, 10, 15, 20]
    assert logs["hessian_max_eig"] == [history["hessian_max_eig"][i] for i in (2, 4)]
    assert max(history["hessian_matvecs"]) <= 10


@multi_backend
def test_a_full_buffer_raises_at_the_flush_and_is_emptied_by_it(spiral, float64):
    x, y = spiral[0].astype(DTYPE), spiral[1]
    model, callbacks, in_step = _runner(x, y, every=EVERY, capacity=3, lanczos_order=4, ntk=False)
    _fit(model, callbacks, x, y, epochs=2)  # 3 probes an epoch: each flush empties the buffer
    assert in_step.history["step"] == [0, 5, 10, 15, 20]
    model, callbacks, in_step = _runner(x, y, every=EVERY, capacity=2, lanczos_order=4, ntk=False)
    with pytest.raises(ValueError, match=r"argument `capacity`.*\(1 found the buffer full.*"
                                         r"capacity=2"):
        _fit(model, callbacks, x, y, epochs=2)
    assert in_step.history["step"] == [0, 5]  # the probes taken are kept


@multi_backend
def test_rejected_arguments_name_themselves(spiral, float64):
    x, y = spiral
    with pytest.raises(ValueError, match="argument `probe`"):
        InStepProbe(CurvatureProbe((x, y), every_n_epochs=1), capacity=4)
    with pytest.raises(ValueError, match="argument `probe`"):
        InStepProbe("probe", capacity=4)
    with pytest.raises(ValueError, match="argument `capacity`"):
        InStepProbe(CurvatureProbe((x, y), every_n_steps=5), capacity=0)
    with pytest.raises(ValueError, match="argument `model`"):
        InStepProbe(CurvatureProbe((x, y), every_n_steps=5), capacity=4).maybe_probe()
    import tensorflow as tf

    model, _, _ = _runner(x.astype(DTYPE), y)
    dataset = tf.data.Dataset.from_tensors((x, y))
    with pytest.raises(ValueError, match="argument `data`"):
        InStepProbe(CurvatureProbe(dataset, every_n_steps=5), capacity=4).build(model)


def test_in_step_probe_in_an_autograph_training_loop(spiral):
    """A custom `tf.function` loop with AutoGraph on (a `for` over `tf.range`) calling
    `maybe_probe()` before each update: each value equals the dense one at its step."""
    import tensorflow as tf

    x, y = spiral[0].astype("float64"), spiral[1]
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    model = build_mlp(WIDTH, 3, seed=3, dtype="float64")
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=ce)
    model.optimizer.build(model.trainable_variables)
    start = model.get_weights()
    in_step = InStepProbe(CurvatureProbe((x, y), every_n_steps=EVERY, lanczos_order=39, tol=1e-10),
                          capacity=10)
    in_step.build(model)

    @tf.function
    def train(steps):
        for _ in tf.range(steps):
            in_step.maybe_probe()
            with tf.GradientTape() as tape:
                value = ce(y, model(x, training=True))
            variables = model.trainable_variables
            model.optimizer.apply(tape.gradient(value, variables), variables)
        in_step.maybe_probe()

    train(tf.constant(2 * EVERY))
    in_step.flush()
    history = in_step.history
    assert history["step"] == [0, EVERY, 2 * EVERY]
    for step, value, residual in zip(history["step"], history["hessian_max_eig"],
                                     history["hessian_max_eig_residual"]):
        weights = numpy_gd(start, x, y, step, LR, lambda t: np.ones(3))
        theta = np.concatenate([np.ravel(w) for w in weights])
        xs, onehot = ops.convert_to_tensor(x), ops.convert_to_tensor(np.eye(3)[y])
        exact = np.linalg.eigvalsh(ref.dense_hessian(
            lambda t: ref.crossentropy(_relu_logits(t, xs), onehot), theta))[-1]
        assert _close(value, exact, residual), (step, value, exact)
