"""The callback that connects dynamical losses to ``model.fit``."""

import keras
import tensorflow as tf

from keras_dynloss._checks import check_bool, check_int, invalid
from keras_dynloss._scheduled import _ScheduledLoss

__all__ = ["DynamicalLossScheduler"]


@keras.saving.register_keras_serializable(package="keras_dynloss")
class DynamicalLossScheduler(keras.callbacks.Callback):
    """Drives dynamical losses from the optimizer step and logs Γ each epoch.

    At the start of ``fit`` / ``evaluate`` it binds every dynamical loss of the
    model (or the one given) to ``model.optimizer.iterations``. Γ(t) is then
    computed *inside the compiled step* from the true optimizer step ``t``, so it
    is exact with ``steps_per_execution > 1``, ``jit_compile``, distribution
    strategies and ``BackupAndRestore``, and costs no per-batch Python call.
    ``evaluate()`` uses Γ at the current step and never advances it.

    At the end of each epoch it writes into ``logs``:

    * ``gamma_<i>``: Γ_i at the epoch's last training step, for each class i;
    * ``emphasized_class``: the (lowest) emphasised class then, or -1 when Γ ≡ 1.

    With several dynamical losses (multi-output models) the keys are prefixed
    by the loss name (``<name>_gamma_<i>``). Keras appends its ``History`` and
    progress bar after user callbacks, so the values show in both; put this
    callback *before* ``CSVLogger`` / ``TensorBoard`` in the list.

    Args:
        loss: the dynamical loss to drive; default: all dynamical losses found in
            ``model.loss``.
        period_epochs: if set, the period in epochs: at ``fit`` start each loss's
            schedule is replaced by a copy (``schedule.with_period``, which keeps
            a callable profile) whose period is ``period_epochs * steps_per_epoch
            / N`` optimizer updates (``N = gradient_accumulation_steps``, else 1),
            and the compiled train/test steps are traced anew.
        steps_per_epoch: batches per epoch for ``period_epochs``, when ``fit``
            cannot know it (a dataset of unknown length); it overrides fit's count.
        log_weights: write Γ into ``logs``.

    Example:
        >>> model.compile(optimizer="sgd",
        ...               loss=DynamicalLoss(10, amplitude=10, period=1))
        >>> model.fit(ds, epochs=30,
        ...           callbacks=[DynamicalLossScheduler(period_epochs=2)])
    """

    def __init__(self, loss=None, *, period_epochs=None, steps_per_epoch=None,
                 log_weights=True):
        super().__init__()
        if loss is not None and not isinstance(loss, _ScheduledLoss):
            raise invalid("loss", "a keras_dynloss dynamical loss or None", loss)
        self.loss = loss
        self.period_epochs = (
            None if period_epochs is None
            else check_int("period_epochs", period_epochs, minimum=1)
        )
        self.steps_per_epoch = (
            None if steps_per_epoch is None
            else check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        )
        self.log_weights = check_bool("log_weights", log_weights)
        self._epoch = None  # the current epoch while fit runs

    def _losses(self):
        if self.loss is not None:
            return [self.loss]
        found = [
            l for l in tf.nest.flatten(getattr(self.model, "loss", None))
            if isinstance(l, _ScheduledLoss)
        ]
        if not found:
            raise ValueError(
                "DynamicalLossScheduler found no dynamical loss in `model.loss`. "
                f"Received: model.loss={getattr(self.model, 'loss', None)!r}. Compile "
                "with a keras_dynloss loss or pass it as `DynamicalLossScheduler(loss)`."
            )
        return found

    def _bind(self):
        created = False
        for loss in self._losses():
            loss.bind(self.model)
            if loss.invalid_label_counter is None:
                with self.model.distribute_strategy.scope():
                    loss.invalid_label_counter = tf.Variable(
                        0, dtype=tf.int64, trainable=False,
                        synchronization=tf.VariableSynchronization.ON_READ,
                        aggregation=tf.VariableAggregation.SUM,
                        name="invalid_label_count",
                    )
                created = True
        if created:  # steps traced before had no counter to add to
            self._retrace()

    def _retrace(self):
        """Traces anew the compiled train and test steps already built: the
        loss's counter and schedule (period, profile) are constants there.
        (``predict`` never calls the loss, so its function is kept.)"""
        for attr, make in (
            ("train_function", "make_train_function"),
            ("test_function", "make_test_function"),
        ):
            if getattr(self.model, attr, None) is not None:
                getattr(self.model, make)(force=True)

    def _set_period_from_epochs(self):
        steps = self.steps_per_epoch or (self.params or {}).get("steps")
        if not steps:
            raise ValueError(
                "Invalid value for argument `steps_per_epoch`: expected the number of "
                "optimizer steps per epoch, since `fit` does not know it for this "
                f"dataset (period_epochs={self.period_epochs}). Received: "
                f"steps_per_epoch={self.steps_per_epoch}"
            )
        # t counts optimizer updates: with gradient accumulation over N batches
        # an epoch of `steps` batches is steps / N updates.
        opt = self.model.optimizer
        inner = getattr(opt, "inner_optimizer", opt)  # LossScaleOptimizer
        per_update = getattr(inner, "gradient_accumulation_steps", None) or 1
        if int(steps) % per_update:
            raise invalid(
                "steps_per_epoch",
                f"a multiple of the optimizer's gradient_accumulation_steps="
                f"{per_update} (period_epochs={self.period_epochs} must be a whole "
                "number of updates)",
                int(steps),
            )
        changed = False
        for loss in self._losses():
            period = self.period_epochs * int(steps) // per_update
            if loss.schedule.period != period:
                # A new object (probes that traced the old one see the change),
                # keeping the profile callable itself.
                loss.schedule = loss.schedule.with_period(period)
                changed = True
        if changed:  # the period is a constant of the traced steps
            self._retrace()

    def _reset_label_counts(self):
        for loss in self._losses():
            if loss.invalid_label_counter is not None:
                loss.invalid_label_counter.assign(0)

    def _check_labels(self, where):
        """Raises if the XLA-compiled steps counted invalid labels (see ``_labels``)."""
        for loss in self._losses():
            counter = loss.invalid_label_counter
            if counter is not None:
                n = int(counter.numpy())
                if n:
                    counter.assign(0)
                    raise tf.errors.InvalidArgumentError(
                        None, None,
                        f"Invalid value for argument `y_true`: expected integer class "
                        f"labels in [0, {loss.num_classes}) for loss '{loss.name}'. "
                        f"Received {n} labels outside that range during {where} (found "
                        "by the XLA-compiled step, which gave those samples weight 0; "
                        "the other samples were used).",
                    )

    # -- hooks -------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._bind()
        self._reset_label_counts()
        self._epoch = None
        if self.period_epochs is not None:
            self._set_period_from_epochs()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_test_begin(self, logs=None):
        self._bind()
        if self._epoch is None:  # a plain evaluate(): forget earlier, aborted runs
            self._reset_label_counts()
        else:  # validation inside fit: the epoch's training steps are done
            self._check_labels(f"training epoch {self._epoch + 1}")

    def on_test_end(self, logs=None):
        self._check_labels("evaluation")

    def on_train_end(self, logs=None):
        self._epoch = None
        self._check_labels("training")

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = None
        self._check_labels(f"training epoch {epoch + 1}")
        if not self.log_weights or logs is None:
            return
        losses = self._losses()
        last_step = max(int(self.model.optimizer.iterations.numpy()) - 1, 0)
        for loss in losses:
            prefix = f"{loss.name}_" if len(losses) > 1 else ""
            gamma = loss.weights_at(last_step)
            for i, g in enumerate(gamma):
                logs[f"{prefix}gamma_{i}"] = float(g)
            emphasized = loss.schedule.emphasized_at(last_step)
            logs[f"{prefix}emphasized_class"] = (
                int(emphasized[0]) if emphasized.size else -1
            )

    def get_config(self):
        return {
            "period_epochs": self.period_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "log_weights": self.log_weights,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
