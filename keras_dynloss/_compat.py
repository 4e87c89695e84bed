"""The package's only reaches into private Keras / TensorFlow internals.

Each function wraps one private API for which no public one exists (checked on
TF 2.21 / Keras 3.15), says why, and is pinned by ``tests/test_compat.py`` so an
upgrade that breaks it fails loudly there, not as a wrong result elsewhere.
Append new functions at the end, each with its reason and its test.
"""

import re

import tensorflow as tf

# Private imports, each explained in the function that uses it.
from keras.src.backend.common import symbolic_scope as _keras_symbolic_scope
from tensorflow.python.ops import control_flow_util as _tf_control_flow_util

__all__ = []


def in_xla_context():
    """True while tracing inside ``tf.function(jit_compile=True)`` (or a function
    it calls), False in eager mode and in a plain ``tf.function``.

    Why private: TensorFlow has no public predicate for "this graph will be
    compiled by XLA". The losses need it because XLA drops ``Assert`` ops and
    clamps out-of-range gather indices, so label validation must take another
    form there (mask + counter instead of an assertion). The only other route,
    ``tf.__internal__.get_enclosing_xla_context``, is as private as this one.
    """
    graph = tf.compat.v1.get_default_graph()
    return bool(_tf_control_flow_util.GraphOrParentsInXlaContext(graph))


def in_symbolic_scope():
    """True while Keras traces a function on placeholders for shape inference
    (``keras.SymbolicScope``, e.g. when ``compile`` builds the compiled loss
    before any callback has run), False otherwise.

    Why private: Keras exports the scope class (``keras.SymbolicScope``) but not
    the predicate; ``keras.src.backend.common.symbolic_scope.in_symbolic_scope``
    is the only way to ask. An unbound dynamical loss needs it to tell Keras's
    shape-inference pass (any step will do) from a real call (which must raise).
    """
    return bool(_keras_symbolic_scope.in_symbolic_scope())


def iter_layers(model):
    """Every layer inside ``model`` (itself first), nested ones included.

    Why private: Keras 3 has no public recursive walk over sublayers.
    ``Model.layers`` lists only the direct children of a Sequential/Functional
    model, and a custom ``Layer`` that owns sublayers exposes them nowhere
    publicly. ``Layer._flatten_layers(include_self=True, recursive=True)`` is the
    walk Keras itself uses (for weights and tracking). Curvature operators need
    every layer to run a mixed-precision model in float32 (each layer's
    ``dtype_policy``) and to name the layer that blocks a second derivative.
    """
    return list(model._flatten_layers(include_self=True, recursive=True))


_NO_GRADIENT_PATTERNS = (
    re.compile(r"gradient registry has no entry for: ?'?([A-Za-z0-9_]+)"),
    re.compile(r"No gradient defined for operation.*?op type: ?'?([A-Za-z0-9_]+)"),
)


def missing_gradient_op(error):
    """The TensorFlow op type named by a "no gradient registered" error, or None.

    Why private (parsing TF error text): TensorFlow raises a bare
    ``LookupError`` / ``StagingError`` when an op has no registered gradient
    (e.g. ``ResizeBicubicGrad``, needed for a second derivative of bicubic
    resizing) and exposes the op type nowhere but in the message. Curvature
    operators read it to name the layer that cannot be differentiated twice.
    """
    text = str(error)
    for pattern in _NO_GRADIENT_PATTERNS:
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None


def adam_second_moments(optimizer, variables):
    """Adam/AdamW second-moment slots ``v`` (``v_hat`` with amsgrad), one per
    variable of ``variables``, in that order.

    Why private: Keras 3 keeps an optimizer's per-variable slots in private
    lists (``Adam._velocities``, ``Adam._velocity_hats``) indexed by the private
    ``_get_variable_index``; ``optimizer.variables`` lists them without saying
    which model variable each belongs to. The curvature probe needs ``v`` to
    build Adam's preconditioner ``P = diag(sqrt(v_hat) + eps_hat)`` for the
    adaptive edge-of-stability ratio.
    """
    slots = optimizer._velocity_hats if optimizer.amsgrad else optimizer._velocities
    return [slots[optimizer._get_variable_index(v)] for v in variables]
