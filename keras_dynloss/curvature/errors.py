"""Layers that TensorFlow cannot differentiate twice (bicubic `Resizing`: `ResizeBicubicGrad`
has no gradient), named: `compile_guarded` turns the bare `LookupError` of a Hessian or NTK
product into a `NotTwiceDifferentiableError` naming the layer and the op."""

import re

from keras import ops

from keras_dynloss import _checks, _compat, backend


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


def _owner(flat, op_type, x, training):
    """`(name, class name)` of the innermost layer with an `op_type` op in `d sum(f) / d theta`."""
    import tensorflow as tf

    def first(theta, non_trainable, x):
        def total(block):
            return ops.sum(flat.forward(theta, non_trainable, x, block=block, training=training))
        return backend.get().value_and_grad(total, flat.select(theta))[1]

    graph = tf.function(first, autograph=False).get_concrete_function(
        flat.read(), flat.non_trainable(), x).graph
    layers, best = _compat.iter_layers(flat.model)[1:], None
    for op in graph.get_operations():
        for layer in layers if op.type == op_type else ():
            if re.search(r"(^|/)" + re.escape(layer.name) + r"(_\d+)?/", op.name):
                if best is None or len(layer.name) > len(best[0]):
                    best = (layer.name, type(layer).__name__)
    return best


def compile_guarded(flat, fn, x, *, training=False, jit_compile=False):
    """`fn` (products of `flat`) compiled; on TensorFlow a missing second derivative raises
    `NotTwiceDifferentiableError`, naming the layer (the first derivative traced on `x`)."""
    compiled = backend.get().compile_function(fn, jit_compile=jit_compile)
    if backend.name() != "tensorflow":
        return compiled

    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as error:  # LookupError, StagingError, ...
            op_type = _compat.missing_gradient_op(error)
            if op_type is None:
                raise
            try:
                found = _owner(flat, op_type, x, training)
            except Exception:  # the trace itself failed: report the op alone
                found = None
            where = f"layer '{found[0]}' ({found[1]})" if found else "a layer"
            message = str(_checks.invalid(
                "model", "a model whose layers TensorFlow can differentiate twice (Hessian and "
                "NTK products need second derivatives)",
                f"<{where}: no gradient registered for TensorFlow op {op_type}>"))
            raise NotTwiceDifferentiableError(message, found and found[0], op_type) from error

    return call
