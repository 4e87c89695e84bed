"""Dynamical losses as pure per-sample functions of `(y_true, y_pred, Γ)`, and label checks.
Values are float32 for half-precision `y_pred`; invalid labels are never clamped (guide: "Labels").
"""

import keras
from keras import ops

from keras_dynloss import _compat
from keras_dynloss._checks import invalid

__all__ = ["dynamical_crossentropy", "dynamical_mean_squared_error",
           "dynamical_componentwise_mean_squared_error"]


def prediction(y_pred):
    """`y_pred` as a tensor, half precision cast to float32 (Γ-weighted values overflow it)."""
    y_pred = ops.convert_to_tensor(y_pred)
    return ops.cast(y_pred, "float32") if y_pred.dtype in ("float16", "bfloat16") else y_pred


def split_labels(y_true, y_pred, num_classes):
    """`(sparse, y, valid)`: int32 labels (sparse) or probabilities, invalid samples replaced by
    class 0; `valid` the mask for `guard`, None where an assertion guards y (TF outside XLA)."""
    y_true = ops.convert_to_tensor(y_true)
    pred, true = tuple(y_pred.shape), tuple(y_true.shape)
    if not pred or pred[-1] not in (None, num_classes):
        raise invalid("y_pred", f"a tensor of shape (..., {num_classes}) (one output per class)",
                      f"<tensor of shape {pred}>")
    sparse = len(true) == len(pred) - 1 or (len(true) == len(pred) and true[-1] == 1)
    dense = len(true) == len(pred) and true[-1] in (num_classes, None)
    if not (sparse or dense) or any(a != b for a, b in zip(true, pred[:-1])
                                    if a is not None and b is not None):
        raise invalid("y_true", f"integer labels of shape {pred[:-1]} or probabilities of shape "
                      f"{pred}", f"<tensor of shape {true}>")
    asserts = keras.backend.backend() == "tensorflow" and not _compat.in_xla_context()
    if sparse:
        if len(true) == len(pred):
            y_true = ops.squeeze(y_true, -1)
        valid = (y_true >= 0) & (y_true < num_classes)
        if "float" in str(y_true.dtype):  # NaN fails every comparison
            valid = valid & (ops.floor(y_true) == y_true)
        if asserts:  # the assertion runs before any kernel reads the labels
            return sparse, _asserted(ops.cast(y_true, "int32"), valid), None
        return sparse, ops.cast(ops.where(valid, y_true, ops.zeros_like(y_true)), "int32"), valid
    targets = ops.cast(y_true, y_pred.dtype)
    tol = 1e-2 if y_true.dtype in ("float16", "bfloat16") else 1e-3
    valid = ops.all(targets >= 0, axis=-1) & (ops.abs(ops.sum(targets, -1) - 1.0) <= tol)
    if asserts:
        return sparse, _asserted(targets, valid), None
    fallback = ops.one_hot(ops.zeros_like(valid, "int32"), num_classes, dtype=targets.dtype)
    return sparse, ops.where(valid[..., None], targets, fallback), valid


def _asserted(y, valid):
    """`y` after an assertion that all are valid (constant data: nothing read unless it fails)."""
    import tensorflow as tf

    check = tf.raw_ops.Assert(condition=tf.reduce_all(valid), data=[tf.constant(_MESSAGE)])
    with tf.control_dependencies([check]):
        return tf.identity(y)


_MESSAGE = ("Invalid value for argument `y_true`: expected integer class labels in [0, C) or "
            "probabilities (entries >= 0, rows summing to 1). Received a batch with at least "
            "one invalid label.")


def class_weight_of(sparse, y, class_weights):
    """Per-sample weight: `Γ_{y}` for labels, `Σ_i y_i Γ_i` for probabilities."""
    if sparse:
        return ops.take(class_weights, y, axis=0)
    return ops.sum(y * class_weights, axis=-1)


def guard(values, valid, counter):
    """`values` with invalid samples set to 0 and counted in `counter` (NaN without one)."""
    if valid is None:
        return values
    if counter is not None:
        counter.assign_add(ops.cast(ops.sum(ops.cast(~valid, "int32")), counter.dtype))
    fill = ops.zeros_like(values) if counter is not None else ops.full_like(values, float("nan"))
    return ops.where(valid, values, fill)


