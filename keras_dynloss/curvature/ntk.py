"""Empirical neural tangent kernel (NTK) products and Jacobians.

With `J_c` the `(N, n)` Jacobian of output channel `c` of the model (logits)
on `N` inputs w.r.t. the flat parameters `theta` (`flat.FlatParameters`):

* traced NTK: `Theta = sum_c J_c J_c^T`, shape `(N, N)`;
* full NTK: `Theta = J J^T`, shape `(N*K, N*K)`, rows sample-major (`i*K + c`).

Products use VJPs (reverse mode) and JVPs (forward mode) and never form `J`;
`ntk_jacobian` forms it explicitly (memory `N * K * n`) for small problems.
"""

import numpy as np
import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss.curvature import distributed
from keras_dynloss.curvature import errors
from keras_dynloss.curvature import flat as flat_lib

_ZERO = tf.UnconnectedGradients.ZERO


def ntk_matvec_fn(flat, *, trace_outputs=True, training=False, num_outputs, devices=None):
    """Builds `(theta, u, x) -> Theta u` without forming the Jacobian.

    * traced (`trace_outputs=True`): `u` has shape `(N,)` and
      `Theta u = sum_c J_c J_c^T u`: one VJP and one JVP per channel, the
      channels in a `tf.while_loop` (graph size independent of `K`);
    * full: `u` has shape `(N*K,)` and `Theta u = J J^T u`: one VJP, one JVP.

    With `devices` (a `MirroredStrategy`'s, see `distributed`) the `N` rows are
    split into contiguous shards, one per device: each VJP is the sum of the
    shards' VJPs, each JVP the concatenation of the shards' JVPs.
    """

    def f(theta, x):
        return flat_lib.flat_outputs(flat_lib.model_outputs(flat, theta, x, training=training))

    def vjp_local(theta, x, cot):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            out = f(theta, x)
        return tape.gradient(out, theta, output_gradients=tf.cast(cot, out.dtype), unconnected_gradients=_ZERO)

    def jvp_local(theta, x, w):
        with tf.autodiff.ForwardAccumulator(theta, w) as acc:
            out = f(theta, x)
        return acc.jvp(out, unconnected_gradients=_ZERO)

    def vjp(theta, x, cot):  # J^T cot, cot (N, K)
        if not devices:
            return vjp_local(theta, x, cot)
        return tf.add_n(distributed.on_shards(devices, x, lambda start, size: vjp_local(
            theta, distributed.take_rows(x, start, size), cot[start:start + size])))

    def jvp(theta, x, w):  # J w, (N, K)
        if not devices:
            return jvp_local(theta, x, w)
        return tf.concat(distributed.on_shards(devices, x, lambda start, size: jvp_local(
            theta, distributed.take_rows(x, start, size), w)), 0)

    if trace_outputs:

        def fn(theta, u, x):
            def body(c, total):
                cot = u[:, None] * tf.one_hot(c, num_outputs, dtype=u.dtype)[None, :]
                w = vjp(theta, x, cot)
                return c + 1, total + tf.cast(jvp(theta, x, w)[:, c], u.dtype)

            _, total = tf.while_loop(
                lambda c, _: c < num_outputs, body, (tf.constant(0), tf.zeros_like(u)),
                parallel_iterations=1,  # one VJP/JVP pair in memory at a time
            )
            return total

    else:

        def fn(theta, u, x):
            w = vjp(theta, x, tf.reshape(u, [-1, num_outputs]))
            return tf.cast(tf.reshape(jvp(theta, x, w), [-1]), u.dtype)

    return fn


def num_samples_and_outputs(flat, x, training=False):
    """`(N, K)` of the flattened model outputs on `x`."""
    out = flat_lib.flat_outputs(flat_lib.model_outputs(flat, flat.read(), x, training=training))
    return int(out.shape[0]), int(out.shape[1])


class NTKOperator:
    """Empirical NTK product `u -> Theta u` on a fixed input batch (matrix free).

    `Theta = sum_c J_c J_c^T` (shape `(N, N)`, traced over the K outputs) or
    `Theta = J J^T` (shape `(N*K, N*K)`, rows sample-major, index `i*K + c`),
    with `J_c[i] = d f_c(x_i) / d theta` of the model outputs (logits) w.r.t.
    the chosen trainable parameters. Computed with VJPs/JVPs, never forming `J`.

    Args:
        model: a built `keras.Model`.
        x: input batch (N samples).
        trace_outputs: trace over outputs (default) or keep the full matrix.
        training: run the model in training mode (default `False`).
        variables: `None` (all trainable variables) or a list of variables
            and/or layers: the NTK of those parameters only.

    Attributes:
        size: `N` (traced) or `N*K` (full).
        num_outputs: `K`.
    """

    def __init__(self, model, x, *, trace_outputs=True, training=False, variables=None):
        if not isinstance(trace_outputs, bool):
            raise val.invalid("trace_outputs", "a bool", trace_outputs)
        self.flat = flat_lib.FlatParameters(model, variables)
        self.model = model
        self.x = tf.nest.map_structure(tf.convert_to_tensor, x)
        n_samples, k = num_samples_and_outputs(self.flat, self.x, training)
        self.num_samples, self.num_outputs = n_samples, k
        self.size = n_samples if trace_outputs else n_samples * k
        self.dtype = self.flat.dtype
        self.num_matvecs = 0
        fn = ntk_matvec_fn(self.flat, trace_outputs=trace_outputs, training=training, num_outputs=k)
        flat = self.flat
        self._fn = tf.function(lambda u, x: fn(flat.read(), u, x))

    def matvec_tensor(self, u):
        """`Theta u` for a tensor `u` of shape `(size,)` in the parameter dtype."""
        self.num_matvecs += 1
        return errors.run_guarded(
            self.model, self._fn, u, self.x, probes=errors.output_probes(self.flat, self.x)
        )

    def __call__(self, u):
        """Returns `Theta u`, same kind and dtype as `u`."""
        t, is_tensor, in_dtype = flat_lib.convert_in(u, self.size, self.dtype, name="u")
        return flat_lib.convert_out(self.matvec_tensor(t), is_tensor, in_dtype)


def ntk_jacobian(model, x, *, training=False, batch_size=None, variables=None):
    """Jacobian of the model outputs w.r.t. the chosen trainable parameters.

    Args:
        model: a built `keras.Model`.
        x: inputs, N samples.
        training: run the model in training mode (default `False`).
        batch_size: samples per `tape.jacobian` call (default: all at once).
        variables: `None` (all trainable variables) or variables/layers.

    Returns:
        float64 NumPy array of shape `(N, K, n)`.
    """
    flat = flat_lib.FlatParameters(model, variables)
    x = tf.nest.map_structure(tf.convert_to_tensor, x)
    n_samples = int(tf.nest.flatten(x)[0].shape[0])
    batch_size = val.check_int("batch_size", batch_size, minimum=1, allow_none=True) or n_samples

    @tf.function(reduce_retracing=True)
    def jac(xb):
        theta = flat.read()
        with tf.GradientTape() as tape:
            tape.watch(theta)
            out = flat_lib.flat_outputs(flat_lib.model_outputs(flat, theta, xb, training=training))
        return tape.jacobian(out, theta, experimental_use_pfor=True)

    blocks = []
    for start in range(0, n_samples, batch_size):
        xb = tf.nest.map_structure(lambda a: a[start : start + batch_size], x)
        out = errors.run_guarded(model, jac, xb, probes=errors.output_probes(flat, xb))
        blocks.append(out.numpy().astype(np.float64))
    return np.concatenate(blocks, axis=0)
