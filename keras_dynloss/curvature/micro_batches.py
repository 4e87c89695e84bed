"""Curvature products over sub-batches of the probe batch, for memory.

A Hessian, Gauss-Newton or NTK product on `N` rows holds the activations of
its passes on all of them (on the ResNet-style CNN of
`bench/curvature_scale.py`, 2.3-4.1 times a loss gradient's memory). Computed
over consecutive sub-batches of `batch_size` rows, one after another in a
`tf.while_loop`, a product holds one sub-batch's. Every sub-batch runs its own
forward pass (nothing is recorded across products). The last sub-batch is
shorter when `batch_size` does not divide `N`; under XLA it must divide `N`
(static shapes). In inference mode (the default) every sample's outputs are
independent of the others', so the sums below are the whole batch's operator
exactly; with `training=True`, BatchNormalization normalises each sub-batch by
its own statistics (as under a `MirroredStrategy`).

`CurvatureProbe(micro_batch_size="auto")`, the default, splits the batch into
4 equal sub-batches, in inference mode, when one forward pass on it holds more
than `AUTO_SPLIT_BYTES` (32 MiB) of activations (`auto_batch_size`): on that CNN a
steady Hessian + traced NTK probe then peaks at 0.7 gradients instead of 3.8,
in about the same time (the products' passes run on smaller tensors).
"""

import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss import _compat
from keras_dynloss.curvature import flat as flat_lib
from keras_dynloss.curvature import hessian
from keras_dynloss.curvature import ntk as ntk_lib

_ZERO = tf.UnconnectedGradients.ZERO

#: `micro_batch_size="auto"` splits the probe batch when one forward pass on it
#: produces more than this many bytes of tensors that depend on the inputs.
AUTO_SPLIT_BYTES = 32 * 2**20
#: Sub-batches `"auto"` aims for: a product holds 2.3-2.9 loss gradients of
#: memory on the whole batch, so about 0.6-0.75 of one on a quarter of it.
AUTO_SUB_BATCHES = 4


def forward_bytes(flat, x, *, training=False):
    """Bytes of the floating-point tensors one forward pass on `x` produces
    that depend on `x` (the activations; parameter reads excluded), summed over
    the traced graph's ops (`flat.traced_outputs`: nothing runs). A tensor of
    unknown static shape counts zero."""
    graph = flat_lib.traced_outputs(flat, x, training=training).graph
    inputs = graph.inputs[:len(tf.nest.flatten(x))]
    seen, todo, total = set(), [t.op for t in inputs], 0
    while todo:
        op = todo.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        for t in op.outputs:
            if op.type != "Placeholder" and t.dtype.is_floating and t.shape.is_fully_defined():
                total += t.shape.num_elements() * t.dtype.size
            todo.extend(consumer for consumer in t.consumers() if consumer.name not in seen)
    return total


