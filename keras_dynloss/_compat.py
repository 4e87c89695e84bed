"""The package's only reaches into private Keras / TensorFlow internals.

Each function wraps one private API for which no public one exists, says why, and is pinned
by `tests/test_compat.py`, so that an upgrade that breaks it fails loudly there, not as a
wrong result elsewhere. TensorFlow is imported only by the functions that need it.
"""

import re
import sys

import keras

__all__ = []


def in_xla_context():
    """True while TensorFlow traces inside `tf.function(jit_compile=True)`.

    Why private: TensorFlow has no public predicate for "this graph will be compiled by
    XLA", and XLA drops `Assert` ops, so label validation must take another form there.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def in_symbolic_scope():
    """True while Keras traces on placeholders for shape inference (`keras.SymbolicScope`,
    e.g. when `compile` builds the compiled loss before any callback has run).

    Why private: Keras exports the scope class but not the predicate.
    """
    from keras.src.backend.common import symbolic_scope

    return bool(symbolic_scope.in_symbolic_scope())


def iter_layers(model):
    """Every layer inside `model` (itself first), nested ones included.

    Why private: Keras 3 has no public recursive walk over sublayers; `Model.layers` lists
    direct children only. Curvature products need every layer to run a mixed-precision
    model in float32 and to name a layer that blocks a second derivative.
    """
    return list(model._flatten_layers(include_self=True, recursive=True))


_NO_GRADIENT = (re.compile(r"gradient registry has no entry for: ?'?([A-Za-z0-9_]+)"),
                re.compile(r"No gradient defined for operation.*?op type: ?'?([A-Za-z0-9_]+)"))


def missing_gradient_op(error):
    """The TensorFlow op type named by a "no gradient registered" error, or None.

    Why private (TensorFlow's error text): the op type is in the message only.
    """
    for pattern in _NO_GRADIENT:
        found = pattern.search(str(error))
        if found:
            return found.group(1)
    return None


def adam_second_moments(optimizer, variables):
    """Adam/AdamW second-moment slots `v` (`v_hat` with amsgrad), one per variable.

    Why private: Keras keeps an optimizer's per-variable slots in private lists
    (`_velocities`, `_velocity_hats`) indexed by the private `_get_variable_index`.
    """
    slots = optimizer._velocity_hats if optimizer.amsgrad else optimizer._velocities
    return [slots[optimizer._get_variable_index(v)] for v in variables]


def sibling_callbacks(callback):
    """The callbacks of the `fit` / `evaluate` call that is running `callback`, in order
    (`callback` included), or [] when it is not called from a `CallbackList`.

    Why private: a Keras callback cannot see the others of its call. The scheduler and the
    probe need them to warn about callbacks that monitor the Γ-weighted `loss` and to write
    step-keyed scalars into the `TensorBoard` callbacks' log directories. This walks up the
    Python stack to the `CallbackList` that called the hook.
    """
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.callbacks.CallbackList):
            if any(c is callback for c in owner.callbacks):
                return list(owner.callbacks)
        frame = frame.f_back
    return []


def track(model, name, value):
    """Sets the attribute `name` of `model` to `value` (a metric, or a list of them), so that
    Keras tracks it (`model.metrics`, `model.metrics_variables`), also once `model` is built.

    Why private: a built Keras layer locks its state tracker (`Layer._lock_state`), and a
    subclassed model is built before the scheduler or a probe can attach its state; Keras
    itself unlocks `_tracker` around such changes (`Layer.quantize`).
    """
    tracker = model._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        setattr(model, name, value)
    finally:
        if locked:
            tracker.lock()
