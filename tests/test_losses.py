"""Dynamical losses against NumPy re-derivations and Keras's own losses."""


import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from conftest import numpy_crossentropy, numpy_gamma
import keras_dynloss as kd


def _batch(rng, b, c):
    return rng.normal(size=(b, c)).astype("float32"), rng.integers(0, c, size=b)


@settings(max_examples=25, deadline=None)
@given(c=st.integers(2, 9), a=st.floats(1, 100), period=st.integers(1, 500),
       step=st.integers(0, 2**53), seed=st.integers(0, 1000))
def test_crossentropy_matches_numpy(c, a, period, step, seed):
    rng = np.random.default_rng(seed)
    logits, labels = _batch(rng, 16, c)
    loss = kd.DynamicalLoss(c, amplitude=a, period=period, from_logits=True).at_step(step)
    gamma = numpy_gamma(step, c, a, period)
    want = np.mean(gamma[labels] * numpy_crossentropy(labels, logits))
    np.testing.assert_allclose(float(loss(labels, logits)), want, rtol=2e-5)


def test_paper_formula_with_one_hot_probabilities():
    rng = np.random.default_rng(1)
    logits, labels = _batch(rng, 32, 3)
    probs = tf.nn.softmax(logits).numpy()
    one_hot = np.eye(3)[labels]
    loss = kd.DynamicalLoss(3, amplitude=70, period=5000).at_step(2500)
    gamma = np.array([70, 1, 1]) * 3 / 72
    # the authors' form: -mean(log_softmax * Y * w) * C
    want = -np.mean(np.log(probs) * one_hot * gamma) * 3
    np.testing.assert_allclose(float(loss(one_hot, probs)), want, rtol=1e-5)
    np.testing.assert_allclose(float(loss(labels, probs)), want, rtol=1e-5)
    np.testing.assert_allclose(float(loss(labels[:, None], probs)), want, rtol=1e-5)


@pytest.mark.parametrize("from_logits", [True, False])
def test_amplitude_one_equals_keras_crossentropy(from_logits):
    rng = np.random.default_rng(2)
    logits, labels = _batch(rng, 64, 5)
    y_pred = logits if from_logits else tf.nn.softmax(logits).numpy()
    weights = rng.uniform(size=64).astype("float32")
    dyn = kd.DynamicalLoss(5, amplitude=1, period=7, from_logits=from_logits).at_step(3)
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    dense = keras.losses.CategoricalCrossentropy(from_logits=from_logits)
    one_hot = np.eye(5, dtype="float32")[labels]
    np.testing.assert_allclose(float(dyn(labels, y_pred)), float(sparse(labels, y_pred)), rtol=1e-7)
    np.testing.assert_allclose(float(dyn(one_hot, y_pred)), float(dense(one_hot, y_pred)), rtol=1e-6)
    np.testing.assert_allclose(float(dyn(labels, y_pred, sample_weight=weights)),
                               float(sparse(labels, y_pred, sample_weight=weights)), rtol=1e-7)


def test_sample_weight_multiplies_gamma():
    rng = np.random.default_rng(3)
    logits, labels = _batch(rng, 20, 4)
    sw = rng.uniform(size=20).astype("float32")
    loss = kd.DynamicalLoss(4, amplitude=9, period=10, from_logits=True).at_step(15)
    gamma = numpy_gamma(15, 4, 9, 10)
    want = np.mean(sw * gamma[labels] * numpy_crossentropy(labels, logits))
    np.testing.assert_allclose(float(loss(labels, logits, sample_weight=sw)), want, rtol=1e-5)
    per_sample = kd.DynamicalLoss(4, amplitude=9, period=10, from_logits=True,
                                  reduction=None).at_step(15)(labels, logits)
    np.testing.assert_allclose(per_sample, gamma[labels] * numpy_crossentropy(labels, logits),
                               rtol=1e-5)


def test_mean_squared_error_variants():
    rng = np.random.default_rng(4)
    out, labels = _batch(rng, 24, 3)
    y = np.eye(3)[labels]
    step = 2500
    gamma = numpy_gamma(step, 3, 70, 5000)
    sample = kd.DynamicalMeanSquaredError(3, amplitude=70, period=5000).at_step(step)
    comp = kd.DynamicalComponentwiseMeanSquaredError(3, amplitude=70, period=5000).at_step(step)
    want_sample = np.mean(gamma[labels] * np.mean((y - out) ** 2, -1))
    want_comp = np.mean(np.mean(gamma * (y - out) ** 2, -1))
    for target in (labels, y):
        np.testing.assert_allclose(float(sample(target, out)), want_sample, rtol=1e-5)
        np.testing.assert_allclose(float(comp(target, out)), want_comp, rtol=1e-5)
    plain = keras.losses.MeanSquaredError()
    for cls in (kd.DynamicalMeanSquaredError, kd.DynamicalComponentwiseMeanSquaredError):
        one = cls(3, amplitude=1, period=4).at_step(2)
        np.testing.assert_allclose(float(one(labels, out)), float(plain(y, out)), rtol=1e-6)


def test_pure_functions_match_classes():
    rng = np.random.default_rng(5)
    logits, labels = _batch(rng, 10, 3)
    gamma = tf.constant(numpy_gamma(40, 3, 5, 30), tf.float32)
    per = kd.dynamical_crossentropy(labels, logits, gamma, from_logits=True)
    assert per.shape == (10,)
    np.testing.assert_allclose(per, gamma.numpy()[labels] * numpy_crossentropy(labels, logits),
                               rtol=1e-5)
    loss = kd.DynamicalLoss(3, amplitude=5, period=30, from_logits=True).at_step(40)
    np.testing.assert_allclose(np.mean(per), float(loss(labels, logits)), rtol=1e-6)
    assert kd.dynamical_mean_squared_error(labels, logits, gamma).shape == (10,)
    assert kd.dynamical_componentwise_mean_squared_error(labels, logits, gamma).shape == (10,)


