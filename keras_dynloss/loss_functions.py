"""Dynamical losses as pure per-sample functions of ``(y_true, y_pred, Γ)``.

Each function weights a per-sample loss by the class weights Γ (shape (C,)) and
returns per-sample values (shape (B,)); :mod:`keras_dynloss.losses` composes them
with a :class:`~keras_dynloss.schedules.ClassWeightSchedule` in
``keras.losses.Loss`` subclasses. Under mixed precision they compute in float32.
They are marked ``tf.autograph.experimental.do_not_convert`` (no tensor-dependent
Python control flow; see :mod:`keras_dynloss.schedules`).
"""

import keras
import tensorflow as tf

from keras_dynloss import _labels
from keras_dynloss._checks import invalid

__all__ = [
    "dynamical_crossentropy",
    "dynamical_mean_squared_error",
    "dynamical_componentwise_mean_squared_error",
]


_HALF = (tf.float16, tf.bfloat16)


def prediction(y_pred):
    """``y_pred`` as a tensor, float16/bfloat16 cast to float32: under mixed
    precision the loss is computed in float32 (a Γ-weighted loss overflows
    float16 from about 65504, and its log-probabilities lose precision)."""
    y_pred = tf.convert_to_tensor(y_pred)
    return tf.cast(y_pred, tf.float32) if y_pred.dtype in _HALF else y_pred


def _class_weights(class_weights, y_pred):
    class_weights = tf.cast(class_weights, y_pred.dtype)
    if class_weights.shape.rank != 1 or class_weights.shape[0] is None:
        raise invalid(
            "class_weights",
            "a vector of shape (C,) with C known",
            f"<tensor of shape {class_weights.shape}>",
        )
    return class_weights, int(class_weights.shape[0])


def _squared_error_inputs(y_true, y_pred, class_weights, invalid_label_counter):
    """``(y_pred, Γ, targets, labels, valid)`` for the squared-error losses: the
    prediction and Γ in the compute dtype, float targets (B, C), and the checked
    sparse labels (B,) and validity mask, or None for one-hot ``y_true``."""
    y_pred = prediction(y_pred)
    class_weights, num_classes = _class_weights(class_weights, y_pred)
    targets, labels, valid = _labels.one_hot_targets(
        y_true, y_pred, num_classes, invalid_label_counter
    )
    return y_pred, class_weights, targets, labels, valid


@tf.autograph.experimental.do_not_convert
def dynamical_crossentropy(
    y_true, y_pred, class_weights, *, from_logits=False, invalid_label_counter=None
):
    """Per-sample class-weighted cross-entropy ``Γ_{y_μ} · (-log softmax(f(x_μ))_{y_μ})``.

    Averaged over the batch this is the paper's dynamical loss
    ``F = -(1/P) Σ_μ Γ_{y_μ} log p_{y_μ}``. For one-hot or soft targets the sample
    weight is ``Σ_i y_μi Γ_i`` (equal to ``Γ_{y_μ}`` for one-hot).

    Args:
        y_true: integer labels, shape (B,) or (B, 1), or one-hot targets (B, C).
        y_pred: logits or probabilities, shape (B, C).
        class_weights: Γ, shape (C,).
        from_logits: whether ``y_pred`` holds logits.
        invalid_label_counter: optional int64 variable incremented by the number
            of invalid labels under XLA, where in-graph assertions are dropped.
            Outside XLA an invalid label raises ``tf.errors.InvalidArgumentError``
            at once. Under XLA an invalid sample's loss and gradient are 0 when
            the counter is given (the batch's valid samples still train; the
            mean still divides by the whole batch), NaN (with zero gradient)
            when it is not.

    Returns:
        Per-sample losses, shape (B,); computed in float32 when ``y_pred`` is
        float16/bfloat16 (mixed precision), else in ``y_pred``'s dtype.

    Example:
        >>> dynamical_crossentropy([0, 2], [[2., 0., 0.], [0., 0., 2.]],
        ...                        [2.917, 0.042, 0.042], from_logits=True)
    """
    y_pred = prediction(y_pred)
    class_weights, num_classes = _class_weights(class_weights, y_pred)
    y_true = tf.convert_to_tensor(y_true)
    if _labels.label_kind(y_true, y_pred, num_classes) == _labels.SPARSE:
        labels, valid = _labels.checked_sparse_labels(
            y_true, y_pred, num_classes, invalid_label_counter
        )
        ce = keras.losses.sparse_categorical_crossentropy(
            labels, y_pred, from_logits=from_logits
        )
        weights = tf.gather(class_weights, labels)
    else:
        targets = tf.cast(y_true, y_pred.dtype)
        ce = keras.losses.categorical_crossentropy(
            targets, y_pred, from_logits=from_logits
        )
        weights = tf.linalg.matvec(targets, class_weights)
        valid = None
    return _labels.mask_invalid(weights * ce, valid, invalid_label_counter)


@tf.autograph.experimental.do_not_convert
def dynamical_mean_squared_error(
    y_true, y_pred, class_weights, *, invalid_label_counter=None
):
    """Per-sample weighted MSE ``Γ_{y_μ} · (1/C) Σ_i (y_μi - f_μi)²`` (DMSE, per sample).

    The first dynamical MSE of Lavin Pallero & Ruiz-Garcia (arXiv 2410.10690):
    each sample's squared error is weighted by its class's Γ.

    Args:
        y_true: integer labels (B,) / (B, 1) (one-hot targets are built) or
            one-hot targets (B, C) (sample weight ``Σ_i y_μi Γ_i``).
        y_pred: network outputs, shape (B, C).
        class_weights: Γ, shape (C,).
        invalid_label_counter: as for :func:`dynamical_crossentropy`.

    Returns:
        Per-sample losses, shape (B,) (float32 for float16/bfloat16 ``y_pred``).
    """
    y_pred, class_weights, targets, labels, valid = _squared_error_inputs(
        y_true, y_pred, class_weights, invalid_label_counter
    )
    if labels is not None:
        weights = tf.gather(class_weights, labels)
    else:
        weights = tf.linalg.matvec(targets, class_weights)
    mse = tf.reduce_mean(tf.square(targets - y_pred), axis=-1)
    return _labels.mask_invalid(weights * mse, valid, invalid_label_counter)


@tf.autograph.experimental.do_not_convert
def dynamical_componentwise_mean_squared_error(
    y_true, y_pred, class_weights, *, invalid_label_counter=None
):
    """Component-weighted MSE ``(1/C) Σ_i Γ_i (y_μi - f_μi)²`` (DMSE, per output).

    The second dynamical MSE of arXiv 2410.10690: output component ``i`` of every
    sample is weighted by ``Γ_i``.

    Args:
        y_true: integer labels (B,) / (B, 1) or one-hot targets (B, C).
        y_pred: network outputs, shape (B, C).
        class_weights: Γ, shape (C,).
        invalid_label_counter: as for :func:`dynamical_crossentropy`.

    Returns:
        Per-sample losses, shape (B,) (float32 for float16/bfloat16 ``y_pred``).
    """
    y_pred, class_weights, targets, _, valid = _squared_error_inputs(
        y_true, y_pred, class_weights, invalid_label_counter
    )
    mse = tf.reduce_mean(class_weights * tf.square(targets - y_pred), axis=-1)
    return _labels.mask_invalid(mse, valid, invalid_label_counter)
