"""The spiral setup of the paper (Fig. 4 and the width study), trained with one `fit` call.

Dense(width)-ReLU-Dense(C) with jax `stax.Dense` initialisation, full-batch gradient descent
(`SGD(1.0)`) on the 300 spiral points, Γ(t) triangular with period T and the last period
static. `FullBatchSequential` runs K gradient-descent updates per `fit` batch as one compiled
loop (a `tf.while_loop`, one XLA computation with `jit_compile=True`, or a `lax.while_loop`
on JAX); `StepRecorder` keeps F(t) and the accuracy of every step, and an `InStepProbe`
measures the curvature inside the same loop (plug-ins: no per-step Python).
"""

import collections
import time

import keras
import numpy as np
from keras import ops

from keras_dynloss import _state
from keras_dynloss._checks import check_int
from keras_dynloss.callbacks import DynamicalLossScheduler
from keras_dynloss.datasets import spiral
from keras_dynloss.experiments._losses import spiral_loss

__all__ = ["build_mlp", "FullBatchSequential", "StepRecorder", "build_runner", "train_spiral",
           "Progress"]


def build_mlp(width, num_classes=3, *, seed=0, dtype="float32", inputs=2, **kwargs):
    """Dense(width)-ReLU-Dense(C) initialised as jax's `stax.Dense` (Glorot-normal kernels:
    a normal truncated at two standard deviations, fan-average variance; normal(0.01)
    biases), drawn in NumPy from `seed` (the same weights on every backend); `kwargs` go to
    `FullBatchSequential`."""
    model = FullBatchSequential([keras.Input((inputs,), dtype=dtype),
                                 keras.layers.Dense(width, activation="relu", dtype=dtype),
                                 keras.layers.Dense(num_classes, dtype=dtype)], **kwargs)
    rng = np.random.default_rng(seed)
    weights = []
    for fan_in, fan_out in ((inputs, width), (width, num_classes)):
        z = rng.standard_normal((fan_in, fan_out))
        while np.any(np.abs(z) > 2):
            z[np.abs(z) > 2] = rng.standard_normal(int(np.sum(np.abs(z) > 2)))
        std = np.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978  # the truncated std
        weights += [std * z, 0.01 * rng.standard_normal(fan_out)]
    model.set_weights([w.astype(dtype) for w in weights])
    return model


def _write_row(variable, row, values):
    """`variable[row] = values` in place (a whole-buffer copy per step would dominate)."""
    if keras.backend.backend() == "tensorflow":
        variable.value.scatter_nd_update(ops.reshape(row, (1, 1)), values[None])
    elif keras.backend.backend() == "torch":
        with __import__("torch").no_grad():
            variable.value[row] = values
    else:  # JAX: a dynamic-update-slice of the loop-carried state, in place under jit
        variable.assign(ops.slice_update(variable.value, (row, row * 0), values[None]))


class StepRecorder(keras.metrics.Metric):
    """F(t) and the training accuracy of every step, in one preallocated buffer.

    Row t of a `(num_steps + 1, 2)` variable of the model's dtype holds `(F(t), accuracy(t))`:
    the loss the step's gradient came from and the accuracy of that same forward pass. A
    metric (never reset, logs nothing) so that every backend's trainer carries it in the
    compiled step; steps >= num_steps go to the last row, which is dropped.

    Args:
        num_steps: steps to keep.
        dtype: buffer dtype (the model's: float64 keeps float64 values).
    """

    def __init__(self, num_steps, dtype="float32"):
        super().__init__(name="step_recorder", dtype=dtype)
        self.num_steps = int(num_steps)
        self.buffer = self.add_variable(shape=(self.num_steps + 1, 2), dtype=dtype,
                                        initializer=keras.initializers.Constant(np.nan),
                                        aggregation="only_first_replica", name="buffer")

    def record(self, step, loss, y_true, y_pred):
        """Writes `(loss, accuracy of y_pred)` into row `min(step, num_steps)`."""
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        hits = ops.cast(ops.argmax(y_pred, -1) == labels, self.buffer.dtype)
        row = ops.minimum(ops.cast(step, "int32"), self.num_steps)
        _write_row(self.buffer, row, ops.stack([ops.cast(loss, self.buffer.dtype), ops.mean(hits)]))

    def update_state(self, *args, **kwargs):
        """Unused: the training loop calls `record`."""

    def reset_state(self):
        """Kept across epochs."""

    def result(self):
        return {}

    @property
    def loss(self):
        """F(t) for t in [0, num_steps), shape (num_steps,)."""
        return ops.convert_to_numpy(self.buffer)[:-1, 0]

    @property
    def accuracy(self):
        """Training accuracy at each step, shape (num_steps,)."""
        return ops.convert_to_numpy(self.buffer)[:-1, 1]


