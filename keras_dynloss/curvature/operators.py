"""Curvature operators of a Keras model: Hessian- and NTK-vector products.

An operator is a callable `v -> A v` on the flat vector of *all trainable
parameters* of a model (size `n = sum of the trainable variables' sizes`, in
the order of `model.trainable_variables`, each variable flattened row-major).
It accepts float32 or float64 NumPy arrays or tensors of shape `(n,)` and
returns the same kind and dtype; the products themselves are computed in the
model's parameter dtype inside a compiled `tf.function`.

Operators never change the model: the forward pass is `model.stateless_call`
on the current parameter values, in inference mode by default (`Dropout` off,
`BatchNormalization` using its moving statistics), and the updated
non-trainable state that `stateless_call` returns is discarded. No optimizer
state is read or written.
"""

import contextlib
import re

import keras
import numpy as np
import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss import _compat
from keras_dynloss.curvature import data as data_lib

HVP_MODES = ("forward_over_reverse", "reverse_over_reverse")


class NotTwiceDifferentiableError(ValueError):
    """Raised when a layer of the model has no second derivative in TensorFlow.

    Attributes:
        layer_name: name of the offending layer, or `None` when it could not be
            identified from the TensorFlow error.
    """

    def __init__(self, message, layer_name=None):
        super().__init__(message)
        self.layer_name = layer_name


