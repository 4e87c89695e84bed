"""The spiral setup of the paper (Fig. 4 and the width study), trained with ``fit``.

Dense(width)-ReLU-Dense(C) with jax ``stax.Dense`` defaults (kernel
``glorot_normal`` = truncated normal with fan-avg variance, as Keras's
``GlorotNormal``; bias normal with stddev 0.01), full-batch gradient descent
(``SGD(1.0)``) on the 300 spiral points, Γ(t) triangular with period T and the
last period static. Training goes through ``model.fit`` over a repeated
full-batch ``tf.data`` dataset with a large ``steps_per_execution``;
:class:`StepRecorder`, a metric, stores F(t) and the accuracy of every step
inside the compiled step (no per-step Python).
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_dynloss.callbacks import DynamicalLossScheduler  # noqa: E402
from keras_dynloss.datasets import spiral  # noqa: E402
from keras_dynloss.experiments._losses import objective, spiral_loss  # noqa: E402

__all__ = ["build_mlp", "StepRecorder", "train_spiral", "ProgressBar"]


def build_mlp(width, num_classes=3, *, seed=0, dtype="float32", inputs=2):
    """Dense(width)-ReLU-Dense(C) with jax ``stax.Dense`` initialisation.

    Args:
        width: hidden units.
        num_classes: C, logits out.
        seed: seed of the initial weights.
        dtype: ``"float32"`` or ``"float64"`` (the authors ran JAX in float64).
        inputs: input dimension.
    """
    keras.utils.set_random_seed(seed)
    init = dict(kernel_initializer=keras.initializers.GlorotNormal(),
                bias_initializer=keras.initializers.RandomNormal(stddev=0.01),
                dtype=dtype)
    return keras.Sequential([
        keras.Input((inputs,), dtype=dtype),
        keras.layers.Dense(width, activation="relu", **init),
        keras.layers.Dense(num_classes, **init),
    ])


class StepRecorder(keras.metrics.Metric):
    """Records F(t) and the accuracy of every training step into buffers.

    Keras computes metrics after the optimizer update, on the predictions made
    *before* it, so the values belong to step ``t = iterations - 1``, the step at
    which the loss (and Γ) was evaluated. Values are scattered into two
    ``(num_steps,)`` variables inside the compiled step; ``reset_state`` (called
    each epoch) keeps them. ``result()`` is the latest F(t).

    Args:
        loss: the bound :class:`~keras_dynloss.DynamicalLoss` (or None: plain
            cross-entropy from logits).
        optimizer_iterations: the optimizer's step variable.
        num_steps: buffer length; later steps are dropped.
    """

    def __init__(self, loss, optimizer_iterations, num_steps, name="F", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self._loss = loss
        self._iterations = optimizer_iterations
        self.num_steps = int(num_steps)
        with tf.init_scope():
            nan = tf.constant(np.nan, self.dtype)
            self.loss_trace = tf.Variable(tf.fill([self.num_steps], nan), trainable=False)
            self.acc_trace = tf.Variable(tf.fill([self.num_steps], nan), trainable=False)
        self.latest = self.add_variable(shape=(), initializer="zeros", name="latest")

    def update_state(self, y_true, y_pred, sample_weight=None):
        step = tf.cast(tf.convert_to_tensor(self._iterations), tf.int64) - 1
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        num_classes = y_pred.shape[-1]
        if self._loss is not None:
            gamma = self._loss.schedule(step, dtype=y_pred.dtype)
        else:
            gamma = tf.ones([num_classes], y_pred.dtype)
        f = tf.reduce_mean(objective(self._loss, labels, y_pred, gamma))
        acc = tf.reduce_mean(tf.cast(
            tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32), labels), self.dtype))
        f = tf.cast(f, self.dtype)
        idx = tf.clip_by_value(step, 0, self.num_steps - 1)[None, None]
        keep = step < self.num_steps
        self.loss_trace.scatter_nd_update(idx, tf.where(keep, f, self.loss_trace[idx[0, 0]])[None])
        self.acc_trace.scatter_nd_update(idx, tf.where(keep, acc, self.acc_trace[idx[0, 0]])[None])
        self.latest.assign(tf.cast(f, self.latest.dtype))

    def result(self):
        return self.latest

    def reset_state(self):
        pass


class ProgressBar(keras.callbacks.Callback):
    """A one-line progress bar on stderr, updated at each epoch end (cheap)."""

    def __init__(self, total_steps, label="", stream=None, enabled=True):
        super().__init__()
        self.total = int(total_steps)
        self.label = label
        self.enabled = enabled
        self.stream = stream
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if not self.enabled:
            return
        import sys

        stream = self.stream or sys.stderr
        done = int(self.model.optimizer.iterations.numpy())
        frac = min(done / max(self.total, 1), 1.0)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        elapsed = time.perf_counter() - self._start
        acc = logs.get("accuracy") if logs else None
        extra = f" acc {acc:.3f}" if acc is not None else ""
        stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {elapsed:5.1f}s{extra}")
        if done >= self.total:
            stream.write("\n")
        stream.flush()


def train_spiral(*, width=100, amplitude=70.0, period=5000, steps=70000, seed=0,
                 data_seed=0, learning_rate=1.0, dtype="float32", record=False,
                 probe_every=0, probe_ntk=True, steps_per_execution=None,
                 progress=False, label="", loss="ce", validation_seed=None):
    """Full-batch GD on the spiral with the dynamical loss (last period static).

    Args:
        width: hidden units.
        amplitude: A (1 = plain cross-entropy).
        period: T in steps.
        steps: total GD steps; Γ ≡ 1 from ``steps - period`` on.
        seed: seed of the initial weights.
        data_seed: seed of the spiral.
        learning_rate: η of ``SGD``.
        dtype: model dtype, ``"float32"`` or ``"float64"``.
        record: record F(t) and accuracy at every step (:class:`StepRecorder`).
        probe_every: run ``CurvatureProbe`` (Hessian and NTK λ_max) every this
            many steps; 0 disables it.
        probe_ntk: also probe the NTK.
        steps_per_execution: steps per compiled call (default: ``probe_every``
            or 1000).
        progress: show a progress bar.
        loss: ``"ce"``, ``"mse"``, ``"dmse"`` or ``"dmse-componentwise"``
            (:func:`~keras_dynloss.experiments._losses.spiral_loss`).
        validation_seed: if given, ``val_acc`` is the final accuracy on
            ``spiral(seed=validation_seed)`` (same construction, other noise).

    Returns:
        A dict: ``final_acc``, ``final_loss``, ``seconds``, ``steps``, and when
        recorded ``loss`` / ``accuracy`` (``(steps,)`` arrays), ``probe`` (the
        probe history dict), ``gamma`` (Γ rows at ~2000 evenly spread steps ``gamma_steps``).
    """
    x, y = spiral(seed=data_seed, dtype=dtype)
    num_classes = int(y.max()) + 1
    model = build_mlp(width, num_classes, seed=seed, dtype=dtype)
    static_after = max(steps - period, 0)
    # The loss in the model's dtype: Keras losses default to float32, which would
    # round the float64 gradient at the logits.
    loss = spiral_loss(loss, num_classes, amplitude=amplitude, period=period,
                       static_after=static_after, dtype=dtype)
    optimizer = keras.optimizers.SGD(learning_rate)
    if steps_per_execution is None:
        steps_per_execution = probe_every if probe_every else 1000
    steps_per_execution = max(1, min(steps_per_execution, steps))
    # Epochs of whole executions; an epoch is the unit of the progress bar.
    steps_per_epoch = steps_per_execution * max(1, (steps // 20) // steps_per_execution)
    steps_per_epoch = min(steps_per_epoch, steps)
    optimizer.build(model.trainable_variables)
    metrics = ["accuracy"]
    recorder = None
    if record:
        recorder = StepRecorder(loss, optimizer.iterations, steps, dtype=dtype)
        metrics = [recorder, "accuracy"]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                  steps_per_execution=steps_per_execution)
    callbacks = [DynamicalLossScheduler(log_weights=False)]
    probe = None
    if probe_every:
        from keras_dynloss.curvature import CurvatureProbe

        probe = CurvatureProbe((x, y), every_n_steps=probe_every, ntk=probe_ntk,
                               lanczos_order=10, ntk_order=10)
        callbacks.append(probe)
    callbacks.append(ProgressBar(steps, label=label, enabled=progress))
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    start = time.perf_counter()
    remaining = steps
    epochs, rest = divmod(remaining, steps_per_epoch)
    if epochs:
        model.fit(data, epochs=epochs, steps_per_epoch=steps_per_epoch,
                  callbacks=callbacks, verbose=0, shuffle=False)
    if rest:
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                      steps_per_execution=min(rest, steps_per_execution))
        model.fit(data, epochs=epochs + 1, initial_epoch=epochs, steps_per_epoch=rest,
                  callbacks=callbacks, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    logits = model(x, training=False)
    final_acc = float(np.mean(np.argmax(np.asarray(logits), -1) == y))
    # Plain cross-entropy in the model's dtype (Keras losses default to float32).
    final_loss = float(keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, dtype=dtype)(y, logits))
    out = dict(final_acc=final_acc, final_loss=final_loss, seconds=seconds, steps=steps,
               width=width, amplitude=float(amplitude), period=period, seed=seed,
               dtype=dtype, learning_rate=learning_rate)
    if validation_seed is not None:
        x_val, y_val = spiral(seed=validation_seed, dtype=dtype)
        val_logits = model(x_val, training=False)
        out["val_acc"] = float(np.mean(np.argmax(np.asarray(val_logits), -1) == y_val))
    if recorder is not None:
        out["loss"] = recorder.loss_trace.numpy()
        out["accuracy"] = recorder.acc_trace.numpy()
        gamma_steps = np.unique(np.linspace(0, steps - 1, 2001).astype(np.int64))
        out["gamma_steps"] = gamma_steps
        out["gamma"] = loss.weights_at(gamma_steps)
    if probe is not None:
        out["probe"] = {k: list(v) for k, v in probe.history.items()}
    return out
