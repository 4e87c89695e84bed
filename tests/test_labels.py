"""Invalid labels are never clamped: an assertion on TensorFlow outside XLA; weight 0, a
count and an error at the epoch's end everywhere else (XLA, JAX, PyTorch)."""

import keras
import numpy as np
import pytest
from keras import ops

from conftest import BACKEND, numpy_crossentropy, numpy_gamma, numpy_gd, tiny_mlp
import keras_dynloss as kd
from keras_dynloss import backend

C, A, T, LR = 3, 30.0, 8, 0.5
if BACKEND == "tensorflow":
    import tensorflow as tf

    LabelError = tf.errors.InvalidArgumentError
else:
    LabelError = ValueError

FUNCTIONS = {
    "crossentropy": (lambda y, p, g, **kw: kd.dynamical_crossentropy(y, p, g, from_logits=True, **kw),
                     lambda y, p, g: g[y] * numpy_crossentropy(y, p)),
    "mse": (kd.dynamical_mean_squared_error,
            lambda y, p, g: g[y] * np.mean((np.eye(C)[y] - p) ** 2, -1)),
    "componentwise_mse": (kd.dynamical_componentwise_mean_squared_error,
                          lambda y, p, g: np.mean(g * (np.eye(C)[y] - p) ** 2, -1)),
}


def _values_and_grads(fn, labels, logits, gamma, counter):
    """Per-sample values, d(sum)/d(logits) and the invalid count, in one XLA-compiled
    function (eager on PyTorch)."""

    def run(y, p, count):
        if BACKEND == "jax":
            import jax

            mapping = [] if counter is None else [(counter, count)]
            with keras.StatelessScope(state_mapping=mapping) as scope:
                values, vjp = jax.vjp(lambda q: fn(y, q, gamma, invalid_label_counter=counter), p)
            new = count if counter is None else scope.get_current_value(counter)
            return values, vjp(ops.ones_like(values))[0], new
        if BACKEND == "torch":
            import torch

            p = p.clone().requires_grad_(True)
            values = fn(y, p, gamma, invalid_label_counter=counter)
            return values.detach(), torch.autograd.grad(values.sum(), p)[0], count
        with tf.GradientTape() as tape:
            tape.watch(p)
            values = fn(y, p, gamma, invalid_label_counter=counter)
            total = ops.sum(values)
        return values, tape.gradient(total, p), count

    compiled = backend.get().compile_function(run, jit_compile=True)
    count = ops.convert_to_tensor(0 if counter is None else counter.value)
    values, grads, count = compiled(ops.convert_to_tensor(labels), ops.convert_to_tensor(logits),
                                    count)
    if BACKEND == "jax" and counter is not None:
        counter.assign(count)
    return ops.convert_to_numpy(values), ops.convert_to_numpy(grads)


@pytest.mark.multi_backend
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("bad", [3, -1, 7.0, 1.5, float("nan")])
def test_where_no_assertion_runs_invalid_samples_weigh_zero_and_are_counted(name, bad):
    fn, reference = FUNCTIONS[name]
    logits = np.random.default_rng(0).normal(size=(5, C)).astype("float32")
    labels = np.array([0, 1, bad, 2, 1], "float32" if isinstance(bad, float) else "int32")
    gamma = ops.convert_to_tensor(numpy_gamma(3, C, A, T), "float32")
    counter = keras.Variable(0, dtype="int32", trainable=False)
    values, grads = _values_and_grads(fn, labels, logits, gamma, counter)
    assert int(ops.convert_to_numpy(counter)) == 1
    assert values[2] == 0 and np.all(grads[2] == 0)  # not clamped to a class, not NaN
    ok = [0, 1, 3, 4]
    np.testing.assert_allclose(values[ok], reference(labels[ok].astype(int), logits[ok],
                                                     ops.convert_to_numpy(gamma)), rtol=2e-5)
    assert np.all(np.isfinite(grads)) and np.abs(grads[ok]).min(axis=1).max() > 0


@pytest.mark.multi_backend
def test_without_a_counter_the_invalid_sample_shows_as_nan_with_zero_gradient():
    fn = FUNCTIONS["crossentropy"][0]
    values, grads = _values_and_grads(fn, np.array([0, 1, 5, 2]), np.zeros((4, C), "float32"),
                                      ops.ones((C,)), None)
    assert np.isnan(values[2])
    np.testing.assert_allclose(values[[0, 1, 3]], np.log(3.0), rtol=1e-6)
    assert np.all(np.isfinite(grads)) and np.all(grads[2] == 0)


