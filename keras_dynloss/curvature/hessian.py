"""Hessian and generalised Gauss-Newton products of a model's loss.

Both operators act on the flat parameter vector `theta` (`flat.FlatParameters`,
all trainable variables or the subset given by `variables=`):

* `"hessian"`: `H = d^2 L / d theta^2`;
* `"gauss_newton"`: `G = J^T H_out J (+ the Hessian of the model's added
  losses)`, with `J = d f / d theta` the Jacobian of the model outputs `f` and
  `H_out = d^2 loss / d f^2` the Hessian of the loss in the outputs. `G` is
  positive semi-definite whenever the loss is convex in the outputs
  (cross-entropy on logits, mean squared error), and equals `H` minus the
  term `sum_k (d loss / d f_k) d^2 f_k / d theta^2`.
"""

import numpy as np
import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss.curvature import data as data_lib
from keras_dynloss.curvature import errors
from keras_dynloss.curvature import flat as flat_lib

HVP_MODES = ("forward_over_reverse", "reverse_over_reverse")
OPERATORS = ("hessian", "gauss_newton")
_ZERO = tf.UnconnectedGradients.ZERO


def _loss_fn(flat, loss, training, include_regularization):
    def value(theta, x, y, sw):
        return flat_lib.loss_value(
            flat, loss, theta, x, y, sw, training=training, include_regularization=include_regularization
        )

    return value


def _reverse_over_reverse(value):
    """`(theta, x, y, sw) -> (matvec, L)` with `matvec(v) = grad_theta <grad L, v>`.

    The forward pass and the gradient are recorded once on a persistent tape;
    each product is then one backward pass through the gradient's graph.
    """

    def linearize(theta, x, y, sw):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(theta)
            with tf.GradientTape() as inner:
                inner.watch(theta)
                l = value(theta, x, y, sw)
            g = inner.gradient(l, theta, unconnected_gradients=_ZERO)

        def matvec(v):
            return outer.gradient(g, theta, output_gradients=v, unconnected_gradients=_ZERO)

        return matvec, l

    return linearize


def hvp_fn(flat, loss, *, mode="reverse_over_reverse", training=False, include_regularization=True):
    """Builds an (uncompiled) function `(theta, v, x, y, sw) -> (H v, L)`.

    `H = d^2 L / d theta^2` at `theta` (shape `(n,)`), `L` the scalar loss.

    * `"forward_over_reverse"`: a `tf.autodiff.ForwardAccumulator` pushes the
      tangent `v` through the reverse-mode gradient: `H v = J_fwd(grad L) v`.
    * `"reverse_over_reverse"`: `H v = grad_theta <grad L(theta), v>`.
    """
    mode = val.check_choice("mode", mode, HVP_MODES)
    value = _loss_fn(flat, loss, training, include_regularization)

    if mode == "forward_over_reverse":

        def fn(theta, v, x, y, sw):
            with tf.autodiff.ForwardAccumulator(theta, v) as acc:
                with tf.GradientTape() as tape:
                    tape.watch(theta)
                    l = value(theta, x, y, sw)
                g = tape.gradient(l, theta, unconnected_gradients=_ZERO)
            return acc.jvp(g, unconnected_gradients=_ZERO), l

    else:
        linearize = _reverse_over_reverse(value)

        def fn(theta, v, x, y, sw):
            matvec, l = linearize(theta, x, y, sw)
            return matvec(v), l

    return fn


def ggn_fn(flat, loss, *, training=False, include_regularization=True):
    """Builds `(theta, v, x, y, sw) -> (G v, L)`, `G = J^T H_out J (+ H_reg)`.

    One forward pass carries a `ForwardAccumulator` (`J v`) under a
    `GradientTape` (for `J^T`); `H_out (J v)` is a reverse-over-reverse product
    of the loss in the outputs. Added losses (regularisers) enter with their
    exact Hessian, from a second forward pass only when the model has any.
    """

    def regularizer_hvp(theta, v, x):
        with tf.GradientTape() as outer:
            outer.watch(theta)
            with tf.GradientTape() as inner:
                inner.watch(theta)
                _, extra = flat_lib.model_outputs(flat, theta, x, training=training, return_losses=True)
                total = tf.add_n(extra)
            g = inner.gradient(total, theta, unconnected_gradients=_ZERO)
        return outer.gradient(g, theta, output_gradients=v, unconnected_gradients=_ZERO), total

    def fn(theta, v, x, y, sw):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            with tf.autodiff.ForwardAccumulator(theta, v) as acc:
                out, extra = flat_lib.model_outputs(flat, theta, x, training=training, return_losses=True)
            jv = tf.nest.map_structure(lambda o: acc.jvp(o, unconnected_gradients=_ZERO), out)
        fixed = tf.nest.map_structure(tf.stop_gradient, out)
        with tf.GradientTape() as outer:
            outer.watch(fixed)
            with tf.GradientTape() as inner:
                inner.watch(fixed)
                l = flat_lib.loss_term(flat, loss, fixed, y, sw)
            g_out = inner.gradient(l, fixed, unconnected_gradients=_ZERO)
        h_jv = outer.gradient(g_out, fixed, output_gradients=jv, unconnected_gradients=_ZERO)
        gv = tape.gradient(out, theta, output_gradients=h_jv, unconnected_gradients=_ZERO)
        if include_regularization and extra:
            hr, total = regularizer_hvp(theta, v, x)
            gv, l = gv + hr, l + total
        return gv, l

    return fn


