"""The private Keras/TF reaches in keras_dynloss._compat still mean what we rely on.

If an upgrade breaks one, these fail loudly (instead of label checks or unbound
losses silently misbehaving)."""

import keras
import tensorflow as tf

from keras_dynloss import _compat


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
