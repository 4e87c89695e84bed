"""Layers that TensorFlow cannot differentiate twice, named.

Some TensorFlow ops have a gradient whose own gradient is not registered (bicubic
`Resizing`: `ResizeBicubicGrad`). A Hessian or NTK product through such a layer fails
deep inside TensorFlow with a bare `LookupError`; `guard` turns it into a
`NotTwiceDifferentiableError` that names the layer and the op. The layer is found by
tracing (not running) the first derivative of the outputs and reading the name scope of
the op that lacks a gradient.

Example:
    >>> product = guard(flat, compiled_product, x)
    >>> product(theta, state, v, x, y, None)   # raises NotTwiceDifferentiableError
"""

import re

from keras import ops

from keras_dynloss import _checks


class NotTwiceDifferentiableError(ValueError):
    """A layer of the model has no second derivative in TensorFlow.

    Attributes:
        layer_name: the offending layer's name, or None when it could not be found.
        op_type: the TensorFlow op without a registered gradient, e.g. "ResizeBicubicGrad".
    """

    def __init__(self, message, layer_name=None, op_type=None):
        super().__init__(message)
        self.layer_name = layer_name
        self.op_type = op_type


def _first_derivative_ops(flat, x, training):
    """Names of the ops of `d sum(outputs) / d theta`, traced (not run) by TensorFlow."""
    import tensorflow as tf

    from keras_dynloss import backend

    def first(theta, non_trainable, x):
        def total(block):
            return ops.sum(flat.forward(theta, non_trainable, x, block=block, training=training))
        return backend.get().value_and_grad(total, flat.select(theta))[1]

    graph = tf.function(first, autograph=False).get_concrete_function(
        flat.read(), flat.non_trainable(), x).graph
    return [(op.type, op.name) for op in graph.get_operations()]


def _owner(flat, op_type, x, training):
    """`(name, class name)` of the layer whose name scope holds an op of `op_type`."""
    from keras_dynloss import _compat

    layers = _compat.iter_layers(flat.model)[1:]
    best = None
    for kind, op_name in _first_derivative_ops(flat, x, training):
        if kind != op_type:
            continue
        for layer in layers:  # the innermost (longest) matching scope wins
            if re.search(r"(^|/)" + re.escape(layer.name) + r"(_\d+)?/", op_name):
                if best is None or len(layer.name) > len(best[0]):
                    best = (layer.name, type(layer).__name__)
    return best


def explain(flat, op_type, x, *, training=False):
    """The `NotTwiceDifferentiableError` for a missing gradient of `op_type`."""
    try:
        found = _owner(flat, op_type, x, training)
    except Exception:  # the trace itself failed: report the op alone
        found = None
    where = f"layer '{found[0]}' ({found[1]})" if found else "a layer"
    error = _checks.invalid(
        "model", "a model whose layers TensorFlow can differentiate twice (Hessian and NTK "
        "products need second derivatives)",
        f"<{where}: no gradient registered for TensorFlow op {op_type}>")
    return NotTwiceDifferentiableError(str(error), found[0] if found else None, op_type)


def guard(flat, fn, x, *, training=False):
    """`fn` that raises `NotTwiceDifferentiableError` where TensorFlow lacks a gradient.

    Args:
        flat: the `FlatParameters` of the products `fn` computes.
        fn: a callable (e.g. a compiled product).
        x: an input batch, to trace the first derivative on when `fn` fails.
        training: the mode of the products.
    """
    from keras_dynloss import _compat

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotTwiceDifferentiableError:
            raise
        except Exception as error:  # LookupError, StagingError, ...
            op_type = _compat.missing_gradient_op(error)
            if op_type is None:
                raise
            raise explain(flat, op_type, x, training=training) from error

    return call
