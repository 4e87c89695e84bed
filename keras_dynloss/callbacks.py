"""`DynamicalLossScheduler`: the callback that connects dynamical losses to `model.fit`."""

import warnings

import keras
import numpy as np

from keras_dynloss import _compat, _tensorboard
from keras_dynloss._checks import check_bool, check_int, invalid
from keras_dynloss.losses import _DynamicalBase

__all__ = ["DynamicalLossScheduler"]


@keras.saving.register_keras_serializable(package="keras_dynloss")
class DynamicalLossScheduler(keras.callbacks.Callback):
    """Drives the model's dynamical losses from the optimizer step, and logs Γ.

    At `fit` / `evaluate` start it binds the dynamical losses to the optimizer
    (`loss.bind(model)`). At each epoch's end it writes `gamma_<i>_max`, `gamma_<i>_mean` and
    `emphasized_class` into `logs` (list it before `CSVLogger` / `TensorBoard`), and Γ_i(t) into
    TensorBoard by optimizer step; the guide's "The scheduler" has the details.

    Args:
        loss: the dynamical loss to drive; default: all dynamical losses of `model.loss`.
        period_epochs: the period in epochs (the guide's "Period in epochs").
        steps_per_epoch: batches per epoch for `period_epochs` when `fit` cannot know it.
        log_weights: log the per-epoch Γ statistics and `emphasized_class`.
        log_every_n_steps: TensorBoard resolution of Γ(t) in steps (default: period // 50, >= 1).
        log_dir: also write the TensorBoard scalars into `<log_dir>/train`.

    Example:
        >>> model.compile(optimizer="sgd", loss=DynamicalLoss(10, amplitude=10, period=1))
        >>> model.fit(ds, epochs=30, callbacks=[DynamicalLossScheduler(period_epochs=2)])
    """

    def __init__(self, loss=None, *, period_epochs=None, steps_per_epoch=None, log_weights=True,
                 log_every_n_steps=None, log_dir=None):
        super().__init__()
        if loss is not None and not isinstance(loss, _DynamicalBase):
            raise invalid("loss", "a keras_dynloss dynamical loss or None", loss)
        self.loss = loss
        self.period_epochs = check_int("period_epochs", period_epochs, minimum=1, allow_none=True)
        self.steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, minimum=1,
                                         allow_none=True)
        self.log_weights = check_bool("log_weights", log_weights)
        self.log_every_n_steps = check_int("log_every_n_steps", log_every_n_steps, minimum=1,
                                           allow_none=True)
        self.log_dir = log_dir
        self._in_fit, self._writer, self._written, self._epoch_start = False, None, -1, 0

    def _losses(self):
        if self.loss is not None:
            return [self.loss]
        found = [loss for loss in keras.tree.flatten(getattr(self.model, "loss", None))
                 if isinstance(loss, _DynamicalBase)]
        if not found:
            raise ValueError(
                "DynamicalLossScheduler found no dynamical loss in `model.loss`. Received: "
                f"model.loss={getattr(self.model, 'loss', None)!r}. Compile with a "
                "keras_dynloss loss or pass it as `DynamicalLossScheduler(loss)`.")
        return found

    def _prefix(self, loss):
        return f"{loss.name}_" if len(self._losses()) > 1 else ""

    def _now(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _sync(self):
        for loss in self._losses():
            if hasattr(loss.step, "sync"):
                loss.step.sync()

    def _retrace(self):
        for attr, make in (("train_function", "make_train_function"),
                           ("test_function", "make_test_function")):
            if getattr(self.model, attr, None) is not None:
                getattr(self.model, make)(force=True)

    def _bind(self):
        unbound = [loss for loss in self._losses() if loss._binding.model is not self.model]
        for loss in unbound:
            loss.bind(self.model)
        if unbound:  # the compiled steps were traced without the loss's state
            self._retrace()
        for loss in self._losses():
            loss.state.invalid_labels.assign(0)

    def _set_period_from_epochs(self):
        steps = self.steps_per_epoch or (self.params or {}).get("steps")
        if not steps:
            raise invalid("steps_per_epoch", "the number of batches per epoch, since `fit` does "
                          f"not know it for this dataset (period_epochs={self.period_epochs})",
                          self.steps_per_epoch)
        opt = self.model.optimizer
        per_update = getattr(getattr(opt, "inner_optimizer", opt),
                             "gradient_accumulation_steps", None) or 1
        if int(steps) % per_update:
            raise invalid("steps_per_epoch", "a multiple of the optimizer's "
                          f"gradient_accumulation_steps={per_update}", int(steps))
        period = self.period_epochs * int(steps) // per_update
        changed = [loss for loss in self._losses() if loss.schedule.period != period]
        for loss in changed:
            loss.schedule = loss.schedule.with_period(period)
        if changed:  # the period is a constant of the traced steps
            self._retrace()

    def _check_labels(self, where):
        for loss in self._losses():
            count = int(keras.ops.convert_to_numpy(loss.state.invalid_labels))
            if count:
                loss.state.invalid_labels.assign(0)
                message = (f"Invalid value for argument `y_true`: expected integer class labels in "
                           f"[0, {loss.num_classes}) or probabilities for loss '{loss.name}'. "
                           f"Received {count} invalid labels during {where}; those samples got "
                           "weight 0, the others were used.")
                if keras.backend.backend() == "tensorflow":
                    import tensorflow as tf

                    raise tf.errors.InvalidArgumentError(None, None, message)
                raise ValueError(message)

    def _warn_about_siblings(self):
        siblings = _compat.sibling_callbacks(self)
        mine = next((i for i, c in enumerate(siblings) if c is self), 0)
        for i, other in enumerate(siblings):
            monitor = getattr(other, "monitor", None)
            if monitor in ("loss", "val_loss"):
                warnings.warn(
                    f"{type(other).__name__} monitors {monitor!r}, the Γ-weighted dynamical loss, "
                    "which rises and falls with Γ(t) by design. Monitor a plain cross-entropy "
                    "metric instead, e.g. compile with metrics=[keras.metrics.SparseCategorical"
                    "Crossentropy(from_logits=True, name='ce')] and monitor 'val_ce'.",
                    stacklevel=3)
            if i < mine and self.log_weights and isinstance(
                    other, (keras.callbacks.CSVLogger, keras.callbacks.TensorBoard)):
                warnings.warn(f"{type(other).__name__} is listed before DynamicalLossScheduler, "
                              "so its epoch rows lack the Γ statistics and `emphasized_class` "
                              "(the scheduler writes them at the epoch's end); list the "
                              "scheduler first.", stacklevel=3)

    def _write_tensorboard(self):
        if not self._writer:
            return
        now = self._now()
        for loss in self._losses():
            every = self.log_every_n_steps or max(1, loss.schedule.period // 50)
            steps = np.arange((self._written // every + 1) * every, now, every)
            for step, gamma in zip(steps, loss.weights_at(steps) if steps.size else ()):
                values = {f"{self._prefix(loss)}gamma_{i}": g for i, g in enumerate(gamma)}
                values[f"{self._prefix(loss)}emphasized_class"] = _emphasized(loss, step)
                self._writer.write(step, values)
        self._written = now - 1
        self._writer.flush()

    def _log_epoch(self, logs):
        """The Γ statistics over the epoch's steps and the class emphasised at its last."""
        steps = np.arange(self._epoch_start, max(self._now(), self._epoch_start + 1))
        for loss in self._losses():
            prefix = self._prefix(loss)
            gamma = np.concatenate([loss.weights_at(chunk) for chunk in
                                    np.array_split(steps, -(-steps.size // 100_000))])
            for i in range(loss.num_classes):
                logs[f"{prefix}gamma_{i}_max"] = float(gamma[:, i].max())
                logs[f"{prefix}gamma_{i}_mean"] = float(gamma[:, i].mean())
            logs[f"{prefix}emphasized_class"] = _emphasized(loss, steps[-1])

    def on_train_begin(self, logs=None):
        self._in_fit = True
        self._bind()
        if self.period_epochs is not None:
            self._set_period_from_epochs()
        self._sync()
        self._warn_about_siblings()
        self._writer = _tensorboard.ScalarWriter(_tensorboard.log_dirs(self, self.log_dir))
        self._written = self._now() - 1

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._now()

    def on_epoch_end(self, epoch, logs=None):
        self._check_labels(f"training epoch {epoch + 1}")
        self._write_tensorboard()
        if self.log_weights and logs is not None:
            self._log_epoch(logs)

    def on_test_begin(self, logs=None):
        if not self._in_fit:
            self._bind()
        self._sync()

    def on_test_end(self, logs=None):
        self._check_labels("evaluation")

    def on_train_end(self, logs=None):
        self._in_fit = False
        self._check_labels("training")
        self._write_tensorboard()
        if self._writer:
            self._writer.close()
        self._sync()

    def get_config(self):
        return dict(period_epochs=self.period_epochs, steps_per_epoch=self.steps_per_epoch,
                    log_weights=self.log_weights, log_every_n_steps=self.log_every_n_steps,
                    log_dir=self.log_dir)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _emphasized(loss, step):
    """The first class emphasised at `step` (an int), -1 when Γ ≡ 1 there."""
    emphasized = loss.schedule.emphasized_at(step)
    return int(emphasized[0]) if emphasized.size else -1