class FullBatchSequential(keras.Sequential):
    """A `Sequential` whose training step runs up to K gradient-descent updates.

    For full-batch gradient descent `fit` sees the whole training set as every batch, so K
    updates on one batch are K ordinary `fit` steps: the same forward pass, loss (Γ(t) read
    from `optimizer.iterations`), gradient, `optimizer.apply` and compiled metrics, as one
    compiled loop (Keras's own `steps_per_execution` launches the step once per update).
    Each trip of the loop calls `in_step_probe.maybe_probe()` (an `InStepProbe`, set after
    `compile`) at the weights of the current step, then updates them while the batch and the
    run last (so the last trip only probes); after each update `recorder.record(...)`.
    `total_steps` stops the last batch early, so one `fit` call covers any number of steps.

    Args:
        layers: as for `keras.Sequential`.
        updates_per_batch: K >= 1.
        total_steps: the run's length in updates, or None.
        recorder: a `StepRecorder` or None.
    """

    def __init__(self, layers=None, *, updates_per_batch=1, total_steps=None, recorder=None,
                 **kwargs):
        super().__init__(layers, **kwargs)
        self.updates_per_batch = check_int("updates_per_batch", updates_per_batch, minimum=1)
        self.total_steps = check_int("total_steps", total_steps, minimum=1, allow_none=True)
        self.recorder = recorder
        self.in_step_probe = None

    def _loss_value(self, y, y_pred, sample_weight, extra=()):
        """The compiled loss in its own dtype plus added losses (`compute_loss` would cast a
        float64 loss to float32)."""
        value = self.loss(y, y_pred, sample_weight)
        for item in list(extra) or self.losses:
            value = value + ops.cast(item, value.dtype)
        return value

    def _after_update(self, step, loss, y, y_pred, sample_weight):
        for metric in self.metrics:
            if metric.name != "loss":  # the loss tracker gets the batch's mean once
                metric.update_state(y, y_pred, sample_weight=sample_weight)
        if self.recorder is not None:
            self.recorder.record(step, loss, y, y_pred)

    def _more(self, i, step):
        more = i < self.updates_per_batch
        return more if self.total_steps is None else ops.logical_and(more, step < self.total_steps)

    def _finish(self, x, loss_sum, count):
        batch = ops.cast(ops.shape(keras.tree.flatten(x)[0])[0], "float32")
        count = ops.cast(count, "float32")
        for tracker in [m for m in self.metrics if m.name == "loss"]:
            tracker.update_state(ops.cast(loss_sum, "float32") / ops.maximum(count, 1.0),
                                 sample_weight=count * batch)
        return self.get_metrics_result()

    def train_step(self, *args):
        if keras.backend.backend() == "jax":
            return self._train_step_jax(*args)
        if keras.backend.backend() == "torch":
            return self._train_step_torch(*args)
        return self._train_step_tensorflow(*args)

    def _train_step_tensorflow(self, data):
        import tensorflow as tf

        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        probe, variables = self.in_step_probe, self.trainable_variables

        def update():
            step = tf.identity(self.optimizer.iterations.value)  # read now, not after the update
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self._loss_value(y, y_pred, sw)
            self.optimizer.apply(tape.gradient(loss, variables), variables)
            self._after_update(step, loss, y, y_pred, sw)
            return tf.cast(loss, tf.float64)

        def trip(i, go, loss_sum):  # probe the weights of this step, then update if due
            if probe is not None:
                probe.maybe_probe()
            go = self._more(i, tf.convert_to_tensor(self.optimizer.iterations))
            loss = tf.cond(go, update, lambda: tf.constant(0.0, tf.float64))
            return i + tf.cast(go, tf.int32), go, loss_sum + loss

        count, _, loss_sum = tf.while_loop(lambda i, go, _: go, trip, (
            tf.constant(0), tf.constant(True), tf.constant(0.0, tf.float64)))
        return self._finish(x, loss_sum, count)

    def _train_step_torch(self, data):
        import torch

        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        probe, variables = self.in_step_probe, self.trainable_variables
        count, loss_sum = 0, 0.0
        while True:  # probe the weights of this step, then update if due
            if probe is not None:
                probe.maybe_probe()
            if not bool(self._more(count, ops.convert_to_tensor(self.optimizer.iterations))):
                break
            step = ops.copy(ops.convert_to_tensor(self.optimizer.iterations))
            self.zero_grad()
            y_pred = self(x, training=True)
            loss = self._loss_value(y, y_pred, sw)
            loss.backward()
            with torch.no_grad():
                self.optimizer.apply([v.value.grad for v in variables], variables)
            self._after_update(step, loss.detach(), y, y_pred.detach(), sw)
            count, loss_sum = count + 1, loss_sum + float(loss.detach())
        return self._finish(x, ops.convert_to_tensor(loss_sum), count)

    def _train_step_jax(self, state, data):
        import jax

        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        probe = self.in_step_probe
        groups = (self.trainable_variables, self.non_trainable_variables,
                  self.optimizer.variables, self.metrics_variables)

        def scoped(state, fn):
            """`fn()` with every variable read from `state`; its writes go into the state."""
            mapping = [(v, value) for vs, values in zip(groups, state)
                       for v, value in zip(vs, values)]
            with keras.StatelessScope(state_mapping=mapping) as scope:
                out = fn()
            return out, tuple([scope.get_current_value(v) for v in vs] for vs in groups)

        def iterations(state):
            return scoped(state, lambda: ops.convert_to_tensor(self.optimizer.iterations))[0]

        def update(state):
            state = _state.mirrored(self, state)
            trainable, non_trainable, opt, metrics = state
            step = iterations(state)

            def objective(trainable):
                def run():
                    y_pred, nt, extra = self.stateless_call(trainable, non_trainable, x,
                                                            training=True, return_losses=True)
                    return self._loss_value(y, y_pred, sw, extra), y_pred, nt

                (loss, y_pred, nt), new = scoped((trainable, non_trainable, opt, metrics), run)
                return loss, (y_pred, nt, new[3])

            (loss, (y_pred, non_trainable, metrics)), grads = jax.value_and_grad(
                objective, has_aux=True)(trainable)
            trainable, opt = self.optimizer.stateless_apply(opt, grads, trainable)
            state = scoped((trainable, non_trainable, opt, metrics),
                           lambda: self._after_update(step, loss, y, y_pred, sw))[1]
            return ops.cast(loss, "float32"), state

        def trip(carry):  # probe the weights of this step, then update if due
            i, _, loss_sum, state = carry
            if probe is not None:
                state = scoped(state, probe.maybe_probe)[1]
            go = self._more(i, iterations(state))
            loss, state = jax.lax.cond(go, update, lambda s: (ops.zeros((), "float32"), s), state)
            return i + ops.cast(go, "int32"), go, loss_sum + loss, state

        count, _, loss_sum, state = jax.lax.while_loop(lambda carry: carry[1], trip, (
            0, True, ops.zeros((), "float32"), tuple(list(s) for s in state)))
        logs, state = scoped(state, lambda: self._finish(x, loss_sum, count))
        return logs, state


