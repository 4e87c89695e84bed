"""Dynamical losses: a per-sample loss weighted by the class weights Γ(t).

Each loss is a pure function of ``(y_true, y_pred, class_weights)`` plus a thin
``keras.losses.Loss`` subclass that composes it with a
:class:`~keras_dynloss.schedules.ClassWeightSchedule` evaluated at the training
step. The step is read from the optimizer's ``iterations`` counter (advanced in
the compiled step, saved by ``model.save`` and ``BackupAndRestore``), bound by
:class:`~keras_dynloss.DynamicalLossScheduler` or :meth:`bind`.
"""

import copy

import keras
import tensorflow as tf
from keras_dynloss import _labels
from keras_dynloss._compat import in_symbolic_scope
from keras_dynloss._checks import check_bool, invalid
from keras_dynloss.schedules import ClassWeightSchedule, deserialize_profile

__all__ = [
    "dynamical_crossentropy",
    "dynamical_mean_squared_error",
    "dynamical_componentwise_mean_squared_error",
    "DynamicalLoss",
    "DynamicalMeanSquaredError",
    "DynamicalComponentwiseMeanSquaredError",
]


_HALF = (tf.float16, tf.bfloat16)


def _prediction(y_pred):
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
    y_pred = _prediction(y_pred)
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
    y_pred = _prediction(y_pred)
    class_weights, num_classes = _class_weights(class_weights, y_pred)
    targets, labels, valid = _labels.one_hot_targets(
        y_true, y_pred, num_classes, invalid_label_counter
    )
    if labels is not None:
        weights = tf.gather(class_weights, labels)
    else:
        weights = tf.linalg.matvec(targets, class_weights)
    mse = tf.reduce_mean(tf.square(targets - y_pred), axis=-1)
    return _labels.mask_invalid(weights * mse, valid, invalid_label_counter)


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
    y_pred = _prediction(y_pred)
    class_weights, num_classes = _class_weights(class_weights, y_pred)
    targets, _, valid = _labels.one_hot_targets(
        y_true, y_pred, num_classes, invalid_label_counter
    )
    mse = tf.reduce_mean(class_weights * tf.square(targets - y_pred), axis=-1)
    return _labels.mask_invalid(mse, valid, invalid_label_counter)


_UNBOUND_MESSAGE = (
    "{cls} '{name}' has no training step to follow. Pass "
    "`callbacks=[keras_dynloss.DynamicalLossScheduler()]` to `fit` (and "
    "`evaluate`), or call `loss.bind(model)` after `model.compile(...)`; use "
    "`loss.at_step(t)` to evaluate it at a fixed step t."
)


class OptimizerStep:
    """The step of an optimizer, read each time it is asked for.

    What :meth:`_ScheduledLoss.bind` keeps for an optimizer (``loss.step``).
    A plain object on purpose: ``model.save`` walks the loss's attributes and
    would save a ``keras.optimizers.Optimizer`` found there a second time (and
    then skip the model's own one).

    Attributes:
        optimizer: the followed ``keras.optimizers.Optimizer``.
    """

    __slots__ = ("optimizer",)

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def read(self):
        """``optimizer.iterations`` now: a variable, or with gradient
        accumulation an op on Keras's micro-batch counter (call it inside the
        traced step)."""
        return self.optimizer.iterations

    def __repr__(self):
        return f"OptimizerStep({self.optimizer!r})"


