"""Label handling shared by the dynamical losses: sparse vs one-hot, and validation.

Out-of-range labels are never clamped silently. A sparse label is valid when it
is an integer in ``[0, C)``.

* Outside XLA an in-graph assertion raises ``tf.errors.InvalidArgumentError``
  at the offending step, before any weight is updated. The assertion's only
  data is a constant string, so when the check passes nothing is copied from
  the device (``Assert``'s data inputs live in host memory: passing the labels
  would copy them to the host on every GPU step).
* Under XLA (``jit_compile=True``) assertions are dropped and gather indices
  are clamped, so the losses instead compute every sample with a safe (clipped)
  label and then give each *invalid sample* weight 0 with ``tf.where`` (its
  loss and its gradient are exactly 0; the batch's valid samples still train,
  and the batch mean still divides by the full batch size, as with
  ``sample_weight=0``). The invalid labels are counted in-graph in a counter
  variable, which :class:`keras_dynloss.DynamicalLossScheduler` checks at the
  end of each epoch and of ``evaluate`` to raise ``InvalidArgumentError``.
  Without a counter (a pure loss function called under XLA) an invalid
  sample's loss is NaN instead, so the reported loss shows it; its gradient is
  still 0, so the weights stay finite.
"""

import tensorflow as tf

from keras_dynloss._compat import in_xla_context

__all__ = []

SPARSE, ONE_HOT = "sparse", "one_hot"


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
    """Validated int64 labels of shape ``y_pred.shape[:-1]``, and a validity mask.

    The check is ``clip(int(y), 0, C - 1) == y`` (catches negatives, too-large,
    fractional and NaN labels in one comparison).

    Returns:
        labels: int64 tensor in ``[0, C)``, shape ``y_pred.shape[:-1]``.
        valid: None outside XLA (an assertion guards the labels); under XLA a
            bool tensor of ``labels``' shape, False for invalid samples, to pass
            to :func:`mask_invalid` (the invalid ones are counted in
            ``invalid_label_counter`` when given).
    """
    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank == y_pred.shape.rank:
        y_true = tf.squeeze(y_true, -1)
    labels = tf.clip_by_value(tf.cast(y_true, tf.int64), 0, num_classes - 1)
    if y_true.dtype.is_floating:
        valid = tf.equal(tf.cast(labels, y_true.dtype), y_true)
    else:
        valid = tf.equal(labels, tf.cast(y_true, tf.int64))
    if not in_xla_context():
        # The raw op (tf.debugging.Assert adds a tf.cond, a function call every
        # step) with constant data only: nothing is read from the device unless
        # the condition fails.
        check = tf.raw_ops.Assert(
            condition=tf.reduce_all(valid),
            data=[
                tf.constant(
                    "Invalid value for argument `y_true`: expected integer class labels "
                    f"in [0, {num_classes}) (num_classes={num_classes}). Received a "
                    "batch with at least one label outside that range."
                )
            ],
            summarize=1,
        )
        with tf.control_dependencies([check]):  # before the kernels see the labels
            return tf.identity(labels), None
    if invalid_label_counter is not None:
        invalid_label_counter.assign_add(
            tf.reduce_sum(tf.cast(tf.logical_not(valid), tf.int64))
        )
    return labels, valid


def mask_invalid(values, valid, invalid_label_counter=None):
    """Per-sample ``values`` with the invalid samples' entries replaced.

    Replaced by 0 when the invalid labels are counted (``invalid_label_counter``
    given), else by NaN, so an uncounted bad label still shows in the loss.
    ``tf.where`` (not a product: NaN * 0 is NaN) also gives those entries a
    zero gradient. ``valid=None`` returns ``values`` unchanged.
    """
    if valid is None:
        return values
    fill = 0.0 if invalid_label_counter is not None else float("nan")
    return tf.where(valid, values, tf.constant(fill, values.dtype))


def one_hot_targets(y_true, y_pred, num_classes, invalid_label_counter=None):
    """Float targets of ``y_pred``'s shape from sparse labels or one-hot targets.

    Returns ``(targets, labels_or_None, valid_or_None)`` (see
    :func:`checked_sparse_labels`).
    """
    y_true = tf.convert_to_tensor(y_true)
    if label_kind(y_true, y_pred, num_classes) == SPARSE:
        labels, valid = checked_sparse_labels(
            y_true, y_pred, num_classes, invalid_label_counter
        )
        return tf.one_hot(labels, num_classes, dtype=y_pred.dtype), labels, valid
    return tf.cast(y_true, y_pred.dtype), None, None
