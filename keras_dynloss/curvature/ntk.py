"""Empirical neural tangent kernel (NTK) products and Jacobians.

With `J_c` the `(N, n)` Jacobian of output channel `c` of the model (logits)
on `N` inputs w.r.t. the flat parameters `theta` (`flat.FlatParameters`):

* traced NTK: `Theta = sum_c J_c J_c^T`, shape `(N, N)`;
* full NTK: `Theta = J J^T`, shape `(N*K, N*K)`, rows sample-major (`i*K + c`).

Products record the forward pass once and then run backward passes only
(`J^T U` and its transpose `J w`, see `ntk_linearized_fn`), never forming `J`;
`ntk_jacobian` forms it explicitly (memory `N * K * n`) for small problems.
"""

import numpy as np
import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss.curvature import distributed
from keras_dynloss.curvature import errors
from keras_dynloss.curvature import flat as flat_lib

_ZERO = tf.UnconnectedGradients.ZERO


def ntk_linearized_fn(flat, *, trace_outputs=True, training=False, num_outputs, devices=None):
    """Builds `(theta, x) -> matvec`, `matvec(u) = Theta u`, never forming `J`.

    The forward pass on `x` is recorded once, when the function is called, on a
    persistent tape; every product then runs backward passes only:

    * `J^T U` is one backward pass with cotangent `U` (shape `(N, K)`);
    * `J w` is the transpose of that linear map: a backward pass through the
      first backward pass's graph, w.r.t. `U` (the "double-VJP" trick), with
      no second forward pass;
    * traced (`trace_outputs=True`): `u` has shape `(N,)` and
      `Theta u = sum_c J_c J_c^T u`, one pair per channel `c` (cotangent
      `u e_c^T`, keep column `c`), the channels in a `tf.while_loop` (graph size
      independent of `K`, one pair in memory at a time);
    * full: `u` has shape `(N*K,)` and `Theta u = J J^T u`, one pair.

    On the 30.7k-parameter ResNet-style CNN of `bench/curvature_scale.py`
    (N = 256, K = 10) a traced product takes 2.3 s instead of 3.2 s with a
    `ForwardAccumulator` JVP and a forward pass per VJP and JVP.

    With `devices` (a `MirroredStrategy`'s, see `distributed`) the `N` rows are
    split into contiguous shards, one per device, each recorded on its device:
    `J^T U = sum_r J_r^T U_r` (summed over shards), `J w` the concatenation of
    the shards' `J_r w`.
    """

    placements = devices or [None]

    def linearize(theta, x):
        def record(start, size):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(theta)
                xs = distributed.take_rows(x, start, size)
                out = flat_lib.flat_outputs(flat_lib.model_outputs(flat, theta, xs, training=training))
            return start, size, tape, out

        shards = distributed.on_shards(devices, x, record)

        def gram(cot):  # J J^T cot, cot (N, K)
            transposes = []
            for device, (start, size, tape, out) in zip(placements, shards):
                with distributed.on_device(device), tf.GradientTape() as t2:
                    cot_r = tf.cast(cot[start:start + size], out.dtype)
                    t2.watch(cot_r)
                    w_r = tape.gradient(out, theta, output_gradients=cot_r, unconnected_gradients=_ZERO)
                transposes.append((device, t2, cot_r, w_r))
            w = tf.add_n([w_r for *_, w_r in transposes])
            parts = []
            for device, t2, cot_r, w_r in transposes:
                with distributed.on_device(device):
                    parts.append(t2.gradient(w_r, cot_r, output_gradients=w, unconnected_gradients=_ZERO))
            return tf.concat(parts, 0)

        def vjp(cot):  # J^T cot, no transpose recorded
            terms = []
            for device, (start, size, tape, out) in zip(placements, shards):
                with distributed.on_device(device):
                    cot_r = tf.cast(cot[start:start + size], out.dtype)
                    terms.append(tape.gradient(out, theta, output_gradients=cot_r, unconnected_gradients=_ZERO))
            return tf.add_n(terms)

        return gram_matvec(gram, trace_outputs, num_outputs, vjp=vjp)

    return linearize


