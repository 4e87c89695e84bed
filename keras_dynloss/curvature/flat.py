"""Flat parameter vectors: a model's trainable variables (or a subset) as `(n,)`.

Every curvature operator acts on one flat vector `theta` of shape `(n,)`: the
chosen trainable variables in the order of `model.trainable_variables`, each
flattened row-major. By default all trainable variables are chosen; with
`variables=` (variables or layers) only those, the others held at their current
values, so the operator is the corresponding diagonal block of the full one
(e.g. a layer's sub-Hessian).

The forward pass is `model.stateless_call` on the current parameter values
(inference mode by default): the model's variables are never written and any
updated state that `stateless_call` returns is discarded.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss import _compat


def _chosen_variables(model, variables):
    """The trainable variables named by `variables` (variables or layers)."""
    all_vars = list(model.trainable_variables)
    if variables is None:
        return all_vars
    if isinstance(variables, (keras.layers.Layer, keras.Variable, tf.Variable)):
        variables = [variables]
    if not isinstance(variables, (list, tuple)) or not variables:
        raise val.invalid(
            "variables", "a non-empty list of trainable variables or layers of the model", variables
        )
    wanted = set()
    for item in variables:
        if isinstance(item, keras.layers.Layer):
            found = item.trainable_variables
        elif isinstance(item, (keras.Variable, tf.Variable)):
            found = [item]
        else:
            found = None
        ids = {id(v) for v in all_vars}
        if not found or any(id(v) not in ids for v in found):
            raise val.invalid(
                "variables",
                "trainable variables (or layers with trainable variables) of this model",
                getattr(item, "name", item),
            )
        wanted.update(id(v) for v in found)
    return [v for v in all_vars if id(v) in wanted]


class FlatParameters:
    """Maps chosen trainable variables of a model to one flat vector and back.

    Args:
        model: a built `keras.Model` (or layer) with trainable variables.
        variables: `None` (all trainable variables) or a list of trainable
            variables and/or layers of `model` (a layer stands for its
            trainable variables).

    Attributes:
        size: `n`, number of chosen scalars.
        dtype: the common (widest) dtype of the chosen variables.
        variables: the chosen variables, in `model.trainable_variables` order.
        shapes: their shapes.
    """

    def __init__(self, model, variables=None):
        if not isinstance(model, keras.layers.Layer):
            raise val.invalid("model", "a built `keras.Model`", model)
        if not model.built:
            raise val.invalid(
                "model", "a built model (call it on data or use `model.build()` first)", model
            )
        self.model = model
        self.all_variables = list(model.trainable_variables)
        if not self.all_variables:
            raise val.invalid("model", "a model with at least one trainable variable", model)
        self.variables = _chosen_variables(model, variables)
        chosen = {id(v): i for i, v in enumerate(self.variables)}
        self._slot = [chosen.get(id(v)) for v in self.all_variables]
        self.shapes = [tuple(int(d) for d in v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.var_dtypes = [tf.as_dtype(v.dtype) for v in self.variables]
        if not all(d.is_floating for d in self.var_dtypes):
            raise val.invalid("model", "floating-point trainable variables", model)
        self.dtype = max(self.var_dtypes, key=lambda d: d.size)
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
        """Current values of the chosen variables as one tensor `(n,)`."""
        return tf.concat(
            [tf.reshape(tf.cast(tf.convert_to_tensor(v.value), self.dtype), [-1]) for v in self.variables],
            axis=0,
        )

    def unflatten(self, theta):
        """`(n,)` -> list of tensors with the chosen variables' shapes/dtypes."""
        parts = tf.split(theta, self.sizes, axis=0)
        return [tf.cast(tf.reshape(p, s), d) for p, s, d in zip(parts, self.shapes, self.var_dtypes)]

    def split(self, theta):
        """Values of *all* trainable variables, the chosen ones taken from `theta`."""
        chosen = self.unflatten(theta)
        return [
            tf.convert_to_tensor(v.value) if i is None else chosen[i]
            for v, i in zip(self.all_variables, self._slot)
        ]

    def non_trainable_values(self):
        return [tf.convert_to_tensor(v.value) for v in self.model.non_trainable_variables]


def flat_outputs(out):
    """Model outputs reshaped to `(batch, K)` (multiple outputs concatenated)."""
    parts = [tf.reshape(o, [tf.shape(o)[0], -1]) for o in tf.nest.flatten(out)]
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)


def model_outputs(flat, theta, x, *, training=False, return_losses=False):
    """Runs `model.stateless_call` with the chosen parameters set to `theta`.

    Returns the outputs, and if `return_losses` also the list of the model's
    added losses (e.g. weight regularisation), cast to `flat.dtype`.
    """
    model = flat.model
    kwargs = {}
    if "training" in getattr(model, "call_signature_parameters", ("training",)):
        kwargs["training"] = training
    with flat.full_precision():
        result = model.stateless_call(
            flat.split(theta), flat.non_trainable_values(), x, return_losses=return_losses, **kwargs
        )
    if not return_losses:
        return result[0]
    outputs, _, losses = result
    return outputs, [tf.cast(item, flat.dtype) for item in (losses or [])]


def traced_outputs(flat, x, *, training=False):
    """The concrete function `x -> flat_outputs(model(x))` at the current
    parameters, traced for inputs shaped like `x` and not run (its graph and
    output shapes describe the forward pass without allocating it)."""
    spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), x)
    fn = tf.function(lambda x: flat_outputs(model_outputs(flat, flat.read(), x, training=training)),
                     autograph=False)
    return fn.get_concrete_function(spec)


def loss_term(flat, loss, outputs, y, sample_weight):
    """Scalar `loss(y, outputs[, sample_weight])` (averaged if not scalar)."""
    if sample_weight is None:
        value = loss(y, outputs)
    else:
        value = loss(y, outputs, sample_weight=sample_weight)
    value = tf.convert_to_tensor(value)
    if value.shape.rank:
        value = tf.reduce_mean(value)
    return tf.cast(value, flat.dtype)


def loss_value(flat, loss, theta, x, y, sample_weight, *, training, include_regularization):
    """Scalar training objective `loss(y, model(x; theta)) [+ added losses]`."""
    outputs, extra = model_outputs(flat, theta, x, training=training, return_losses=True)
    value = loss_term(flat, loss, outputs, y, sample_weight)
    if include_regularization:
        for item in extra:
            value = value + item
    return value


def convert_in(v, size, dtype, name="v"):
    """Checks a vector `(size,)`; returns `(tensor in dtype, is_tensor, in_dtype)`."""
    is_tensor = tf.is_tensor(v)
    if is_tensor:
        in_dtype = v.dtype
    else:
        v = np.asarray(v)
        in_dtype = v.dtype if v.dtype in (np.float32, np.float64) else np.float64
    if tuple(v.shape) != (size,):
        raise val.invalid(name, f"a vector of shape ({size},)", f"<shape {tuple(v.shape)}>")
    return tf.cast(tf.convert_to_tensor(v), dtype), is_tensor, in_dtype


def convert_out(t, is_tensor, in_dtype):
    """Returns `t` as the caller gave its input: a tensor or a NumPy array."""
    if is_tensor:
        return tf.cast(t, in_dtype)
    return t.numpy().astype(in_dtype, copy=False)
