"""The spiral setup of the paper (Fig. 4 and the width study), trained with ``fit``.

Dense(width)-ReLU-Dense(C) with jax ``stax.Dense`` defaults (kernel
``glorot_normal`` = truncated normal with fan-avg variance, as Keras's
``GlorotNormal``; bias normal with stddev 0.01), full-batch gradient descent
(``SGD(1.0)``) on the 300 spiral points, Γ(t) triangular with period T and the
last period static. Training goes through ``model.fit`` over a repeated
full-batch ``tf.data`` dataset; :class:`FullBatchSequential` runs K GD updates
per batch as one compiled loop (one XLA loop by default), and
:class:`StepRecorder` stores F(t) and the accuracy of every step from inside it
(no per-step Python).
"""

import collections
import time

import keras
import numpy as np
import tensorflow as tf

from keras_dynloss._checks import check_int
from keras_dynloss.callbacks import DynamicalLossScheduler
from keras_dynloss.datasets import spiral
from keras_dynloss.experiments._losses import spiral_loss

__all__ = ["build_mlp", "FullBatchSequential", "StepRecorder", "build_runner", "train_spiral",
           "ProgressBar"]


def build_mlp(width, num_classes=3, *, seed=0, dtype="float32", inputs=2, **kwargs):
    """Dense(width)-ReLU-Dense(C) with jax ``stax.Dense`` initialisation.

    Args:
        width: hidden units.
        num_classes: C, logits out.
        seed: seed of the initial weights.
        dtype: ``"float32"`` or ``"float64"`` (the authors ran JAX in float64).
        inputs: input dimension.
        **kwargs: ``updates_per_batch``, ``recorder`` of :class:`FullBatchSequential`
            (default: one update per batch, i.e. a plain ``Sequential``).
    """
    keras.utils.set_random_seed(seed)
    init = dict(kernel_initializer=keras.initializers.GlorotNormal(),
                bias_initializer=keras.initializers.RandomNormal(stddev=0.01),
                dtype=dtype)
    return FullBatchSequential([
        keras.Input((inputs,), dtype=dtype),
        keras.layers.Dense(width, activation="relu", **init),
        keras.layers.Dense(num_classes, **init),
    ], **kwargs)


class StepRecorder:
    """F(t) and the training accuracy of every step, in one preallocated buffer.

    Row ``t`` of a ``(num_steps + 1, 2)`` variable of the model's dtype holds
    ``(F(t), accuracy(t))``: the loss value the step's gradient came from and
    the accuracy of the predictions of that same forward pass (before the
    update). :meth:`record` writes both with one ``scatter_nd_update`` inside the
    compiled step; steps ``>= num_steps`` go to the last row, which is dropped.
    Rows never written stay NaN.

    Args:
        num_steps: steps to keep.
        dtype: buffer dtype (the model's: float64 keeps float64 values).
    """

    def __init__(self, num_steps, dtype="float32"):
        self.num_steps = int(num_steps)
        self.dtype = tf.as_dtype(dtype)
        with tf.init_scope():
            self.buffer = tf.Variable(
                tf.fill([self.num_steps + 1, 2], tf.constant(np.nan, self.dtype)),
                trainable=False, name="step_trace")

    def record(self, step, loss, accuracy):
        """Writes ``(loss, accuracy)`` into row ``min(step, num_steps)``."""
        row = tf.minimum(tf.cast(step, tf.int64), self.num_steps)
        values = tf.stack([tf.cast(loss, self.dtype), tf.cast(accuracy, self.dtype)])
        self.buffer.scatter_nd_update(row[None, None], values[None])

    @property
    def loss(self):
        """F(t) for t in [0, num_steps), shape (num_steps,)."""
        return self.buffer.numpy()[:-1, 0]

    @property
    def accuracy(self):
        """Training accuracy at each step, shape (num_steps,)."""
        return self.buffer.numpy()[:-1, 1]