def _inputs(y_true, y_pred, class_weights):
    """`(y_pred, Γ, sparse, y, valid)`: the prediction, Γ of its dtype, and `split_labels`."""
    y_pred = prediction(y_pred)
    class_weights = ops.cast(class_weights, y_pred.dtype)
    if len(class_weights.shape) != 1 or class_weights.shape[0] is None:
        raise invalid("class_weights", "a vector of shape (C,) with C known",
                      f"<tensor of shape {tuple(class_weights.shape)}>")
    return (y_pred, class_weights) + split_labels(y_true, y_pred, int(class_weights.shape[0]))


def dynamical_crossentropy(y_true, y_pred, class_weights, *, from_logits=False,
                           invalid_label_counter=None):
    """Per-sample class-weighted cross-entropy `Γ_{y_μ} · (-log softmax(f(x_μ))_{y_μ})`, or
    `Σ_i y_μi Γ_i · CE(y_μ, f(x_μ))` for probabilities `y_μ`.

    Args:
        y_true: integer labels (B,) or (B, 1), or probabilities (B, C).
        y_pred: logits or probabilities, shape (B, C).
        class_weights: Γ, shape (C,).
        from_logits: whether `y_pred` holds logits.
        invalid_label_counter: an integer variable counting invalid labels where no
            assertion can run, or None (their values are then NaN).

    Returns:
        Per-sample losses, shape (B,).

    Example:
        >>> dynamical_crossentropy([0, 2], [[2., 0., 0.], [0., 0., 2.]],
        ...                        [2.917, 0.042, 0.042], from_logits=True)
    """
    y_pred, class_weights, sparse, y, valid = _inputs(y_true, y_pred, class_weights)
    crossentropy = (keras.losses.sparse_categorical_crossentropy if sparse
                    else keras.losses.categorical_crossentropy)
    ce = crossentropy(y, y_pred, from_logits=from_logits)
    return guard(class_weight_of(sparse, y, class_weights) * ce, valid, invalid_label_counter)


def _squared_errors(y_true, y_pred, class_weights):
    """`(targets, valid, Γ, (y - f)²)`, with one-hot targets for integer labels."""
    y_pred, class_weights, sparse, y, valid = _inputs(y_true, y_pred, class_weights)
    if sparse:
        y = ops.one_hot(y, class_weights.shape[0], dtype=y_pred.dtype)
    return y, valid, class_weights, ops.square(y - y_pred)


def dynamical_mean_squared_error(y_true, y_pred, class_weights, *, invalid_label_counter=None):
    """Per-sample weighted MSE `Γ_{y_μ} · (1/C) Σ_i (y_μi - f_μi)²` (arXiv 2410.10690).

    Integer labels give one-hot targets; probabilities `y_μ` weigh `Σ_i y_μi Γ_i`. Arguments
    and result as for `dynamical_crossentropy` (`y_pred`: outputs).

    Example:
        >>> dynamical_mean_squared_error([1], [[0.1, 0.8, 0.1]], [0.5, 2.0, 0.5])
    """
    targets, valid, class_weights, errors = _squared_errors(y_true, y_pred, class_weights)
    values = class_weight_of(False, targets, class_weights) * ops.mean(errors, axis=-1)
    return guard(values, valid, invalid_label_counter)


def dynamical_componentwise_mean_squared_error(y_true, y_pred, class_weights, *,
                                               invalid_label_counter=None):
    """Component-weighted MSE `(1/C) Σ_i Γ_i (y_μi - f_μi)²` (arXiv 2410.10690).

    Arguments and result as for `dynamical_crossentropy` (`y_pred`: outputs).

    Example:
        >>> dynamical_componentwise_mean_squared_error([1], [[0.1, 0.8, 0.1]], [0.5, 2.0, 0.5])
    """
    _, valid, class_weights, errors = _squared_errors(y_true, y_pred, class_weights)
    return guard(ops.mean(class_weights * errors, axis=-1), valid, invalid_label_counter)
