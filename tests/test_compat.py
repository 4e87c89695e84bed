"""The private Keras/TF reaches in keras_dynloss._compat still mean what we rely on.

If an upgrade breaks one, these fail loudly (instead of label checks or unbound
losses silently misbehaving)."""

import keras
import numpy as np
import pytest

from conftest import BACKEND
from keras_dynloss import _compat

if BACKEND == "tensorflow":
    import tensorflow as tf


def test_in_xla_context():
    seen = {}

    def probe(key):
        seen[key] = _compat.in_xla_context()
        return tf.constant(0.0)

    @tf.function
    def inner():
        return probe("nested in xla")

    tf.function(lambda: probe("xla"), jit_compile=True)()
    tf.function(lambda: probe("plain"))()
    tf.function(lambda: inner(), jit_compile=True)()
    tf.function(lambda: tf.cond(tf.constant(True), lambda: probe("cond in xla"),
                                lambda: tf.constant(1.0)), jit_compile=True)()
    probe("eager")
    assert seen == {"xla": True, "plain": False, "nested in xla": True,
                    "cond in xla": True, "eager": False}


def test_in_symbolic_scope():
    seen = []

    class Probe(keras.layers.Layer):
        def call(self, x):
            seen.append(_compat.in_symbolic_scope())
            return x

    assert not _compat.in_symbolic_scope()
    with keras.SymbolicScope():
        assert _compat.in_symbolic_scope()
    assert not _compat.in_symbolic_scope()
    layer = Probe()
    keras.Model(inputs := keras.Input((2,)), layer(inputs))  # Keras infers shapes: symbolic
    layer(tf.zeros((1, 2)))  # a real call
    assert seen == [True, False]


def test_missing_gradient_op_reads_the_op_type_from_tensorflow_errors():
    import numpy as np
    import tensorflow as tf

    kernel = tf.Variable(np.ones((3, 3, 1, 1), np.float32))
    x = tf.constant(np.random.default_rng(0).standard_normal((1, 4, 4, 1)).astype(np.float32))

    @tf.function
    def second_derivative():
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                h = tf.nn.conv2d(x, kernel, 1, "SAME")
                y = tf.image.resize(h, [6, 6], method="bicubic")
                value = tf.reduce_sum(y**2)
            g = inner.gradient(value, kernel)
        return outer.gradient(g, kernel)

    try:
        second_derivative()
    except Exception as error:  # LookupError / StagingError today
        assert _compat.missing_gradient_op(error) == "ResizeBicubicGrad"
    else:
        raise AssertionError("TensorFlow now differentiates bicubic resizing twice")
    assert _compat.missing_gradient_op(ValueError("shapes do not match")) is None


@pytest.mark.multi_backend
def test_iter_layers_walks_nested_layers():
    inner = keras.Sequential([keras.layers.Dense(2, name="deep")], name="inner")
    model = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1, name="top")])
    names = [layer.name for layer in _compat.iter_layers(model)]
    assert names[0] == model.name and {"inner", "deep", "top"} <= set(names)


@pytest.mark.multi_backend
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_second_moments_are_the_slots_of_each_variable(amsgrad):
    """After one update `v = (1 - beta_2) g^2`, g the NumPy gradient of the variable."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(0.1, beta_2=0.9, amsgrad=amsgrad)
    model.compile(optimizer=opt, loss="mse")
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    y = np.zeros((4, 1), "float32")
    w1, b1, w2, b2 = model.get_weights()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    h = x @ w1 + b1
    d_out = 2 * (h @ w2 + b2 - y) / y.size
    grads = [x.T @ (d_out @ w2.T), (d_out @ w2.T).sum(0), h.T @ d_out, d_out.sum(0)]
    slots = _compat.adam_second_moments(opt, model.trainable_variables[::-1])
    for slot, g in zip(slots, grads[::-1]):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(slot), 0.1 * g**2, rtol=1e-4,
                                   atol=1e-9)


@pytest.mark.multi_backend
def test_sibling_callbacks_sees_the_fit_call():
    seen = {}

    class Look(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["list"] = _compat.sibling_callbacks(self)

    look, stop = Look(), keras.callbacks.EarlyStopping(monitor="loss")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((4, 2)), np.zeros((4, 1)), verbose=0, callbacks=[stop, look])
    assert seen["list"][:2] == [stop, look]
    assert any(isinstance(c, keras.callbacks.History) for c in seen["list"])
    assert _compat.sibling_callbacks(look) == []


@pytest.mark.multi_backend
def test_track_adds_state_to_a_built_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Net()
    model(np.zeros((1, 3), "float32"))  # built: Keras locks its state
    metric = keras.metrics.Mean(name="tracked")
    with pytest.raises(ValueError, match="already built"):
        model.untracked = keras.metrics.Mean()
    _compat.track(model, "tracked", metric)
    assert metric in model.metrics and model._tracker.locked
    assert any(v is metric.variables[0] for v in model.metrics_variables)