# --------------------------------------------------------------------------- #
# Flat parameter vector
# --------------------------------------------------------------------------- #
class FlatParameters:
    """Maps the trainable variables of a model to one flat vector and back.

    Args:
        model: a built `keras.Model` (or layer) with trainable variables.

    Attributes:
        size: `n`, total number of trainable scalars.
        dtype: the common (widest) dtype of the trainable variables.
        shapes: list of variable shapes.
    """

    def __init__(self, model):
        if not isinstance(model, keras.layers.Layer):
            raise val.invalid("model", "a built `keras.Model`", model)
        if not model.built:
            raise val.invalid(
                "model",
                "a built model (call it on data or use `model.build()` first)",
                model,
            )
        self.model = model
        self.variables = list(model.trainable_variables)
        if not self.variables:
            raise val.invalid(
                "model", "a model with at least one trainable variable", model
            )
        self.shapes = [tuple(int(d) for d in v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.var_dtypes = [tf.as_dtype(v.dtype) for v in self.variables]
        for d in self.var_dtypes:
            if not d.is_floating:
                raise val.invalid(
                    "model", "floating-point trainable variables", model
                )
        widest = max(self.var_dtypes, key=lambda d: d.size)
        self.dtype = widest
        self.size = int(sum(self.sizes))
        # Mixed-precision layers (compute dtype narrower than their variables).
        self._mixed = [
            (layer, layer.dtype_policy)
            for layer in _compat.iter_layers(model)
            if layer.dtype_policy.compute_dtype != layer.dtype_policy.variable_dtype
        ]

    @contextlib.contextmanager
    def full_precision(self):
        """Runs every mixed-precision layer in its variable dtype meanwhile.

        Under `mixed_float16` / `mixed_bfloat16` a layer keeps float32
        variables but computes in 16 bits; second derivatives in 16 bits lose
        about three digits (and overflow easily). Curvature products therefore
        trace the model with each such layer's policy set to its variable dtype
        (float32), restored on exit. The model's own training is unaffected.
        """
        if not self._mixed:
            yield
            return
        for layer, policy in self._mixed:
            layer.dtype_policy = policy.variable_dtype
        try:
            yield
        finally:
            for layer, policy in self._mixed:
                layer.dtype_policy = policy

    def read(self):
        """Current parameter values as one tensor of shape `(n,)`."""
        return tf.concat(
            [
                tf.reshape(tf.cast(tf.convert_to_tensor(v.value), self.dtype), [-1])
                for v in self.variables
            ],
            axis=0,
        )

    def split(self, theta):
        """Inverse of `read`: list of tensors with the variables' shapes/dtypes."""
        parts = tf.split(theta, self.sizes, axis=0)
        return [
            tf.cast(tf.reshape(p, s), d)
            for p, s, d in zip(parts, self.shapes, self.var_dtypes)
        ]

    def non_trainable_values(self):
        return [tf.convert_to_tensor(v.value) for v in self.model.non_trainable_variables]


def model_outputs(flat, theta, x, *, training=False, return_losses=False):
    """Runs `model.stateless_call` with parameters `theta` (shape `(n,)`).

    Returns the outputs, and if `return_losses` the sum of the model's added
    losses (e.g. weight regularisation) as a scalar (0 when there are none).
    """
    model = flat.model
    kwargs = {}
    if getattr(model, "_call_has_training_arg", True):
        kwargs["training"] = training
    with flat.full_precision():
        result = model.stateless_call(
            flat.split(theta),
            flat.non_trainable_values(),
            x,
            return_losses=return_losses,
            **kwargs,
        )
    if not return_losses:
        return result[0]
    outputs, _, losses = result
    total = tf.zeros([], dtype=flat.dtype)
    for item in losses or []:
        total = total + tf.cast(item, flat.dtype)
    return outputs, total


def loss_value(flat, loss, theta, x, y, sample_weight, *, training, include_regularization):
    """Scalar training objective `loss(y, model(x; theta)) [+ added losses]`."""
    outputs, extra = model_outputs(
        flat, theta, x, training=training, return_losses=True
    )
    if sample_weight is None:
        value = loss(y, outputs)
    else:
        value = loss(y, outputs, sample_weight=sample_weight)
    value = tf.convert_to_tensor(value)
    if value.shape.rank:
        value = tf.reduce_mean(value)
    value = tf.cast(value, flat.dtype)
    if include_regularization:
        value = value + extra
    return value


def hvp_fn(flat, loss, *, mode="reverse_over_reverse", training=False, include_regularization=True):
    """Builds an (uncompiled) function `(theta, v, x, y, sw) -> (H v, g, L)`.

    `H = d^2 L / d theta^2` at `theta`, `g = dL/dtheta`, both shape `(n,)`.

    * `"forward_over_reverse"`: a `tf.autodiff.ForwardAccumulator` pushes the
      tangent `v` through the reverse-mode gradient: `H v = J_fwd(grad L) v`.
    * `"reverse_over_reverse"`: `H v = grad_theta <grad L(theta), v>`.
    """
    mode = val.check_choice("mode", mode, HVP_MODES)

    def value(theta, x, y, sw):
        return loss_value(
            flat, loss, theta, x, y, sw,
            training=training, include_regularization=include_regularization,
        )

    zero = tf.UnconnectedGradients.ZERO
    if mode == "forward_over_reverse":

        def fn(theta, v, x, y, sw):
            with tf.autodiff.ForwardAccumulator(theta, v) as acc:
                with tf.GradientTape() as tape:
                    tape.watch(theta)
                    l = value(theta, x, y, sw)
                g = tape.gradient(l, theta, unconnected_gradients=zero)
            hv = acc.jvp(g, unconnected_gradients=zero)
            return hv, g, l

    else:

        def fn(theta, v, x, y, sw):
            with tf.GradientTape() as outer:
                outer.watch(theta)
                with tf.GradientTape() as inner:
                    inner.watch(theta)
                    l = value(theta, x, y, sw)
                g = inner.gradient(l, theta, unconnected_gradients=zero)
            hv = outer.gradient(g, theta, output_gradients=v, unconnected_gradients=zero)
            return hv, g, l

    return fn


def grad_fn(flat, loss, *, training=False, include_regularization=True):
    """Builds `(theta, x, y, sw) -> (grad L, L)` (used for timing baselines)."""

    def fn(theta, x, y, sw):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            l = loss_value(
                flat, loss, theta, x, y, sw,
                training=training, include_regularization=include_regularization,
            )
        return tape.gradient(l, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO), l

    return fn


# --------------------------------------------------------------------------- #
# Data handling
# --------------------------------------------------------------------------- #
def _batch_size(x):
    first = tf.nest.flatten(x)[0]
    return int(first.shape[0]) if first.shape[0] is not None else int(tf.shape(first)[0])


def _split_element(element, name):
    if isinstance(element, (tuple, list)) and len(element) in (2, 3):
        x, y = element[0], element[1]
        sw = element[2] if len(element) == 3 else None
        return x, y, sw
    raise val.invalid(
        name,
        "an (x, y) pair, an (x, y, sample_weight) triple or a tf.data.Dataset "
        "of such tuples",
        type(element).__name__,
    )


def _to_tensor(x, dtype=None):
    return tf.nest.map_structure(
        lambda a: tf.convert_to_tensor(a) if dtype is None else tf.convert_to_tensor(a, dtype), x
    )


def iterate_batches(data, name="data"):
    """Yields `(x, y, sample_weight, batch_size)` tensors from `data`."""
    if isinstance(data, tf.data.Dataset):
        count = 0
        for element in data:
            x, y, sw = _split_element(element, name)
            count += 1
            yield x, y, sw, _batch_size(x)
        if count == 0:
            raise val.invalid(name, "a non-empty dataset", data)
        return
    x, y, sw = _split_element(data, name)
    x, y = _to_tensor(x), _to_tensor(y)
    sw = None if sw is None else _to_tensor(sw)
    yield x, y, sw, _batch_size(x)


def check_data(data, name="data"):
    """Validates `data`; returns it with array batches converted to tensors."""
    if isinstance(data, tf.data.Dataset):
        return data
    x, y, sw = _split_element(data, name)
    x, y = _to_tensor(x), _to_tensor(y)
    if _batch_size(x) < 1:
        raise val.invalid(name, "a non-empty batch", data)
    return (x, y) if sw is None else (x, y, _to_tensor(sw))


# --------------------------------------------------------------------------- #
# Errors: second derivatives that TensorFlow does not provide
# --------------------------------------------------------------------------- #
def _layer_names(model):
    return [(layer.name, type(layer).__name__) for layer in _compat.iter_layers(model)[1:]]


_NO_GRAD_PATTERNS = (
    re.compile(r"gradient registry has no entry for: ?'?([A-Za-z0-9_]+)"),
    re.compile(r"No gradient defined for operation.*?op type: ?'?([A-Za-z0-9_]+)"),
)


def _missing_gradient_op(error):
    text = str(error)
    for pattern in _NO_GRAD_PATTERNS:
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None


def _match_layer(model, text):
    found, best = None, -1
    for name, cls in _layer_names(model):
        pattern = r"(?:^|[/'\"\s])(" + re.escape(name) + r")(_\d+)?/"
        for m in re.finditer(pattern, text):
            score = len(name) + (0 if m.group(2) else 1000)
            if score > best:
                best, found = score, (name, cls)
    return found


def _locate_op(model, op_type, probes):
    """Finds the layer owning an op of type `op_type` in traced graphs.

    `probes` is a list of `(python_function, args)`; each is traced (never
    run) and its graph searched for the op, whose name carries the layer's
    name scope.
    """
    for fn, args in probes:
        try:
            graph = tf.function(fn).get_concrete_function(*args).graph
        except Exception:  # the probe itself may hit the missing gradient
            continue
        for op in graph.get_operations():
            if op.type == op_type:
                found = _match_layer(model, op.name)
                if found is not None:
                    return found
    return None


def explain_failure(model, error, probes=()):
    """Turns a TensorFlow missing-gradient error into one naming the layer."""
    message = str(error)
    op_type = _missing_gradient_op(error)
    found = _match_layer(model, message)
    if found is None and op_type is not None:
        found = _locate_op(model, op_type, probes)
    op_txt = f" (no gradient registered for TensorFlow op {op_type})" if op_type else ""
    first = next((line.strip() for line in message.splitlines() if "gradient" in line.lower()), message.strip().splitlines()[0] if message.strip() else "")
    if found is not None:
        name, cls = found
        text = (
            "Invalid value for argument `model`: expected a model whose layers "
            f"are twice differentiable. Layer '{name}' ({cls}) cannot be "
            f"differentiated twice{op_txt}; Hessian and NTK products cannot "
            "pass through it. Replace it (e.g. another interpolation) or "
            f"remove it. TensorFlow said: {first}"
        )
    else:
        text = (
            "Invalid value for argument `model`: expected a model whose layers "
            "are twice differentiable, but TensorFlow could not differentiate "
            f"it twice{op_txt}. TensorFlow said: {first}"
        )
    return NotTwiceDifferentiableError(text, None if found is None else found[0])


def output_probes(flat, x):
    """Graphs searched for a missing-gradient op: output gradient, forward."""

    def grad_of_outputs(x):
        theta = flat.read()
        with tf.GradientTape() as tape:
            tape.watch(theta)
            out = tf.reduce_sum(_flat_outputs(model_outputs(flat, theta, x)))
        return tape.gradient(out, theta)

    return [
        (grad_of_outputs, (x,)),
        (lambda x: model_outputs(flat, flat.read(), x), (x,)),
    ]


def run_guarded(model, fn, *args, probes=()):
    """Calls `fn(*args)`, mapping missing-gradient errors to a clear error."""
    try:
        return fn(*args)
    except NotTwiceDifferentiableError:
        raise
    except Exception as error:  # StagingError, LookupError, ...
        if _missing_gradient_op(error) is None:
            raise
        raise explain_failure(model, error, probes) from error


def _convert_in(v, size, dtype, name="v"):
    is_tensor = tf.is_tensor(v)
    if is_tensor:
        in_dtype = v.dtype
    else:
        v = np.asarray(v)
        in_dtype = v.dtype if v.dtype in (np.float32, np.float64) else np.float64
    if tuple(v.shape) != (size,):
        raise val.invalid(name, f"a vector of shape ({size},)", f"<shape {tuple(v.shape)}>")
    return tf.cast(tf.convert_to_tensor(v), dtype), is_tensor, in_dtype


def _convert_out(t, is_tensor, in_dtype):
    if is_tensor:
        return tf.cast(t, in_dtype)
    return t.numpy().astype(in_dtype, copy=False)


# --------------------------------------------------------------------------- #
# Hessian operator
# --------------------------------------------------------------------------- #
class HessianOperator:
    """Hessian-vector product `v -> H v` of a model's loss on a batch or dataset.

    `H = d^2 L / d theta^2` with `theta` the flat vector of all trainable
    parameters (shape `(n,)`) and `L` the loss on `data` (plus the model's added
    losses such as weight regularisation). For a `tf.data.Dataset`,
    `L = sum_b N_b L_b / sum_b N_b` (batch losses weighted by batch size), so
    `H v` is the batch-size-weighted average of the per-batch products.

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
        num_batches: use only the first `num_batches` batches of a dataset.
        mode: `"reverse_over_reverse"` (default; two nested tapes,
            `H v = grad <grad L, v>`) or `"forward_over_reverse"`
            (`ForwardAccumulator` around `GradientTape`). Both give the same
            product; in `bench/curvature_hvp.py` on CPU reverse-over-reverse
            was 7-13% faster on the spiral MLP and the digits CNN, and they
            tied on a deeper tanh/BatchNorm MLP.
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

    def __init__(
        self,
        model,
        loss,
        data,
        *,
        num_batches=None,
        mode="reverse_over_reverse",
        training=False,
        include_regularization=True,
    ):
        val.check_callable("loss", loss)
        mode = val.check_choice("mode", mode, HVP_MODES)
        if not isinstance(training, bool):
            raise val.invalid("training", "a bool", training)
        self.flat = FlatParameters(model)
        self.model = model
        self.loss = loss
        self._batches = data_lib.materialize(data, num_batches=num_batches)
        self.batches = [(x, y, sw) for x, y, sw, _ in self._batches]
        self.mode = mode
        self.size = self.flat.size
        self.dtype = self.flat.dtype
        self.num_matvecs = 0
        kwargs = dict(training=training, include_regularization=include_regularization)
        hvp = hvp_fn(self.flat, loss, mode=mode, **kwargs)
        grad = grad_fn(self.flat, loss, **kwargs)
        self._raw_grad = grad
        flat = self.flat

        def _hvp(v, x, y, sw):
            return hvp(flat.read(), v, x, y, sw)[0]

        def _grad(x, y, sw):
            return grad(flat.read(), x, y, sw)

        self._hvp = tf.function(_hvp, reduce_retracing=True)
        self._grad = tf.function(_grad, reduce_retracing=True)

    def _average(self, fn):
        total, count = None, 0
        for x, y, sw, nb in self._batches:
            out = run_guarded(
                self.model, fn, x, y, sw, probes=self._probes(x, y, sw)
            )
            out = tf.nest.map_structure(lambda t: t * tf.cast(nb, t.dtype), out)
            total = out if total is None else tf.nest.map_structure(tf.add, total, out)
            count += nb
        return tf.nest.map_structure(lambda t: t / tf.cast(count, t.dtype), total)

    def _probes(self, x, y, sw):
        flat = self.flat
        return [
            (lambda x, y, sw: self._raw_grad(flat.read(), x, y, sw), (x, y, sw)),
            (lambda x: model_outputs(flat, flat.read(), x), (x,)),
        ]

    def matvec_tensor(self, v):
        """`H v` for a tensor `v` of shape `(n,)` in the parameter dtype."""
        self.num_matvecs += 1
        return self._average(lambda x, y, sw: self._hvp(v, x, y, sw))

    def __call__(self, v):
        """Returns `H v`, same kind (NumPy/tensor) and dtype as `v`, shape `(n,)`."""
        t, is_tensor, in_dtype = _convert_in(v, self.size, self.dtype)
        return _convert_out(self.matvec_tensor(t), is_tensor, in_dtype)

    def gradient(self):
        """Returns `(grad L, L)` as NumPy arrays of shapes `(n,)` and `()`."""
        g, l = self._average(self._grad)
        return g.numpy(), l.numpy()

    def dense(self):
        """The full Hessian `(n, n)` in float64, built column by column (small n)."""
        eye = tf.eye(self.size, dtype=self.dtype)
        cols = [self.matvec_tensor(eye[i]).numpy() for i in range(self.size)]
        return np.stack(cols, axis=1).astype(np.float64)


# --------------------------------------------------------------------------- #
# Empirical NTK
# --------------------------------------------------------------------------- #
def _flat_outputs(out):
    """Model outputs reshaped to `(batch, K)` (multiple outputs concatenated)."""
    parts = [tf.reshape(o, [tf.shape(o)[0], -1]) for o in tf.nest.flatten(out)]
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)


def ntk_matvec_fn(flat, *, trace_outputs=True, training=False, num_outputs):
    """Builds `(theta, u, x) -> Theta u` without forming the Jacobian.

    With `J_c` the `(N, n)` Jacobian of output channel `c` on the `N` samples:

    * traced (`trace_outputs=True`): `u` has shape `(N,)` and
      `Theta u = sum_c J_c J_c^T u`, one VJP and one JVP per channel;
    * full: `u` has shape `(N*K,)` (index `i*K + c`) and
      `Theta u = J J^T u`, one VJP and one JVP.
    """
    zero = tf.UnconnectedGradients.ZERO

    def f(theta, x):
        return _flat_outputs(model_outputs(flat, theta, x, training=training))

    def vjp(theta, x, cot):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            out = f(theta, x)
        return tape.gradient(out, theta, output_gradients=tf.cast(cot, out.dtype), unconnected_gradients=zero)

    def jvp(theta, x, w):
        with tf.autodiff.ForwardAccumulator(theta, w) as acc:
            out = f(theta, x)
        return acc.jvp(out, unconnected_gradients=zero)

    if trace_outputs:

        def fn(theta, u, x):
            total = None
            for c in range(num_outputs):
                cot = u[:, None] * tf.one_hot(c, num_outputs, dtype=u.dtype)[None, :]
                w = vjp(theta, x, cot)
                col = tf.cast(jvp(theta, x, w)[:, c], u.dtype)
                total = col if total is None else total + col
            return total

    else:

        def fn(theta, u, x):
            cot = tf.reshape(u, [-1, num_outputs])
            w = vjp(theta, x, cot)
            return tf.cast(tf.reshape(jvp(theta, x, w), [-1]), u.dtype)

    return fn


def _num_samples_and_outputs(flat, x, training):
    out = _flat_outputs(model_outputs(flat, flat.read(), x, training=training))
    return int(out.shape[0]), int(out.shape[1])


class NTKOperator:
    """Empirical NTK product `u -> Theta u` on a fixed input batch (matrix free).

    `Theta = sum_c J_c J_c^T` (shape `(N, N)`, traced over the K outputs) or
    `Theta = J J^T` (shape `(N*K, N*K)`, rows ordered sample-major, index
    `i*K + c`), with `J_c[i] = d f_c(x_i) / d theta` of the model outputs
    (logits) w.r.t. all trainable parameters. Computed with VJPs/JVPs, never
    forming `J`.

    Args:
        model: a built `keras.Model`.
        x: input batch (N samples).
        trace_outputs: trace over outputs (default) or keep the full matrix.
        training: run the model in training mode (default `False`).

    Attributes:
        size: `N` (traced) or `N*K` (full).
        num_outputs: `K`.
    """

    def __init__(self, model, x, *, trace_outputs=True, training=False):
        if not isinstance(trace_outputs, bool):
            raise val.invalid("trace_outputs", "a bool", trace_outputs)
        self.flat = FlatParameters(model)
        self.model = model
        self.x = _to_tensor(x)
        n_samples, k = _num_samples_and_outputs(self.flat, self.x, training)
        self.num_samples, self.num_outputs = n_samples, k
        self.size = n_samples if trace_outputs else n_samples * k
        self.dtype = self.flat.dtype
        self.num_matvecs = 0
        fn = ntk_matvec_fn(
            self.flat, trace_outputs=trace_outputs, training=training, num_outputs=k
        )
        flat = self.flat
        self._fn = tf.function(lambda u, x: fn(flat.read(), u, x))

    def __call__(self, u):
        """Returns `Theta u`, same kind and dtype as `u`."""
        t, is_tensor, in_dtype = _convert_in(u, self.size, self.dtype, name="u")
        self.num_matvecs += 1
        out = run_guarded(
            self.model, self._fn, t, self.x, probes=output_probes(self.flat, self.x)
        )
        return _convert_out(out, is_tensor, in_dtype)


def ntk_jacobian(model, x, *, training=False, batch_size=None):
    """Jacobian of the model outputs w.r.t. all trainable parameters.

    Args:
        model: a built `keras.Model`.
        x: inputs, N samples.
        training: run the model in training mode (default `False`).
        batch_size: samples per `tape.jacobian` call (default: all at once).

    Returns:
        float64 NumPy array of shape `(N, K, n)`.
    """
    flat = FlatParameters(model)
    x = _to_tensor(x)
    n_samples = _batch_size(x)
    batch_size = val.check_int("batch_size", batch_size, minimum=1, allow_none=True) or n_samples

    @tf.function(reduce_retracing=True)
    def jac(xb):
        theta = flat.read()
        with tf.GradientTape() as tape:
            tape.watch(theta)
            out = _flat_outputs(model_outputs(flat, theta, xb, training=training))
        return tape.jacobian(out, theta, experimental_use_pfor=True)

    blocks = []
    for start in range(0, n_samples, batch_size):
        xb = tf.nest.map_structure(lambda a: a[start : start + batch_size], x)
        out = run_guarded(model, jac, xb, probes=output_probes(flat, xb))
        blocks.append(out.numpy().astype(np.float64))
    return np.concatenate(blocks, axis=0)
