"""Invalid labels: an assertion outside XLA; weight 0, a count and an error under XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import numpy_crossentropy, numpy_gamma, tiny_mlp
import keras_dynloss as kd

C, A, T, LR = 3, 30.0, 8, 0.5

FUNCTIONS = {
    "crossentropy": (
        lambda y, p, g, **kw: kd.dynamical_crossentropy(y, p, g, from_logits=True, **kw),
        lambda y, p, g: g[y] * numpy_crossentropy(y, p),
    ),
    "mse": (
        kd.dynamical_mean_squared_error,
        lambda y, p, g: g[y] * np.mean((np.eye(C)[y] - p) ** 2, -1),
    ),
    "componentwise_mse": (
        kd.dynamical_componentwise_mean_squared_error,
        lambda y, p, g: np.mean(g * (np.eye(C)[y] - p) ** 2, -1),
    ),
}


def _xla_values_and_grads(fn, labels, logits, gamma, counter):
    @tf.function(jit_compile=True)
    def run(y, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            values = fn(y, p, gamma, invalid_label_counter=counter)
            total = tf.reduce_sum(values)
        return values, tape.gradient(total, p)

    values, grads = run(tf.constant(labels), tf.constant(logits))
    return values.numpy(), grads.numpy()


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("bad", [3, -1, 7.0, 1.5])
def test_xla_gives_invalid_samples_weight_zero_and_counts_them(name, bad):
    fn, reference = FUNCTIONS[name]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, C)).astype("float32")
    labels = np.array([0, 1, bad, 2, 1], "float32" if isinstance(bad, float) else "int32")
    gamma = numpy_gamma(3, C, A, T).astype("float32")
    counter = tf.Variable(0, dtype=tf.int64)
    values, grads = _xla_values_and_grads(fn, labels, logits, tf.constant(gamma), counter)
    assert int(counter.numpy()) == 1
    assert values[2] == 0 and np.all(grads[2] == 0)  # not clamped to a class, not NaN
    ok = [0, 1, 3, 4]
    want = reference(labels[ok].astype(int), logits[ok], gamma)
    np.testing.assert_allclose(values[ok], want, rtol=2e-5)
    assert np.all(np.isfinite(grads)) and np.abs(grads[ok]).min(axis=1).max() > 0
    _xla_values_and_grads(fn, np.array([0, 1, 2, 2, 1], labels.dtype), logits,
                          tf.constant(gamma), counter)
    assert int(counter.numpy()) == 1  # valid batches add nothing


def test_xla_without_counter_shows_nan_with_zero_gradient():
    fn = FUNCTIONS["crossentropy"][0]
    logits = np.zeros((4, C), "float32")
    values, grads = _xla_values_and_grads(fn, np.array([0, 1, 5, 2]), logits,
                                          tf.ones(C), None)
    assert np.isnan(values[2]) and np.all(np.isfinite(values[[0, 1, 3]]))
    np.testing.assert_allclose(values[[0, 1, 3]], np.log(3.0), rtol=1e-6)
    assert np.all(np.isfinite(grads)) and np.all(grads[2] == 0)


def test_assertion_reads_no_label_data():
    """Assert's data inputs live in host memory: on a GPU every data tensor is
    copied to the host each step. Only constants may feed it."""
    loss = kd.DynamicalLoss(C, amplitude=2, period=5, from_logits=True).at_step(1)
    graph = tf.function(lambda y, p: loss(y, p)).get_concrete_function(
        tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, C], tf.float32)).graph
    asserts = [op for op in graph.get_operations() if op.type == "Assert"]
    assert len(asserts) == 1
    data = asserts[0].inputs[1:]
    assert len(data) >= 1 and all(t.op.type == "Const" for t in data)
    assert asserts[0].inputs[0].dtype == tf.bool and asserts[0].inputs[0].shape.rank == 0


def _reference_loop(x, y, valid, steps):
    """Full-batch GD by hand: invalid samples weigh 0, the mean divides by the batch."""
    model = tiny_mlp()
    safe = np.where(valid, y, 0)
    for t in range(steps):
        w = tf.constant(numpy_gamma(t, C, A, T)[safe] * valid, tf.float32)
        with tf.GradientTape() as tape:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=model(x))
            loss = tf.reduce_sum(w * ce) / len(x)
        grads = tape.gradient(loss, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
            v.assign_sub(LR * g)
    return model


def _model_and_bad_labels(y, positions, value, jit):
    """A compiled tiny model with a DynamicalLoss, and ``y`` with ``value`` at ``positions``."""
    bad = y.copy()
    bad[positions] = value
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(LR), jit_compile=jit,
                  loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True))
    return model, bad


def test_fit_raises_before_the_first_update(spiral):
    x, y = spiral
    model, bad = _model_and_bad_labels(y, [5], 3, jit=False)
    before = model.get_weights()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`y_true`.*\[0, 3\)"):
        model.fit(x, bad, batch_size=len(x), epochs=1, verbose=0,
                  callbacks=[kd.DynamicalLossScheduler()])
    for got, want in zip(model.get_weights(), before):  # (Keras's counter did advance)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bad", [3, -1])
def test_fit_under_xla_raises_keeps_weights_finite_and_trains_valid_samples(spiral, bad):
    x, y = spiral
    model, labels = _model_and_bad_labels(y, [5, 40], bad, jit=True)
    data = tf.data.Dataset.from_tensors((x, labels)).repeat()
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"`y_true`.*\[0, 3\).*'dynamical_loss'.*Received 12 labels.*"
                             r"training epoch 1"):
        model.fit(data, steps_per_epoch=6, epochs=1, verbose=0,
                  callbacks=[kd.DynamicalLossScheduler()])
    assert int(model.optimizer.iterations.numpy()) == 6
    weights = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in weights)
    valid = (labels >= 0) & (labels < C)
    reference = _reference_loop(x, labels, valid, 6)
    for got, want in zip(weights, reference.get_weights()):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_evaluate_under_xla_raises_and_says_evaluation(spiral):
    x, y = spiral
    model, bad = _model_and_bad_labels(y, [0], 9, jit=True)
    sched = kd.DynamicalLossScheduler()
    # clean training data, one bad validation label: the error names evaluation
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Received 1 labels.*evaluation"):
        model.fit(x, y, batch_size=30, epochs=1, verbose=0, validation_data=(x, bad),
                  callbacks=[sched])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Received 1 labels.*evaluation"):
        model.evaluate(x, bad, batch_size=45, verbose=0, callbacks=[sched])
    # the count was reset: a clean evaluate passes and gives the NumPy loss
    value = model.evaluate(x, y, batch_size=len(x), verbose=0, callbacks=[sched])
    logits = model.predict(x, verbose=0)
    gamma = numpy_gamma(int(model.optimizer.iterations.numpy()), C, A, T)
    assert value == pytest.approx(np.mean(gamma[y] * numpy_crossentropy(y, logits)), rel=1e-5)