def curvature_fn(flat, loss, *, operator="hessian", mode="reverse_over_reverse", training=False,
                 include_regularization=True):
    """`hvp_fn` or `ggn_fn` by name: `(theta, v, x, y, sw) -> (A v, L)`."""
    operator = val.check_choice("operator", operator, OPERATORS)
    mode = val.check_choice("mode", mode, HVP_MODES)
    kwargs = dict(training=training, include_regularization=include_regularization)
    if operator == "gauss_newton":
        return ggn_fn(flat, loss, **kwargs)
    return hvp_fn(flat, loss, mode=mode, **kwargs)


def linearized_curvature_fn(flat, loss, *, operator="hessian", mode="reverse_over_reverse", training=False,
                             include_regularization=True):
    """Builds `(theta, x, y, sw) -> matvec`, `matvec(v) = A v` at `theta` on the batch.

    For the reverse-over-reverse Hessian the forward pass and the gradient run
    once, when the function is called; each `matvec` is then one backward pass
    through the gradient's graph (on a ResNet-style CNN, 6 products took 1.95 s
    instead of 2.4 s). Called in a `tf.function` outside a loop whose body
    calls `matvec` (the probe's Lanczos), that first pass runs once per loop and
    its activations and the gradient's graph stay alive for the loop (on that
    CNN a probe then peaks at 4.1 loss gradients of memory, against 2.6 with
    forward-over-reverse products and 2.8 for one product alone). Gauss-Newton and
    forward-over-reverse products carry the tangent through the forward pass,
    so there `matvec` runs the whole product (`curvature_fn`).
    """
    operator = val.check_choice("operator", operator, OPERATORS)
    mode = val.check_choice("mode", mode, HVP_MODES)
    if operator == "hessian" and mode == "reverse_over_reverse":
        linearize = _reverse_over_reverse(_loss_fn(flat, loss, training, include_regularization))
        return lambda theta, x, y, sw: linearize(theta, x, y, sw)[0]
    product = curvature_fn(flat, loss, operator=operator, mode=mode, training=training,
                           include_regularization=include_regularization)
    return lambda theta, x, y, sw: (lambda v: product(theta, v, x, y, sw)[0])


def grad_fn(flat, loss, *, training=False, include_regularization=True):
    """Builds `(theta, x, y, sw) -> (grad L, L)`."""
    value = _loss_fn(flat, loss, training, include_regularization)

    def fn(theta, x, y, sw):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            l = value(theta, x, y, sw)
        return tape.gradient(l, theta, unconnected_gradients=_ZERO), l

    return fn