class _ScheduledLoss(keras.losses.Loss):
    """A per-sample loss function composed with a ClassWeightSchedule.

    Subclasses set ``_fn`` (the pure per-sample function) and may pass extra
    keyword arguments to it through ``_fn_kwargs``.
    """

    _fn = None

    def __init__(
        self,
        num_classes,
        *,
        reduction="sum_over_batch_size",
        name=None,
        dtype=None,
        **schedule_kwargs,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        # The resolved policy's name ("float64", "mixed_float16", ...): Keras's
        # base get_config drops dtype, so a float64 loss would reload as float32.
        self._dtype_policy_name = keras.dtype_policies.get(
            dtype or keras.config.floatx()
        ).name
        self.schedule = ClassWeightSchedule(num_classes, **schedule_kwargs)
        self._step = None
        self.invalid_label_counter = None

    # -- the training step ------------------------------------------------

    @property
    def num_classes(self):
        return self.schedule.num_classes

    @property
    def period(self):
        return self.schedule.period

    def bind(self, source):
        """Follows the step of ``source``; returns ``self``.

        The step t of Γ(t) is the optimizer's public ``iterations``, read inside
        the compiled step each time the loss is called. That is the number of
        *updates* applied so far:

        * with ``gradient_accumulation_steps=N`` Keras applies one update every
          N micro-batches and ``iterations`` counts updates (micro-batches // N),
          so all N micro-batches of an update use the same Γ(t), and the
          accumulated gradient is exactly that of the Γ(t)-weighted loss over
          the N micro-batches (the period T counts updates);
        * with ``keras.optimizers.LossScaleOptimizer`` (``mixed_float16``) it is
          the inner optimizer's count: a step skipped for non-finite gradients
          does not advance t.

        Args:
            source: a compiled ``keras.Model`` (its optimizer), a
                ``keras.optimizers.Optimizer`` (its ``iterations``, read at each
                call), an :class:`OptimizerStep` (another loss's ``step``), an
                integer variable, a non-negative int (a fixed step), or None
                (unbind).
        """
        if isinstance(source, keras.Model):
            if getattr(source, "optimizer", None) is None:
                raise invalid("source", "a compiled model (with an optimizer)", source)
            source = source.optimizer
        if isinstance(source, keras.optimizers.Optimizer):
            source = OptimizerStep(source)
        if source is None or isinstance(source, OptimizerStep):
            self._step = source
        elif isinstance(source, (keras.Variable, tf.Variable)):
            if not tf.as_dtype(source.dtype).is_integer:
                raise invalid("source", "an integer step variable", source)
            self._step = source
        elif isinstance(source, int) and not isinstance(source, bool) and source >= 0:
            self._step = source
        else:
            raise invalid(
                "source",
                "a compiled keras.Model, a keras Optimizer, an integer variable, "
                "a non-negative int or None (a tensor is a snapshot: bind the "
                "optimizer instead)",
                source,
            )
        return self

    def at_step(self, step):
        """A copy of this loss fixed at ``step`` (for probes and analysis)."""
        fixed = copy.copy(self)
        fixed.invalid_label_counter = None
        return fixed.bind(int(step))

    @property
    def step(self):
        """The bound step source (an :class:`OptimizerStep`, an integer variable
        or an int), or None."""
        return self._step

    def current_step(self):
        """The step Γ is evaluated at, as an int64 tensor (see :meth:`bind`)."""
        source = self._step
        if source is None:
            if in_symbolic_scope():
                # Keras builds its compiled loss on placeholders (shape inference)
                # before callbacks run: any step will do there.
                return tf.zeros((), tf.int64)
            raise RuntimeError(
                _UNBOUND_MESSAGE.format(cls=type(self).__name__, name=self.name)
            )
        if isinstance(source, OptimizerStep):
            source = source.read()  # inside the traced step
        return tf.cast(tf.convert_to_tensor(source), tf.int64)

    def weights_at(self, step):
        """Γ(step) as a NumPy array of shape (C,) (``step.shape + (C,)`` for
        arrays), in the loss's :attr:`dtype`."""
        return self.schedule.weights_at(step, dtype=self.dtype)

    # -- the loss ----------------------------------------------------------

    @property
    def dtype(self):
        """The dtype the loss computes in: float32 for a half-precision dtype or
        policy (``"float16"``, ``"mixed_bfloat16"``, ...), else the policy's
        compute dtype (float32 by default, float64 if asked for)."""
        dtype = super().dtype
        return "float32" if dtype in ("float16", "bfloat16") else dtype

    def call(self, y_true, y_pred):
        y_pred = _prediction(y_pred)
        gamma = self.schedule(self.current_step(), dtype=y_pred.dtype)
        return type(self)._fn(
            y_true,
            y_pred,
            gamma,
            invalid_label_counter=self.invalid_label_counter,
            **self._fn_kwargs(),
        )

    def _fn_kwargs(self):
        return {}

    def get_config(self):
        config = super().get_config()
        config["dtype"] = self._dtype_policy_name
        config.update(self.schedule.get_config())
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_profile(config))


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
