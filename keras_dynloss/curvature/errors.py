"""Errors of curvature operators: layers TensorFlow cannot differentiate twice.

Some TensorFlow ops have a gradient whose own gradient is not registered
(e.g. bicubic resizing: `ResizeBicubicGrad`). A Hessian or NTK product through
such a layer fails deep inside TensorFlow; `run_guarded` turns that failure into
a `NotTwiceDifferentiableError` that names the layer.
"""

import re

import tensorflow as tf

from keras_dynloss import _compat
from keras_dynloss.curvature import flat as flat_lib


class NotTwiceDifferentiableError(ValueError):
    """Raised when a layer of the model has no second derivative in TensorFlow.

    Attributes:
        layer_name: name of the offending layer, or `None` when it could not be
            identified from the TensorFlow error.
    """

    def __init__(self, message, layer_name=None):
        super().__init__(message)
        self.layer_name = layer_name


def _layer_names(model):
    return [(layer.name, type(layer).__name__) for layer in _compat.iter_layers(model)[1:]]


def _match_layer(model, text):
    """The layer whose name scope (`name/` or `name_3/`) appears in `text`."""
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
            graph = tf.function(fn, autograph=False).get_concrete_function(*args).graph
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
    op_type = _compat.missing_gradient_op(error)
    found = _match_layer(model, message)
    if found is None and op_type is not None:
        found = _locate_op(model, op_type, probes)
    op_txt = f" (no gradient registered for TensorFlow op {op_type})" if op_type else ""
    lines = message.strip().splitlines()
    first = next((line.strip() for line in lines if "gradient" in line.lower()), lines[0] if lines else "")
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
            out = tf.reduce_sum(flat_lib.flat_outputs(flat_lib.model_outputs(flat, theta, x)))
        return tape.gradient(out, theta)

    return [
        (grad_of_outputs, (x,)),
        (lambda x: flat_lib.model_outputs(flat, flat.read(), x), (x,)),
    ]


def run_guarded(model, fn, *args, probes=(), **kwargs):
    """Calls `fn(*args, **kwargs)`, mapping missing-gradient errors to a clear error."""
    try:
        return fn(*args, **kwargs)
    except NotTwiceDifferentiableError:
        raise
    except Exception as error:  # StagingError, LookupError, ...
        if _compat.missing_gradient_op(error) is None:
            raise
        raise explain_failure(model, error, probes) from error