def gram_matvec(gram, trace_outputs, num_outputs, vjp=None):
    """`u -> Theta u` from `gram(cot) = J J^T cot` (`cot` of shape `(N, K)`).

    Traced: `sum_c J_c J_c^T u`, one `gram` per channel `c` (cotangent
    `u e_c^T`, column `c` kept) in a `tf.while_loop`, one pair in memory at a
    time. Full: one `gram` of `u` reshaped to `(N, K)`, flattened back.

    With `vjp(cot) = J^T cot` the matvec carries `matvec.gram_norm`:
    `u -> u^T Theta u = ||M^T u||^2` from the backward passes alone (traced:
    `sum_c ||J_c^T u||^2`; full: `||J^T u||^2`), for `krylov.lanczos_loop`'s
    Gram pair.
    """
    if trace_outputs:

        def over_channels(u, term, total):
            """`total + sum_c term(c, u e_c^T)`, one channel at a time (one pair in memory)."""

            def body(c, total):
                cot = u[:, None] * tf.one_hot(c, num_outputs, dtype=u.dtype)[None, :]
                return c + 1, total + term(c, cot)

            return tf.while_loop(lambda c, _: c < num_outputs, body, (tf.constant(0), total),
                                 parallel_iterations=1)[1]

        def norm(u):
            return over_channels(u, lambda c, cot: tf.reduce_sum(tf.square(tf.cast(vjp(cot), tf.float64))),
                                 tf.zeros([], tf.float64))

        def matvec(u):
            return over_channels(u, lambda c, cot: tf.cast(gram(cot)[:, c], u.dtype), tf.zeros_like(u))

    else:

        def norm(u):
            return tf.reduce_sum(tf.square(tf.cast(vjp(tf.reshape(u, [-1, num_outputs])), tf.float64)))

        def matvec(u):
            return tf.cast(tf.reshape(gram(tf.reshape(u, [-1, num_outputs])), [-1]), u.dtype)

    if vjp is not None:
        matvec.gram_norm = norm
    return matvec


def ntk_matvec_fn(flat, *, trace_outputs=True, training=False, num_outputs, devices=None):
    """Builds `(theta, u, x) -> Theta u`: `ntk_linearized_fn` recorded and
    applied once (see there for `Theta`, the shapes and `devices`)."""
    linearize = ntk_linearized_fn(flat, trace_outputs=trace_outputs, training=training,
                                  num_outputs=num_outputs, devices=devices)
    return lambda theta, u, x: linearize(theta, x)(u)


def num_samples_and_outputs(flat, x, training=False):
    """`(N, K)` of the flattened model outputs on `x`, from the traced forward
    pass (nothing runs) unless its output shape is not static."""
    shape = flat_lib.traced_outputs(flat, x, training=training).structured_outputs.shape
    if not shape.is_fully_defined():
        shape = flat_lib.flat_outputs(flat_lib.model_outputs(flat, flat.read(), x, training=training)).shape
    return int(shape[0]), int(shape[1])


class NTKOperator:
    """Empirical NTK product `u -> Theta u` on a fixed input batch (matrix free).

    `Theta = sum_c J_c J_c^T` (shape `(N, N)`, traced over the K outputs) or
    `Theta = J J^T` (shape `(N*K, N*K)`, rows sample-major, index `i*K + c`),
    with `J_c[i] = d f_c(x_i) / d theta` of the model outputs (logits) w.r.t.
    the chosen trainable parameters. Computed with VJPs and their transposes
    (`ntk_linearized_fn`), never forming `J`.

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
        self._fn = tf.function(lambda u, x: fn(flat.read(), u, x), autograph=False)

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

    @tf.function(reduce_retracing=True, autograph=False)
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
