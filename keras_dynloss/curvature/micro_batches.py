"""Curvature products over sub-batches of the probe batch, for memory.

A Hessian, Gauss-Newton or NTK product on `N` rows holds the activations of
its passes on all of them (on the ResNet-style CNN of
`bench/curvature_scale.py`, 2.3-4.1 times a loss gradient's memory). Computed
over consecutive sub-batches of `batch_size` rows, one after another in a
`tf.while_loop`, a product holds one sub-batch's. Every sub-batch runs its own
forward pass (nothing is recorded across products): memory, not speed. The
last sub-batch is shorter when `batch_size` does not divide `N`; under XLA it
must divide `N` (static shapes). In inference mode (the default) every sample's
outputs are independent of the others', so the sums below are the whole
batch's operator exactly; with `training=True`, BatchNormalization normalises
each sub-batch by its own statistics (as under a `MirroredStrategy`).
"""

import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss import _compat
from keras_dynloss.curvature import flat as flat_lib
from keras_dynloss.curvature import hessian
from keras_dynloss.curvature import ntk as ntk_lib

_ZERO = tf.UnconnectedGradients.ZERO


def _sub_batches(x, batch_size):
    """`(n, rows, count, even)`: the row count of `x`; `rows(t, start)`, rows
    `[start, start + batch_size)` of every tensor of the structure `t`; the
    number of sub-batches; whether they are all full (static)."""
    first = tf.nest.flatten(x)[0]
    even = first.shape[0] is not None and first.shape[0] % batch_size == 0
    if not even and _compat.in_xla_context():
        raise val.invalid("micro_batch_size", f"a divisor of the probe batch size ({first.shape[0]}) under XLA "
                          "(jit_compile: equal sub-batches)", batch_size)

    def take(a, start):
        if even:  # a static sub-batch shape (XLA)
            begin = tf.concat([[start], tf.zeros([a.shape.rank - 1], tf.int32)], 0)
            return tf.slice(a, begin, [batch_size] + [-1] * (a.shape.rank - 1))
        return a[start:start + batch_size]

    def rows(t, start):
        return None if t is None else tf.nest.map_structure(lambda a: take(a, start), t)

    n = tf.shape(first)[0]
    count = first.shape[0] // batch_size if even else (n + batch_size - 1) // batch_size
    return n, rows, count, even


def _over_sub_batches(n, batch_size, fn, initial):
    """`fn(start, carry) -> carry` for `start = 0, batch_size, ...` below `n`, one at a time."""
    return tf.while_loop(lambda start, _: start < n, lambda start, carry: (start + batch_size, fn(start, carry)),
                         (tf.constant(0), initial), parallel_iterations=1)[1]


def micro_batched_curvature_fn(flat, loss, batch_size, **kwargs):
    """Builds `(theta, x, y, sw) -> matvec` (as `linearized_curvature_fn`):

        A v = sum_r N_r A_r v / N,

    `A_r` the operator of sub-batch `r`'s mean loss (`N_r` rows). Exact for a
    loss that is a mean over samples (sample weights included); added losses
    enter each sub-batch whole, with weights summing to 1. `kwargs`: those of
    `hessian.curvature_fn` (`operator`, `mode`, `training`, ...).
    """
    product = hessian.curvature_fn(flat, loss, **kwargs)

    def linearize(theta, x, y, sw):
        n, rows, _, _ = _sub_batches(x, batch_size)

        def matvec(v):
            def add(start, total):
                xs = rows(x, start)
                size = tf.cast(tf.shape(tf.nest.flatten(xs)[0])[0], v.dtype)
                return total + product(theta, v, xs, rows(y, start), rows(sw, start))[0] * size

            return _over_sub_batches(n, batch_size, add, tf.zeros_like(v)) / tf.cast(n, v.dtype)

        return matvec

    return linearize


def micro_batched_ntk_fn(flat, batch_size, *, trace_outputs=True, training=False, num_outputs):
    """Builds `(theta, x) -> matvec` (as `ntk.ntk_linearized_fn`, same `Theta`
    and shapes) over sub-batches: `J^T U = sum_r J_r^T U_r` (a VJP per
    sub-batch), then `J w` row block by row block (the transpose of sub-batch
    `r`'s VJP, its forward pass run again)."""

    def linearize(theta, x):
        n, rows, count, even = _sub_batches(x, batch_size)

        def outputs(xs):
            return flat_lib.flat_outputs(flat_lib.model_outputs(flat, theta, xs, training=training))

        def vjp(cot):  # J^T cot = sum_r J_r^T cot_r
            def term(start, total):
                with tf.GradientTape() as tape:
                    tape.watch(theta)
                    out = outputs(rows(x, start))
                cot_r = tf.cast(rows(cot, start), out.dtype)
                return total + tape.gradient(out, theta, output_gradients=cot_r, unconnected_gradients=_ZERO)

            return _over_sub_batches(n, batch_size, term, tf.zeros_like(theta))

        def gram(cot):  # J J^T cot, cot (N, K)
            w = vjp(cot)

            def jvp(start, blocks):
                with tf.GradientTape() as tape:
                    tape.watch(theta)
                    out = outputs(rows(x, start))
                with tf.GradientTape() as t2:
                    cot_r = tf.zeros_like(out)
                    t2.watch(cot_r)
                    w_r = tape.gradient(out, theta, output_gradients=cot_r, unconnected_gradients=_ZERO)
                block = t2.gradient(w_r, cot_r, output_gradients=w, unconnected_gradients=_ZERO)
                return blocks.write(start // batch_size, tf.cast(block, cot.dtype))

            shape = [batch_size if even else None, num_outputs]
            blocks = tf.TensorArray(cot.dtype, size=count, infer_shape=False, element_shape=shape)
            blocks = _over_sub_batches(n, batch_size, jvp, blocks)
            return tf.reshape(blocks.stack(), [-1, num_outputs]) if even else blocks.concat()

        return ntk_lib.gram_matvec(gram, trace_outputs, num_outputs, vjp=vjp)

    return linearize
