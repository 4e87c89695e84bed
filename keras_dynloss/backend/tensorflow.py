"""TensorFlow: random vectors, compiled functions, autodiff (see `keras_dynloss.backend`)."""

import tensorflow as tf


def uniform(shape, seed, dtype):
    return tf.random.stateless_uniform(shape, seed=seed, minval=-1.0, maxval=1.0, dtype=dtype)


def normal(shape, seed, dtype):
    return tf.random.stateless_normal(shape, seed=seed, dtype=dtype)


def compile_function(fn, *, jit_compile=False):
    """`fn` as one compiled graph (`tf.function` without AutoGraph; XLA if `jit_compile`)."""
    return tf.function(fn, autograph=False, jit_compile=jit_compile, reduce_retracing=True)

_ZERO = tf.UnconnectedGradients.ZERO


def value_and_grad(fn, theta):
    with tf.GradientTape() as tape:
        tape.watch(theta)
        value = fn(theta)
    return value, tape.gradient(value, theta, unconnected_gradients=_ZERO)


def linearize_grad(fn, theta):
    """Forward pass and gradient taped once; `hvp(v)` is one backward pass through the gradient."""
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(theta)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            value = fn(theta)
        grad = inner.gradient(value, theta, unconnected_gradients=_ZERO)

    def hvp(v):
        return outer.gradient(grad, theta, output_gradients=v, unconnected_gradients=_ZERO)

    return value, grad, hvp


def linearize(fn, theta):
    """Forward pass taped once; `vjp` is a backward pass, `jvp` its transpose (double VJP)."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(theta)
        out = fn(theta)

    def vjp(u):
        return tape.gradient(out, theta, output_gradients=u, unconnected_gradients=_ZERO)

    zeros = tf.zeros_like(out)
    with tf.GradientTape(persistent=True) as transpose:
        transpose.watch(zeros)
        at_zero = vjp(zeros)

    def jvp(w):
        return transpose.gradient(at_zero, zeros, output_gradients=w, unconnected_gradients=_ZERO)

    return out, jvp, vjp


def jacobian(fn, theta):
    with tf.GradientTape() as tape:
        tape.watch(theta)
        out = fn(theta)
    return out, tape.jacobian(out, theta, unconnected_gradients=_ZERO)