@pytest.mark.parametrize("bad", [3, -1, 7])
def test_out_of_range_labels_raise_eagerly_and_in_graph(bad):
    logits = np.zeros((4, 3), "float32")
    labels = np.array([0, 1, bad, 2])
    loss = kd.DynamicalLoss(3, amplitude=2, period=5, from_logits=True).at_step(1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`y_true`.*\[0, 3\)"):
        loss(labels, logits)
    graph = tf.function(lambda y, p: loss(y, p))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`y_true`.*\[0, 3\)"):
        graph(tf.constant(labels), tf.constant(logits))


def test_non_integer_labels_raise():
    loss = kd.DynamicalLoss(3, amplitude=2, period=5, from_logits=True).at_step(1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`y_true`"):
        loss(np.array([0.0, 1.5]), np.zeros((2, 3), "float32"))


def test_wrong_number_of_logits_and_bad_shapes():
    loss = kd.DynamicalLoss(3, amplitude=2, period=5, from_logits=True).at_step(0)
    with pytest.raises(ValueError, match=r"`y_pred`: expected 3 outputs.*num_classes=3.*\(4, 4\)"):
        loss(np.zeros(4, "int32"), np.zeros((4, 4), "float32"))
    with pytest.raises(ValueError, match=r"`y_true`.*Received: y_true.shape=\(4, 2\)"):
        loss(np.zeros((4, 2)), np.zeros((4, 3), "float32"))
    with pytest.raises(ValueError, match=r"`y_true`.*Received: y_true.shape=\(5,\)"):
        loss(np.zeros(5), np.zeros((4, 3), "float32"))
    with pytest.raises(ValueError, match=r"`class_weights`"):
        kd.dynamical_crossentropy([0], [[0.0, 1.0]], [[1.0, 1.0]])


def test_unbound_loss_says_how_to_bind():
    loss = kd.DynamicalLoss(3, amplitude=2, period=5)
    with pytest.raises(RuntimeError, match=r"DynamicalLossScheduler.*loss\.bind\(model\)"):
        loss(np.zeros(2, "int32"), np.full((2, 3), 1 / 3, "float32"))


def test_bind_sources():
    loss = kd.DynamicalLoss(3, amplitude=70, period=10, from_logits=True)
    opt = keras.optimizers.SGD()
    loss.bind(opt)
    assert loss.step.optimizer is opt
    opt.iterations.assign(5)
    np.testing.assert_allclose(loss.schedule(loss.current_step()).numpy(), loss.weights_at(5))
    var = tf.Variable(7, dtype=tf.int64)
    assert int(loss.bind(var).current_step()) == 7
    assert int(loss.bind(12).current_step()) == 12
    assert loss.at_step(3).step == 3 and loss.step == 12
    with pytest.raises(ValueError, match=r"`source`.*Received: source=-1"):
        loss.bind(-1)
    with pytest.raises(ValueError, match=r"`source`: expected an integer step variable"):
        loss.bind(tf.Variable(1.0))
    with pytest.raises(ValueError, match=r"`source`.*a tensor is a snapshot.*Received: source=<tf"):
        loss.bind(tf.constant(3, tf.int64))
    with pytest.raises(ValueError, match=r"`source`: expected a compiled model"):
        loss.bind(keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls, extra", [
    (kd.DynamicalLoss, dict(from_logits=True)),
    (kd.DynamicalMeanSquaredError, {}),
    (kd.DynamicalComponentwiseMeanSquaredError, {}),
])
def test_config_round_trip_behaves_like_numpy(cls, extra, dtype):
    """serialize -> deserialize: values of the reloaded loss vs NumPy, per dtype."""
    groups = [[0, 3], [1], [2, 4]]
    loss = cls(5, amplitude=12.5, period=33, shape="sine", normalize=False,
               class_order=groups, static_after=99, reduction="sum", name="mine",
               dtype=dtype, **extra)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(back) is cls and back.name == "mine" and back.reduction == "sum"
    assert back.dtype == dtype
    assert back.step is None  # configuration only, never state
    rng = np.random.default_rng(6)
    out, labels = _batch(rng, 12, 5)
    one_hot = np.eye(5)[labels]
    tol = 1e-12 if dtype == "float64" else 2e-6
    for step in (0, 20, 50, 98, 99, 500):
        gamma = numpy_gamma(step, 5, 12.5, 33, "sine", normalize=False, static_after=99,
                            groups=groups)
        if cls is kd.DynamicalLoss:
            per_sample = gamma[labels] * numpy_crossentropy(labels, out)
        elif cls is kd.DynamicalMeanSquaredError:
            per_sample = gamma[labels] * np.mean((one_hot - out) ** 2, -1)
        else:
            per_sample = np.mean(gamma * (one_hot - out) ** 2, -1)
        value = back.at_step(step)(labels, out)
        assert value.dtype == dtype
        np.testing.assert_allclose(float(value), per_sample.sum(), rtol=tol)


def test_rejected_loss_arguments():
    with pytest.raises(ValueError, match=r"`from_logits`: expected True or False"):
        kd.DynamicalLoss(3, amplitude=2, period=5, from_logits="yes")
    with pytest.raises(ValueError, match=r"`amplitude`.*amplitude=0\.9"):
        kd.DynamicalMeanSquaredError(3, amplitude=0.9, period=5)
    with pytest.raises(TypeError):
        kd.DynamicalLoss(3, 70, 5)  # amplitude and period are keyword-only
