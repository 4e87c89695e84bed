"""Dynamical losses: a per-sample loss weighted by the class weights Γ(t).

Each loss is a pure function of ``(y_true, y_pred, class_weights)``
(:mod:`keras_dynloss.loss_functions`, re-exported here) plus a thin
``keras.losses.Loss`` subclass that composes it with a
:class:`~keras_dynloss.schedules.ClassWeightSchedule` evaluated at the training
step. The step is read from the optimizer's ``iterations`` counter (advanced in
the compiled step, saved by ``model.save`` and ``BackupAndRestore``), bound by
:class:`~keras_dynloss.DynamicalLossScheduler` or :meth:`bind`.
"""

import keras

from keras_dynloss._checks import check_bool
from keras_dynloss._scheduled import OptimizerStep, _ScheduledLoss  # noqa: F401
from keras_dynloss.loss_functions import (
    dynamical_componentwise_mean_squared_error,
    dynamical_crossentropy,
    dynamical_mean_squared_error,
)

__all__ = [
    "dynamical_crossentropy",
    "dynamical_mean_squared_error",
    "dynamical_componentwise_mean_squared_error",
    "DynamicalLoss",
    "DynamicalMeanSquaredError",
    "DynamicalComponentwiseMeanSquaredError",
]


@keras.saving.register_keras_serializable(package="keras_dynloss")
class DynamicalLoss(_ScheduledLoss):
    """Dynamical cross-entropy (Ruiz-Garcia et al., ICML 2021).

    ``F(t) = -(1/P) Σ_μ Γ_{y_μ}(t) log softmax(f(x_μ))_{y_μ}`` with Γ(t) from a
    :class:`~keras_dynloss.schedules.ClassWeightSchedule` at optimizer step t.
    ``amplitude=1`` is exactly ``SparseCategoricalCrossentropy`` /
    ``CategoricalCrossentropy``.

    Args:
        num_classes: C (>= 2); ``y_pred`` must have C outputs.
        amplitude: A >= 1 (the paper uses 70 on the spiral).
        period: T, steps per period (``DynamicalLossScheduler(period_epochs=...)``
            sets it from epochs).
        shape: ``"triangular"`` (paper), ``"sine"``, ``"square"`` or a callable
            profile ``h(phase) -> [0, 1]``.
        from_logits: whether ``y_pred`` holds logits.
        normalize: rescale Γ so that ``Σ_i Γ_i = C``.
        class_order: ``"cyclic"``, ``"random"`` (seeded permutation each cycle)
            or an explicit sequence of classes / groups of classes.
        group_size: classes emphasised together in one period.
        static_after: step from which Γ ≡ 1 (the paper's last static period).
        seed: seed of the random class order.
        reduction, name: as for any ``keras.losses.Loss``.
        dtype: as for any ``keras.losses.Loss`` (saved by ``model.save``), except
            that a half-precision dtype or policy computes in float32: under
            ``mixed_float16`` / ``mixed_bfloat16`` the loss, Γ and the reduction
            are float32 whatever ``dtype`` says. ``"float64"`` computes Γ, its
            phase and the loss in float64.

    Labels: sparse integers (B,) or (B, 1), or one-hot (B, C). A label outside
    ``[0, C)`` raises ``tf.errors.InvalidArgumentError``: at once without XLA;
    under ``jit_compile=True`` (where assertions are dropped) the invalid samples
    get weight 0 (the batch's valid samples still train, the mean still divides
    by the whole batch) and are counted, and ``DynamicalLossScheduler`` raises at
    the end of the epoch / ``evaluate``, with the weights still finite.
    ``sample_weight`` and ``fit(class_weight=...)`` multiply Γ.

    Example:
        >>> loss = DynamicalLoss(3, amplitude=70, period=5000, from_logits=True)
        >>> model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss)
        >>> model.fit(x, y, callbacks=[DynamicalLossScheduler()])
    """

    _fn = staticmethod(dynamical_crossentropy)

    def __init__(
        self,
        num_classes,
        *,
        amplitude,
        period,
        shape="triangular",
        from_logits=False,
        normalize=True,
        class_order="cyclic",
        group_size=1,
        static_after=None,
        seed=0,
        reduction="sum_over_batch_size",
        name="dynamical_loss",
        dtype=None,
    ):
        super().__init__(
            num_classes,
            amplitude=amplitude,
            period=period,
            shape=shape,
            normalize=normalize,
            class_order=class_order,
            group_size=group_size,
            static_after=static_after,
            seed=seed,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.from_logits = check_bool("from_logits", from_logits)

    def _fn_kwargs(self):
        return {"from_logits": self.from_logits}

    def get_config(self):
        config = super().get_config()
        config["from_logits"] = self.from_logits
        return config


@keras.saving.register_keras_serializable(package="keras_dynloss")
class DynamicalMeanSquaredError(_ScheduledLoss):
    """Dynamical MSE weighting each sample by its class's Γ (arXiv 2410.10690).

    ``F(t) = (1/P) Σ_μ Γ_{y_μ}(t) (1/C) Σ_i (y_μi - f_μi)²`` with one-hot targets.
    Same arguments as :class:`DynamicalLoss` (without ``from_logits``).
    """

    _fn = staticmethod(dynamical_mean_squared_error)

    def __init__(self, num_classes, *, name="dynamical_mean_squared_error", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="keras_dynloss")
class DynamicalComponentwiseMeanSquaredError(_ScheduledLoss):
    """Dynamical MSE weighting output component i by Γ_i (arXiv 2410.10690).

    ``F(t) = (1/P) Σ_μ (1/C) Σ_i Γ_i(t) (y_μi - f_μi)²`` with one-hot targets.
    Same arguments as :class:`DynamicalLoss` (without ``from_logits``).
    """

    _fn = staticmethod(dynamical_componentwise_mean_squared_error)

    def __init__(
        self, num_classes, *, name="dynamical_componentwise_mean_squared_error", **kwargs
    ):
        super().__init__(num_classes, name=name, **kwargs)
