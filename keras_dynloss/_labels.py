"""Label handling shared by the dynamical losses: sparse vs one-hot, and validation.

Out-of-range labels must never be clamped silently. Outside XLA an in-graph
assertion raises ``tf.errors.InvalidArgumentError`` at the offending step. XLA
drops assertions (and clamps gather indices), so under ``jit_compile=True`` the
losses instead (1) turn the batch's loss and gradients into NaN, so nothing is
learned from it, and (2) count the invalid labels in an optional counter
variable, which :class:`keras_dynloss.DynamicalLossScheduler` checks at the end
of each epoch and of ``evaluate`` to raise ``InvalidArgumentError``.
"""

import tensorflow as tf
from tensorflow.python.ops import control_flow_util

__all__ = []

SPARSE, ONE_HOT = "sparse", "one_hot"


def in_xla_context():
    """True while tracing inside a ``tf.function(jit_compile=True)``."""
    graph = tf.compat.v1.get_default_graph()
    return control_flow_util.GraphOrParentsInXlaContext(graph)


def label_kind(y_true, y_pred, num_classes):
    """Says whether ``y_true`` holds sparse labels or one-hot/soft targets.

    Sparse: ``y_true.shape == y_pred.shape[:-1]`` or ``y_pred.shape[:-1] + (1,)``.
    One-hot: ``y_true.shape == y_pred.shape``. Raises ValueError otherwise, and
    when ``y_pred``'s last dimension is not ``num_classes``.
    """
    pred_shape, true_shape = y_pred.shape, y_true.shape
    if pred_shape.rank is None or pred_shape.rank < 1:
        raise ValueError(
            "Invalid value for argument `y_pred`: expected a tensor of shape "
            f"(..., {num_classes}). Received: y_pred.shape={pred_shape}"
        )
    if pred_shape[-1] is not None and pred_shape[-1] != num_classes:
        raise ValueError(
            f"Invalid value for argument `y_pred`: expected {num_classes} outputs "
            f"(one per class, num_classes={num_classes}) in the last dimension. "
            f"Received: y_pred.shape={pred_shape}"
        )
    if true_shape.rank == pred_shape.rank - 1:
        kind = SPARSE
        compare = true_shape
    elif true_shape.rank == pred_shape.rank and true_shape[-1] == 1:
        kind = SPARSE
        compare = true_shape[:-1]
    elif true_shape.rank == pred_shape.rank and true_shape[-1] in (num_classes, None):
        kind = ONE_HOT
        compare = true_shape[:-1]
    else:
        compare = None
    if compare is None or not compare.is_compatible_with(pred_shape[:-1]):
        raise ValueError(
            "Invalid value for argument `y_true`: expected integer labels of shape "
            f"{pred_shape[:-1]} (or with a trailing 1) or one-hot targets of shape "
            f"{pred_shape}. Received: y_true.shape={true_shape}"
        )
    return kind


def checked_sparse_labels(y_true, y_pred, num_classes, invalid_label_counter=None):
    """Validated int64 labels of shape ``y_pred.shape[:-1]``, and a NaN-poison scale.

    A label is valid when it is an integer in ``[0, num_classes)``; the check is
    ``clip(int(y), 0, C - 1) == y`` (catches negatives, too-large and fractional
    labels in one comparison).

    Returns:
        labels: int64 tensor, shape ``y_pred.shape[:-1]``.
        scale: None outside XLA; under XLA a scalar that is 1 when every label
            is valid and NaN otherwise, to multiply into the per-sample losses.
    """
    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank == y_pred.shape.rank:
        y_true = tf.squeeze(y_true, -1)
    labels = tf.cast(y_true, tf.int64)
    clipped = tf.clip_by_value(labels, 0, num_classes - 1)
    if y_true.dtype.is_floating:
        valid = tf.equal(tf.cast(clipped, y_true.dtype), y_true)
    else:
        valid = tf.equal(clipped, labels)
    if not in_xla_context():
        # The raw op: tf.debugging.Assert wraps itself in a tf.cond (an If op that
        # costs a function call every step); the raw kernel only formats its data
        # when the condition fails.
        check = tf.raw_ops.Assert(
            condition=tf.reduce_all(valid),
            data=[
                tf.constant(
                    "Invalid value for argument `y_true`: expected integer class labels "
                    f"in [0, {num_classes}) (num_classes={num_classes}). Received labels:"
                ),
                y_true,
            ],
            summarize=16,
        )
        with tf.control_dependencies([check]):  # before the kernels see the labels
            return tf.identity(labels), None
    invalid = tf.reduce_sum(tf.cast(tf.logical_not(valid), tf.int64))
    if invalid_label_counter is not None:
        invalid_label_counter.assign_add(invalid)
    scale = tf.where(invalid > 0, float("nan"), 1.0)
    return labels, tf.cast(scale, y_pred.dtype)


def one_hot_targets(y_true, y_pred, num_classes, invalid_label_counter=None):
    """Float targets of ``y_pred``'s shape from sparse labels or one-hot targets.

    Returns ``(targets, labels_or_None, scale_or_None)``.
    """
    y_true = tf.convert_to_tensor(y_true)
    if label_kind(y_true, y_pred, num_classes) == SPARSE:
        labels, scale = checked_sparse_labels(
            y_true, y_pred, num_classes, invalid_label_counter
        )
        return tf.one_hot(labels, num_classes, dtype=y_pred.dtype), labels, scale
    return tf.cast(y_true, y_pred.dtype), None, None