class Progress(keras.callbacks.Callback):
    """A `keras.utils.Progbar` over the GD steps (with an ETA), updated at each epoch end,
    showing the training accuracy of the last step (a `StepRecorder`'s, else the logs')."""

    def __init__(self, total_steps, recorder=None):
        super().__init__()
        self.total, self.recorder, self.bar = int(total_steps), recorder, None

    def on_train_begin(self, logs=None):
        self.bar = keras.utils.Progbar(self.total, unit_name="step", stateful_metrics=["accuracy"])

    def on_epoch_end(self, epoch, logs=None):
        done = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        if self.recorder is not None and 0 < done <= self.recorder.num_steps:
            accuracy = float(self.recorder.accuracy[done - 1])
        else:
            accuracy = (logs or {}).get("accuracy")
        self.bar.update(min(done, self.total), [] if accuracy is None else [("accuracy", accuracy)])


class _FullBatch(keras.utils.PyDataset):
    """`(x, y)` as the one batch of an epoch (NumPy arrays given to `fit` would be cast to
    `floatx`, so a float64 run would lose its inputs' precision)."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.x, self.y


def full_batch_data(x, y):
    """`(x, y)` as every batch of `fit`, in its own dtype: on TensorFlow a repeated `tf.data`
    batch without autotuning (nothing to tune; its thread can stall `fit`'s end), elsewhere
    a one-batch `keras.utils.PyDataset`."""
    if keras.backend.backend() != "tensorflow":
        return _FullBatch(x, y)
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.from_tensors((x, y)).repeat().with_options(options)


Runner = collections.namedtuple("Runner", "model x y loss recorder in_step callbacks fit_kwargs")
Runner.__doc__ = """What `build_runner` returns: the compiled `FullBatchSequential`, the spiral
`(x, y)`, the dynamical loss, the `StepRecorder` and `InStepProbe` (or None), the callbacks
`fit` needs, and the other arguments of the one `fit` call (`model.fit(callbacks=...,
**fit_kwargs)`)."""


def build_runner(*, width, amplitude, period, steps, seed, data_seed, learning_rate, dtype,
                 record, probe_every, probe_ntk, updates_per_batch, jit_compile, loss,
                 accuracy_metric=False):
    """The Fig. 4 / width-study model that `train_spiral` fits, compiled (arguments as there;
    with `probe_every` the runner's probe, Hessian and NTK λ_max, Lanczos order 10, tolerance
    1e-3, warm start, runs inside the training loop as an `InStepProbe`)."""
    if dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            raise ValueError("Invalid value for argument `dtype`: float64 on JAX needs "
                             "`jax_enable_x64` (set JAX_ENABLE_X64=1). Received: dtype='float64'")
    x, y = spiral(seed=data_seed, dtype=dtype)
    num_classes = int(y.max()) + 1
    # The loss in the model's dtype (Keras losses default to float32).
    loss = spiral_loss(loss, num_classes, amplitude=amplitude, period=period,
                       static_after=max(steps - period, 0), dtype=dtype)
    recorder = StepRecorder(steps, dtype) if record else None
    model = build_mlp(width, num_classes, seed=seed, dtype=dtype, total_steps=steps,
                      updates_per_batch=updates_per_batch, recorder=recorder)
    # torch.compile cannot trace the loop's data-dependent stop: PyTorch runs it eagerly.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=loss,
                  metrics=["accuracy"] if accuracy_metric else [],
                  jit_compile=jit_compile and keras.backend.backend() != "torch")
    model.optimizer.build(model.trainable_variables)
    callbacks = [DynamicalLossScheduler(log_weights=False)]
    in_step = None
    if probe_every:
        from keras_dynloss.curvature import CurvatureProbe, InStepProbe

        probe = CurvatureProbe((x, y), every_n_steps=probe_every, ntk=probe_ntk,
                               lanczos_order=10, ntk_order=10)
        in_step = InStepProbe(probe, capacity=steps // probe_every + 1)
        in_step.build(model)
        model.in_step_probe = in_step
        callbacks.append(in_step)
    fit_kwargs = dict(x=full_batch_data(x, y), epochs=-(-steps // updates_per_batch),
                      steps_per_epoch=1, shuffle=False, verbose=0)
    return Runner(model, x, y, loss, recorder, in_step, callbacks, fit_kwargs)


def train_spiral(*, width=100, amplitude=70.0, period=5000, steps=70000, seed=0, data_seed=0,
                 learning_rate=1.0, dtype="float32", record=False, probe_every=0, probe_ntk=True,
                 updates_per_batch=None, jit_compile=True, progress=False, loss="ce",
                 validation_seed=None):
    """Full-batch GD on the spiral with the dynamical loss (last period static), one `fit`.

    Args:
        width: hidden units.
        amplitude: A (1 = the static loss).
        period: T in steps.
        steps: GD steps; Γ ≡ 1 from `steps - period` on.
        seed: seed of the initial weights.
        data_seed: seed of the spiral.
        learning_rate: η of `SGD`.
        dtype: "float32" or "float64".
        record: record F(t) and accuracy at every step (`StepRecorder`).
        probe_every: Hessian (and NTK) λ_max every this many steps; 0: none.
        probe_ntk: also probe the NTK.
        updates_per_batch: GD steps per compiled call (default: `ceil(steps / 20)`, about 20
            progress updates a run).
        jit_compile: compile the training loop with XLA (`model.compile`'s argument).
        progress: show a progress bar.
        loss: "ce", "mse", "dmse" or "dmse-componentwise" (`_losses.spiral_loss`).
        validation_seed: if given, `val_acc` is the final accuracy on
            `spiral(seed=validation_seed)`.

    Returns:
        A dict: `final_acc`, `final_loss`, `seconds`, the settings, and when recorded `loss` /
        `accuracy` (`(steps,)` arrays), `gamma_steps` / `gamma` (Γ at ~2000 steps), `probe`
        (the probe's history).
    """
    per_batch = updates_per_batch or max(1, -(-steps // 20))
    runner = build_runner(width=width, amplitude=amplitude, period=period, steps=steps, seed=seed,
                          data_seed=data_seed, learning_rate=learning_rate, dtype=dtype,
                          record=record, probe_every=probe_every, probe_ntk=probe_ntk,
                          updates_per_batch=min(per_batch, steps), jit_compile=jit_compile,
                          loss=loss, accuracy_metric=progress and not record)
    model, x, y, recorder = runner.model, runner.x, runner.y, runner.recorder
    callbacks = runner.callbacks + ([Progress(steps, recorder)] if progress else [])
    start = time.perf_counter()
    model.fit(callbacks=callbacks, **runner.fit_kwargs)
    seconds = time.perf_counter() - start
    logits = ops.convert_to_numpy(model(x, training=False))
    final_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)(y, logits)
    out = dict(final_acc=float(np.mean(np.argmax(logits, -1) == y)),
               final_loss=float(ops.convert_to_numpy(final_loss)), seconds=seconds, steps=steps,
               width=width, amplitude=float(amplitude), period=period, seed=seed, dtype=dtype,
               learning_rate=learning_rate)
    if validation_seed is not None:
        x_val, y_val = spiral(seed=validation_seed, dtype=dtype)
        val_logits = ops.convert_to_numpy(model(x_val, training=False))
        out["val_acc"] = float(np.mean(np.argmax(val_logits, -1) == y_val))
    if recorder is not None:
        out["loss"], out["accuracy"] = recorder.loss, recorder.accuracy
        out["gamma_steps"] = np.unique(np.linspace(0, steps - 1, 2001).astype(np.int64))
        out["gamma"] = runner.loss.schedule.weights_at(out["gamma_steps"], dtype=dtype)
    if runner.in_step is not None:
        out["probe"] = {k: list(v) for k, v in runner.in_step.probe.history.items()}
    return out