def auto_batch_size(flat, x, *, training=False):
    """The sub-batch size `micro_batch_size="auto"` uses on the probe batch `x`.

    `None` (no split) in training mode (BatchNormalization would normalise
    each sub-batch by its own statistics: a different operator), when the
    forward pass holds at most `AUTO_SPLIT_BYTES` (`forward_bytes`) or when the
    row count is not static; else `N / c` for the
    smallest `c` in `[AUTO_SUB_BATCHES, 16]` dividing the `N` rows (equal
    sub-batches, as XLA needs), failing that `c = 3` or `2`, failing that no
    split (a prime `N > 16`).
    """
    rows = tf.nest.flatten(x)[0].shape[0]
    if training or rows is None or forward_bytes(flat, x, training=training) <= AUTO_SPLIT_BYTES:
        return None
    for count in list(range(AUTO_SUB_BATCHES, 17)) + [3, 2]:
        if count < rows and rows % count == 0:
            return rows // count
    return None


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
    and shapes) over sub-batches `r` of the rows.

    `J^T U = sum_r J_r^T U_r` needs every sub-batch before any row block of
    `J w` can be formed, so a product makes two sweeps over the sub-batches,
    each recording one forward pass per sub-batch on a persistent tape:

    * sweep 1: `w = sum_r J_r^T U_r` (VJPs);
    * sweep 2: row block `r` of `J w`, the transpose of sub-batch `r`'s VJP
      (the double-VJP trick of `ntk_linearized_fn`).

    Traced (`trace_outputs=True`), the `K` channels run inside each
    sub-batch's step on its one recording: sweep 1 keeps `w_c = J_c^T u` for
    every channel, a `(K, n)` matrix in the parameter dtype, and sweep 2 adds
    `J_{c,r} w_c` for every channel `c`. A product then runs the forward pass
    twice per sub-batch, not `2K` times. `matvec.gram_norm(u) = sum_c ||w_c||^2`
    is sweep 1 alone.
    """
    k = num_outputs

    def linearize(theta, x):
        n, rows, count, even = _sub_batches(x, batch_size)

        def record(start):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(theta)
                out = flat_lib.flat_outputs(flat_lib.model_outputs(flat, theta, rows(x, start), training=training))
            return tape, out

        def transpose(tape, out, cot_r, w):  # J_r w, (N_r, K), from the VJP's own graph
            with tf.GradientTape() as t2:
                t2.watch(cot_r)
                w_r = tape.gradient(out, theta, output_gradients=cot_r, unconnected_gradients=_ZERO)
            return t2.gradient(w_r, cot_r, output_gradients=w, unconnected_gradients=_ZERO)

        def row_blocks(block_fn, dtype):
            """Rows of `block_fn(start) -> (N_r, width)` for every sub-batch, concatenated."""
            width = 1 if trace_outputs else k
            shape = [batch_size if even else None, width]
            blocks = tf.TensorArray(dtype, size=count, infer_shape=False, element_shape=shape)
            blocks = _over_sub_batches(n, batch_size, lambda start, ta: ta.write(start // batch_size,
                                                                                 block_fn(start)), blocks)
            return tf.reshape(blocks.stack(), [-1, width]) if even else blocks.concat()

        def over_channels(fn, initial):
            return tf.while_loop(lambda c, _: c < k, lambda c, carry: (c + 1, fn(c, carry)),
                                 (tf.constant(0), initial), parallel_iterations=1)[1]

        if not trace_outputs:

            def vjp(cot):  # J^T cot, cot (N, K)
                def term(start, total):
                    tape, out = record(start)
                    cot_r = tf.cast(rows(cot, start), out.dtype)
                    return total + tape.gradient(out, theta, output_gradients=cot_r, unconnected_gradients=_ZERO)

                return _over_sub_batches(n, batch_size, term, tf.zeros_like(theta))

            def gram(cot):  # J J^T cot
                w = vjp(cot)

                def block(start):
                    tape, out = record(start)
                    return tf.cast(transpose(tape, out, tf.zeros_like(out), w), cot.dtype)

                return row_blocks(block, cot.dtype)

            return ntk_lib.gram_matvec(gram, False, k, vjp=vjp)

        def channel_vjps(u):  # (K, n): row c = J_c^T u
            def term(start, w):
                tape, out = record(start)
                u_r = tf.cast(rows(u, start), out.dtype)

                def channel(c, w):
                    cot = u_r[:, None] * tf.one_hot(c, k, dtype=out.dtype)[None, :]
                    g = tape.gradient(out, theta, output_gradients=cot, unconnected_gradients=_ZERO)
                    return tf.tensor_scatter_nd_add(w, [[c]], g[None])

                return over_channels(channel, w)

            return _over_sub_batches(n, batch_size, term, tf.zeros([k, flat.size], theta.dtype))

        def matvec(u):  # sum_c J_c J_c^T u, (N,)
            w = channel_vjps(u)

            def block(start):
                tape, out = record(start)

                def channel(c, total):
                    block = transpose(tape, out, tf.zeros_like(out), tf.gather(w, c))
                    return total + tf.cast(block[:, c], u.dtype)

                return over_channels(channel, tf.zeros_like(out[:, 0], dtype=u.dtype))[:, None]

            return tf.reshape(row_blocks(block, u.dtype), [-1])

        def gram_norm(u):
            w = tf.cast(channel_vjps(u), tf.float64)
            return tf.reduce_sum(tf.square(w))

        matvec.gram_norm = gram_norm
        return matvec

    return linearize