@pytest.mark.parametrize("y", [[0, 3], [-1, 0], [0.5, 1.0], [float("nan"), 1.0]])
def test_tensorflow_asserts_eagerly_and_in_graphs(y):
    loss = kd.DynamicalLoss(C, amplitude=2, period=5, from_logits=True).at_step(1)
    logits = np.zeros((2, C), "float32")
    labels = np.array(y, "float32" if any(isinstance(v, float) for v in y) else "int32")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`y_true`: expected integer"):
        loss(labels, logits)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`y_true`: expected integer"):
        tf.function(loss)(labels, logits)


def test_tensorflow_assertion_reads_no_label_data():
    """Assert's data inputs live in host memory (copied from a GPU every step): constants only."""
    loss = kd.DynamicalLoss(C, amplitude=2, period=5, from_logits=True).at_step(1)
    graph = tf.function(lambda y, p: loss(y, p)).get_concrete_function(
        tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, C], tf.float32)).graph
    asserts = [op for op in graph.get_operations() if op.type == "Assert"]
    assert len(asserts) == 1 and all(t.op.type == "Const" for t in asserts[0].inputs[1:])


def test_targets_that_are_not_probabilities_are_refused():
    """Regression targets given to a classification loss (Keras's own MSE test inputs)."""
    y_true = np.array([[1.0, 9.0, 2.0], [-7.0, -2.0, -3.0]], "float32")
    y_pred = np.array([[4.0, 8.0, 12.0], [8.0, 1.0, 3.0]], "float32")
    for cls in (kd.DynamicalMeanSquaredError, kd.DynamicalComponentwiseMeanSquaredError):
        loss = cls(C, amplitude=1, period=5)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"probabilities"):
            loss(y_true, y_pred)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"probabilities"):
            tf.function(loss)(y_true, y_pred)
        xla = tf.function(lambda a, b: kd.dynamical_mean_squared_error(a, b, tf.ones(C)),
                          jit_compile=True)
        assert np.all(np.isnan(xla(y_true, y_pred).numpy()))


def _model(jit):
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(LR), jit_compile=jit,
                  loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True))
    return model


def test_tensorflow_fit_raises_before_the_first_update(spiral):
    x, y = spiral
    bad = y.copy()
    bad[5] = 3
    model = _model(jit=False)
    before = model.get_weights()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`y_true`"):
        model.fit(x, bad, batch_size=len(x), epochs=1, verbose=0,
                  callbacks=[kd.DynamicalLossScheduler()])
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.multi_backend
@pytest.mark.parametrize("bad", [3, -1])
def test_fit_without_assertions_raises_keeps_weights_finite_and_trains_valid_samples(spiral, bad):
    x, y = spiral
    labels = y.copy()
    labels[[5, 40]] = bad
    model = _model(jit=True)
    start = model.get_weights()
    six = (np.concatenate([x] * 6), np.concatenate([labels] * 6))  # 6 full-batch steps
    with pytest.raises(LabelError, match=r"`y_true`.*'dynamical_loss'.*Received 12 invalid "
                                         r"labels.*training epoch 1"):
        model.fit(*six, batch_size=len(x), epochs=1, shuffle=False, verbose=0,
                  callbacks=[kd.DynamicalLossScheduler()])
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 6
    valid = (labels >= 0) & (labels < C)
    want = numpy_gd(start, x, np.where(valid, labels, 0), 6, LR,
                    lambda t: numpy_gamma(t, C, A, T), weight=valid, dtype="float32")
    for got, ref in zip(model.get_weights(), want):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)


@pytest.mark.multi_backend
def test_evaluate_raises_and_says_evaluation(spiral):
    x, y = spiral
    bad = y.copy()
    bad[0] = 9
    model = _model(jit=True)
    scheduler = kd.DynamicalLossScheduler()
    match = r"Received 1 invalid labels during evaluation"
    with pytest.raises(LabelError, match=match):
        model.fit(x, y, batch_size=30, epochs=1, verbose=0, validation_data=(x, bad),
                  callbacks=[scheduler])
    with pytest.raises(LabelError, match=match):
        model.evaluate(x, bad, batch_size=45, verbose=0, callbacks=[scheduler])
    value = model.evaluate(x, y, batch_size=len(x), verbose=0, callbacks=[scheduler])
    gamma = numpy_gamma(int(ops.convert_to_numpy(model.optimizer.iterations)), C, A, T)
    logits = ops.convert_to_numpy(model.predict(x, verbose=0))
    assert value == pytest.approx(np.mean(gamma[y] * numpy_crossentropy(y, logits)), rel=1e-5)
