"""The base of the dynamical losses: a pure loss function composed with Γ(t).

:class:`_ScheduledLoss` evaluates its
:class:`~keras_dynloss.schedules.ClassWeightSchedule` at the training step and
passes Γ(t) to a per-sample function of :mod:`keras_dynloss.loss_functions`. The
step is read from the optimizer's ``iterations`` counter (advanced in the compiled
step, saved by ``model.save`` and ``BackupAndRestore``) through an
:class:`OptimizerStep`, bound by :class:`~keras_dynloss.DynamicalLossScheduler` or
:meth:`_ScheduledLoss.bind`.
"""

import copy

import keras
import tensorflow as tf

from keras_dynloss._checks import invalid
from keras_dynloss._compat import in_symbolic_scope
from keras_dynloss.loss_functions import prediction
from keras_dynloss.schedules import ClassWeightSchedule, deserialize_profile

__all__ = ["OptimizerStep"]


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

    @tf.autograph.experimental.do_not_convert
    def call(self, y_true, y_pred):
        y_pred = prediction(y_pred)
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
