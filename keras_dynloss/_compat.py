"""The package's only reaches into private Keras / TensorFlow internals: each function wraps
one, says why, and is pinned by `tests/test_compat.py` (an upgrade that breaks it fails there)."""

import re
import sys

import keras


def in_xla_context():
    """True while TensorFlow traces inside `tf.function(jit_compile=True)`, where XLA drops
    `Assert` ops. Why private: TensorFlow has no public predicate for it."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def in_symbolic_scope():
    """True while Keras traces on placeholders (`keras.SymbolicScope`, e.g. when `compile`
    builds the compiled loss). Why private: Keras exports the scope but not the predicate."""
    from keras.src.backend.common import symbolic_scope

    return bool(symbolic_scope.in_symbolic_scope())


def iter_layers(model):
    """Every layer inside `model` (itself first), nested ones included, for the curvature
    products. Why private: Keras has no public recursive walk (`Model.layers` is shallow)."""
    return list(model._flatten_layers(include_self=True, recursive=True))


_NO_GRADIENT = (re.compile(r"gradient registry has no entry for: ?'?([A-Za-z0-9_]+)"),
                re.compile(r"No gradient defined for operation.*?op type: ?'?([A-Za-z0-9_]+)"))


def missing_gradient_op(error):
    """The op type named by a TensorFlow "no gradient registered" error, or None. Why
    private: the op type is in the error's text only."""
    found = [m for m in (p.search(str(error)) for p in _NO_GRADIENT) if m]
    return found[0].group(1) if found else None


def adam_second_moments(optimizer, variables):
    """Adam/AdamW second-moment slots `v` (`v_hat` with amsgrad), one per variable. Why
    private: Keras keeps them in `_velocities` / `_velocity_hats` (`_get_variable_index`)."""
    slots = optimizer._velocity_hats if optimizer.amsgrad else optimizer._velocities
    return [slots[optimizer._get_variable_index(v)] for v in variables]


def sibling_callbacks(callback):
    """The callbacks (in order, `callback` included) of the call that runs `callback`, or [].
    Why private: callbacks cannot see each other; this walks `sys._getframe` up."""
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.callbacks.CallbackList) and any(
                c is callback for c in owner.callbacks):
            return list(owner.callbacks)
        frame = frame.f_back
    return []


def track(model, name, value):
    """Sets `model.<name> = value` (metrics) so that Keras tracks it, also on a built model.
    Why private: a built layer locks its `_tracker`; Keras unlocks it too (`Layer.quantize`)."""
    tracker, locked = model._tracker, model._tracker.locked
    tracker.unlock()
    try:
        setattr(model, name, value)
    finally:
        if locked:
            tracker.lock()
