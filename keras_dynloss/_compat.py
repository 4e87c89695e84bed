"""The package's only reaches into private Keras / TensorFlow internals.

Each function wraps one private API for which no public one exists (checked on
TF 2.21 / Keras 3.15), says why, and is pinned by ``tests/test_compat.py`` so an
upgrade that breaks it fails loudly there, not as a wrong result elsewhere.
Append new functions at the end, each with its reason and its test.
"""

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