class HessianOperator:
    """Curvature product `v -> A v` of a model's loss on a batch or dataset.

    `A` is the Hessian `H = d^2 L / d theta^2` (default) or the generalised
    Gauss-Newton matrix `G = J^T H_out J` (`operator="gauss_newton"`), with
    `theta` the flat vector of the chosen trainable parameters (shape `(n,)`;
    all of them by default, see `variables`) and `L` the loss on `data` plus the
    model's added losses (weight regularisation). For a dataset,
    `L = sum_b N_b L_b / sum_b N_b` (batch losses weighted by batch size).

    Args:
        model: a built `keras.Model`.
        loss: any callable `loss(y_true, y_pred[, sample_weight]) -> scalar`,
            e.g. a `keras.losses.Loss` (a `DynamicalLoss` bound to a step
            included). Non-scalar results are averaged.
        data: `(x, y)` / `(x, y, sample_weight)` arrays or tensors, or a
            `tf.data.Dataset` yielding such tuples. A dataset is read once, here,
            and its batches kept in memory (`batches`): every product uses the
            same data, so a shuffled or randomly augmented dataset gives the
            curvature of the batches drawn now. An infinite or
            unknown-cardinality dataset needs `num_batches`.
        variables: `None` (all trainable variables) or a list of trainable
            variables and/or layers: `A` is then the block of the full matrix
            for those parameters (the others held fixed).
        operator: `"hessian"` (default) or `"gauss_newton"`.
        num_batches: use only the first `num_batches` batches of a dataset.
        mode: Hessian products by `"reverse_over_reverse"` (default; two
            nested tapes) or `"forward_over_reverse"` (`ForwardAccumulator`
            around `GradientTape`); same product. Unused for Gauss-Newton.
        training: run the model in training mode (`Dropout` active with a fixed
            mask, `BatchNormalization` on batch statistics). Default `False`.
            The model's state is untouched either way.
        include_regularization: add `model.losses` (e.g. kernel regularisers).

    Attributes:
        size: `n`.
        dtype: parameter dtype in which products are computed.
        num_matvecs: products computed so far.
        batches: list of `(x, y, sample_weight or None)` the operator uses.

    Example:
        >>> hvp = HessianOperator(model, keras.losses.MeanSquaredError(), (x, y))
        >>> hv = hvp(np.ones(hvp.size))        # float64 in, float64 out, (n,)
    """

    def __init__(self, model, loss, data, *, variables=None, operator="hessian", num_batches=None,
                 mode="reverse_over_reverse", training=False, include_regularization=True):
        val.check_callable("loss", loss)
        if not isinstance(training, bool):
            raise val.invalid("training", "a bool", training)
        self.flat = flat_lib.FlatParameters(model, variables)
        self.model = model
        self.loss = loss
        self._batches = data_lib.materialize(data, num_batches=num_batches)
        self.batches = [(x, y, sw) for x, y, sw, _ in self._batches]
        self.operator = val.check_choice("operator", operator, OPERATORS)
        self.mode = val.check_choice("mode", mode, HVP_MODES)
        self.size = self.flat.size
        self.dtype = self.flat.dtype
        self.num_matvecs = 0
        kwargs = dict(training=training, include_regularization=include_regularization)
        product = curvature_fn(self.flat, loss, operator=operator, mode=mode, **kwargs)
        grad = grad_fn(self.flat, loss, **kwargs)
        self._raw_grad = grad
        flat = self.flat
        self._product = tf.function(lambda v, x, y, sw: product(flat.read(), v, x, y, sw)[0], reduce_retracing=True,
                                    autograph=False)
        self._grad = tf.function(lambda x, y, sw: grad(flat.read(), x, y, sw), reduce_retracing=True, autograph=False)

    def _average(self, fn):
        total, count = None, 0
        for x, y, sw, nb in self._batches:
            out = errors.run_guarded(self.model, fn, x, y, sw, probes=self._probes(x, y, sw))
            out = tf.nest.map_structure(lambda t: t * tf.cast(nb, t.dtype), out)
            total = out if total is None else tf.nest.map_structure(tf.add, total, out)
            count += nb
        return tf.nest.map_structure(lambda t: t / tf.cast(count, t.dtype), total)

    def _probes(self, x, y, sw):
        flat = self.flat
        return [
            (lambda x, y, sw: self._raw_grad(flat.read(), x, y, sw), (x, y, sw)),
            (lambda x: flat_lib.model_outputs(flat, flat.read(), x), (x,)),
        ]

    def matvec_tensor(self, v):
        """`A v` for a tensor `v` of shape `(n,)` in the parameter dtype."""
        self.num_matvecs += 1
        return self._average(lambda x, y, sw: self._product(v, x, y, sw))

    def __call__(self, v):
        """Returns `A v`, same kind (NumPy/tensor) and dtype as `v`, shape `(n,)`."""
        t, is_tensor, in_dtype = flat_lib.convert_in(v, self.size, self.dtype)
        return flat_lib.convert_out(self.matvec_tensor(t), is_tensor, in_dtype)

    def gradient(self):
        """Returns `(grad L, L)` as NumPy arrays of shapes `(n,)` and `()`."""
        g, l = self._average(self._grad)
        return g.numpy(), l.numpy()

    def dense(self):
        """The full matrix `(n, n)` in float64, built column by column (small n)."""
        eye = tf.eye(self.size, dtype=self.dtype)
        cols = [self.matvec_tensor(eye[i]).numpy() for i in range(self.size)]
        return np.stack(cols, axis=1).astype(np.float64)