class FullBatchSequential(keras.Sequential):
    """A ``Sequential`` whose training step runs ``updates_per_batch`` GD updates.

    For full-batch gradient descent ``fit`` sees the whole training set as
    every batch (``tf.data.Dataset.from_tensors((x, y)).repeat()``), so ``K``
    updates on one batch are exactly ``K`` ordinary ``fit`` steps: same
    forward pass, loss (Γ(t) read from ``optimizer.iterations``), gradient,
    ``optimizer.apply`` and compiled metrics once per update (the loss tracker
    gets the K losses at once, as their mean with weight K · batch size). The
    ``K`` updates are one ``tf.while_loop`` inside the compiled
    train step; with ``jit_compile=True`` one XLA loop, where Keras's own
    ``steps_per_execution`` loop would launch the XLA step once per update and
    fetch, wrap (``tf.experimental.Optional``) and branch (two ``tf.cond``)
    around each. ``fit``'s ``steps_per_epoch`` then counts batches of ``K``
    updates; callbacks see ``optimizer.iterations`` advance by ``K`` per batch.

    With a :class:`StepRecorder` each update also records
    ``(F(t), accuracy(t))`` from the values the update computed anyway.

    With ``in_step_probe`` (an :class:`~keras_dynloss.curvature.InStepProbe`,
    set after ``compile``) the probe runs inside the same loop, before each
    update and after the last, whenever the step is due: no batch hook, no
    extra launch.

    ``updates_per_batch=1`` without a recorder or probe is Keras's own ``train_step``.

    Args:
        layers: as for ``keras.Sequential``.
        updates_per_batch: K >= 1.
        recorder: a :class:`StepRecorder` or None.
        **kwargs: passed to ``keras.Sequential``.
    """

    def __init__(self, layers=None, *, updates_per_batch=1, recorder=None, **kwargs):
        super().__init__(layers, **kwargs)
        self.updates_per_batch = check_int("updates_per_batch", updates_per_batch, minimum=1)
        self.recorder = recorder
        self.in_step_probe = None

    def train_step(self, data):
        probe = self.in_step_probe
        if self.updates_per_batch == 1 and self.recorder is None and probe is None:
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        trackers = [m for m in self.metrics if m.name == "loss"]
        others = [m for m in self.metrics if m.name != "loss"]

        def update(i, loss_sum):
            step = tf.convert_to_tensor(self.optimizer.iterations)  # t, before the update
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self._total_loss(x, y, y_pred, sample_weight)
            self.optimizer.apply(tape.gradient(loss, variables), variables)
            for metric in others:  # compiled metrics, on this update's predictions
                metric.update_state(y, y_pred, sample_weight=sample_weight)
            if self.recorder is not None:
                labels = tf.cast(tf.reshape(y, [-1]), tf.int64)
                hits = tf.equal(tf.argmax(y_pred, -1), labels)
                self.recorder.record(step, loss, tf.reduce_mean(tf.cast(hits, loss.dtype)))
            return i + 1, loss_sum + tf.cast(loss, loss_sum.dtype)

        k = self.updates_per_batch
        body, trips = update, k
        if probe is not None:  # K + 1 trips: probe (when due) before each update and after the last

            def body(i, loss_sum):
                probe.maybe_probe()  # reads the weights; ordered before the update's writes
                return tf.cond(i < k, lambda: update(i, loss_sum), lambda: (i + 1, loss_sum))

            trips = k + 1
        _, loss_sum = tf.while_loop(lambda i, _: i < trips, body,
                                    (tf.constant(0), tf.constant(0.0, tf.float64)))
        # The loss tracker once per batch: the mean of the K losses with weight
        # K · batch size is what K per-update calls would accumulate.
        batch = tf.cast(tf.shape(x)[0], tf.float64)
        for tracker in trackers:
            tracker.update_state(loss_sum / k, sample_weight=k * batch)
        return self.get_metrics_result()

    def _total_loss(self, x, y, y_pred, sample_weight):
        """The compiled loss in its own dtype, plus the model's added losses.

        ``compute_loss`` would give the same value cast to float32 (Keras's
        compile wrapper casts; the gradient through the cast is unchanged), so
        a float64 loss is called directly to keep F(t) in float64.
        """
        if not isinstance(self.loss, keras.losses.Loss):
            return self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                     training=True)
        value = self.loss(y, y_pred, sample_weight)
        for extra in self.losses:
            value = value + tf.cast(extra, value.dtype)
        return value


class ProgressBar(keras.callbacks.Callback):
    """A one-line progress bar on stderr, updated at each epoch end (cheap).

    Shows the training accuracy: a :class:`StepRecorder`'s at the last step if
    given, else ``logs["accuracy"]``.
    """

    def __init__(self, total_steps, label="", stream=None, enabled=True, recorder=None):
        super().__init__()
        self.recorder = recorder
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
        if self.recorder is not None and 0 < done <= self.recorder.num_steps:
            acc = float(self.recorder.buffer[done - 1, 1])  # at the last step
        else:
            acc = logs.get("accuracy") if logs else None
        extra = f" acc {acc:.3f}" if acc is not None else ""
        stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {elapsed:5.1f}s{extra}")
        if done >= self.total:
            stream.write("\n")
        stream.flush()


def full_batch_dataset(x, y):
    """``(x, y)`` as every batch, forever: a ``tf.data.Dataset`` for ``fit``.

    Without autotuning: one in-memory batch has nothing to tune, and the
    autotuning thread made 2 of 5 Fig. 4 runs wait 9.7-10.3 s when ``fit``
    returned (the iterator's teardown; TF 2.21, 2-core VM; 0 of 9 without).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.from_tensors((x, y)).repeat().with_options(options)


Runner = collections.namedtuple("Runner", "model x y loss recorder in_step callbacks compile")
Runner.__doc__ = """What `build_runner` returns: the compiled `FullBatchSequential`, the spiral
`(x, y)`, the dynamical loss, the `StepRecorder` (or None), the `InStepProbe`
(or None), the callbacks `fit` needs (the loss's scheduler, the probe) and
`compile()`, which compiles the model again (after `updates_per_batch`
changes)."""


def build_runner(*, width, amplitude, period, steps, seed, data_seed, learning_rate, dtype, record,
                 probe_every, probe_ntk, updates_per_batch, jit_compile, loss, accuracy_metric=False):
    """The Fig. 4 / width-study model that :func:`train_spiral` fits, compiled.

    Arguments as for :func:`train_spiral`; ``updates_per_batch`` GD updates per
    compiled call; ``accuracy_metric`` adds Keras's accuracy metric. With
    ``probe_every`` the runner's probe (``CurvatureProbe``: Hessian λ_max, NTK
    with ``probe_ntk``, Lanczos order 10, tolerance 1e-3, warm start) is built
    into the training loop as an ``InStepProbe``. Returns a :class:`Runner`.
    """
    x, y = spiral(seed=data_seed, dtype=dtype)
    num_classes = int(y.max()) + 1
    # The loss in the model's dtype: Keras losses default to float32, which would
    # round the float64 gradient at the logits.
    loss = spiral_loss(loss, num_classes, amplitude=amplitude, period=period,
                       static_after=max(steps - period, 0), dtype=dtype)
    optimizer = keras.optimizers.SGD(learning_rate)
    recorder = StepRecorder(steps, dtype) if record else None
    model = build_mlp(width, num_classes, seed=seed, dtype=dtype,
                      updates_per_batch=updates_per_batch, recorder=recorder)
    optimizer.build(model.trainable_variables)
    metrics = ["accuracy"] if accuracy_metric else []

    def compile_model():
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=jit_compile)

    compile_model()
    callbacks = [DynamicalLossScheduler(log_weights=False)]
    in_step = None
    if probe_every:  # compiled into the training loop (InStepProbe)
        from keras_dynloss.curvature import CurvatureProbe, InStepProbe

        probe = CurvatureProbe((x, y), every_n_steps=probe_every, ntk=probe_ntk,
                               lanczos_order=10, ntk_order=10)
        in_step = InStepProbe(probe, capacity=steps // probe_every + 1)
        in_step.build(model)
        model.in_step_probe = in_step
        callbacks.append(in_step)
    return Runner(model, x, y, loss, recorder, in_step, callbacks, compile_model)


def train_spiral(*, width=100, amplitude=70.0, period=5000, steps=70000, seed=0,
                 data_seed=0, learning_rate=1.0, dtype="float32", record=False,
                 probe_every=0, probe_ntk=True, steps_per_execution=None,
                 jit_compile=True, progress=False, label="", loss="ce",
                 validation_seed=None):
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
        steps_per_execution: GD steps per compiled call, the
            ``updates_per_batch`` of :class:`FullBatchSequential` (default
            ``max(1000, steps // 20)``; probes run inside the loop, at any
            multiple of ``probe_every``).
        jit_compile: compile the training loop with XLA (``model.compile``'s
            argument). XLA runs the whole loop of GD steps as one computation,
            several times faster for this small model on a CPU; off, the loop is
            a TensorFlow graph loop.
        progress: show a progress bar.
        loss: ``"ce"``, ``"mse"``, ``"dmse"`` or ``"dmse-componentwise"``
            (:func:`~keras_dynloss.experiments._losses.spiral_loss`).
        validation_seed: if given, ``val_acc`` is the final accuracy on
            ``spiral(seed=validation_seed)`` (same construction, other noise).

    Returns:
        A dict: ``final_acc``, ``final_loss``, ``seconds``, ``steps``, and when
        recorded ``loss`` / ``accuracy`` (``(steps,)`` arrays of ``dtype``),
        ``probe`` (the probe history dict), ``gamma`` (Γ rows at ~2000 evenly
        spread steps ``gamma_steps``).
    """
    if steps_per_execution is None:  # about 20 batches (progress-bar updates) a run
        steps_per_execution = max(1000, steps // 20)
    per_batch = max(1, min(int(steps_per_execution), steps))
    runner = build_runner(width=width, amplitude=amplitude, period=period, steps=steps, seed=seed,
                          data_seed=data_seed, learning_rate=learning_rate, dtype=dtype, record=record,
                          probe_every=probe_every, probe_ntk=probe_ntk, updates_per_batch=per_batch,
                          jit_compile=jit_compile, loss=loss, accuracy_metric=progress and not record)
    model, x, y, loss, recorder = runner.model, runner.x, runner.y, runner.loss, runner.recorder
    probe = runner.in_step.probe if runner.in_step is not None else None
    callbacks = runner.callbacks + [ProgressBar(steps, label=label, enabled=progress, recorder=recorder)]
    data = full_batch_dataset(x, y)
    fit = dict(callbacks=callbacks, verbose=0, shuffle=False)
    start = time.perf_counter()
    batches, rest = divmod(steps, per_batch)
    # Epochs (the progress bar's unit, about 20 a run) of whole batches.
    per_epoch = max(1, batches // 20)
    epochs, extra = divmod(batches, per_epoch)
    if epochs:
        model.fit(data, epochs=epochs, steps_per_epoch=per_epoch, **fit)
    if extra:
        model.fit(data, epochs=epochs + 1, initial_epoch=epochs, steps_per_epoch=extra, **fit)
        epochs += 1
    if rest:  # a last, shorter batch: a new loop length, so compile anew
        model.updates_per_batch = rest
        runner.compile()
        model.fit(data, epochs=epochs + 1, initial_epoch=epochs, steps_per_epoch=1, **fit)
    seconds = time.perf_counter() - start
    logits = model(x, training=False).numpy()
    final_acc = float(np.mean(np.argmax(logits, -1) == y))
    # Plain cross-entropy in the model's dtype (Keras losses default to float32).
    final_loss = float(keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, dtype=dtype)(y, logits))
    out = dict(final_acc=final_acc, final_loss=final_loss, seconds=seconds, steps=steps,
               width=width, amplitude=float(amplitude), period=period, seed=seed,
               dtype=dtype, learning_rate=learning_rate)
    if validation_seed is not None:
        x_val, y_val = spiral(seed=validation_seed, dtype=dtype)
        val_logits = model(x_val, training=False).numpy()
        out["val_acc"] = float(np.mean(np.argmax(val_logits, -1) == y_val))
    if recorder is not None:
        out["loss"] = recorder.loss
        out["accuracy"] = recorder.accuracy
        gamma_steps = np.unique(np.linspace(0, steps - 1, 2001).astype(np.int64))
        out["gamma_steps"] = gamma_steps
        out["gamma"] = loss.schedule.weights_at(gamma_steps, dtype=dtype)
    if probe is not None:
        out["probe"] = {k: list(v) for k, v in probe.history.items()}
    return out
