"""The spiral setup of the paper (Fig. 4 and the width study), trained with one `fit` call.

Dense(width)-ReLU-Dense(C) with jax `stax.Dense` initialisation, full-batch gradient descent
(`SGD(1.0)`) on the 300 spiral points, Γ(t) triangular with period T and the last period
static. `FullBatchSequential` runs K gradient-descent updates per `fit` batch as one compiled
loop; `StepRecorder` keeps F(t) and the accuracy of every step, and an `InStepProbe` measures
the curvature inside the same loop (plug-ins: no per-step Python).
"""

import collections
import itertools
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
           "full_batch_data"]


def build_mlp(width, num_classes=3, *, seed=0, dtype="float32", inputs=2, **kwargs):
    """Dense(width)-ReLU-Dense(C) initialised as jax's `stax.Dense`, drawn in NumPy from `seed`
    (the same weights on every backend): Glorot-normal kernels (a normal truncated at ±2,
    variance 2 / (fan_in + fan_out)) and normal(0, 0.01²) biases. `kwargs` go to
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


class StepRecorder(keras.metrics.Metric):
    """F(t) and the training accuracy of every step, in one preallocated buffer.

    Row t of a `(num_steps + 1, 2)` variable holds `(F(t), accuracy(t))` of the step's forward
    pass (steps >= `num_steps` go to the last row, dropped). A metric that is never reset and
    logs nothing, so that every backend's trainer carries it in the compiled step.

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
        """Writes `(loss, accuracy of y_pred)` into row `min(step, num_steps)`, in place."""
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        hits = ops.cast(ops.argmax(y_pred, -1) == labels, self.dtype)
        row = ops.minimum(ops.cast(step, "int32"), self.num_steps)
        values = ops.stack([ops.cast(loss, self.dtype), ops.mean(hits)])
        if keras.backend.backend() == "tensorflow":
            self.buffer.value.scatter_nd_update(ops.reshape(row, (1, 1)), values[None])
        elif keras.backend.backend() == "torch":
            with __import__("torch").no_grad():
                self.buffer.value[row] = values
        else:  # JAX: a dynamic-update-slice of the loop-carried state, in place under jit
            self.buffer.assign(ops.slice_update(self.buffer.value, (row, row * 0), values[None]))

    def update_state(self, *args, **kwargs):  # the training loop calls `record`
        pass

    def reset_state(self):  # kept across epochs
        pass

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

    With full-batch data K updates on one batch are K ordinary `fit` steps (forward pass, loss
    with Γ(t) from `optimizer.iterations`, gradient, `optimizer.apply`, metrics) run as one
    loop: `tf.while_loop` (XLA with `jit_compile=True`), `lax.while_loop` on JAX, Python on
    PyTorch. Each trip calls `in_step_probe.maybe_probe()` (an `InStepProbe`, set after
    `compile`) at the current weights, then updates them while the batch and the run last,
    then calls `recorder.record(...)`. `total_steps` stops the last batch early.

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
        return self._train_step_stateful(*args)

    def _update(self, x, y, sw):
        """One gradient-descent update (TensorFlow or PyTorch); returns its loss, float64."""
        variables = self.trainable_variables
        step = ops.copy(ops.convert_to_tensor(self.optimizer.iterations))  # before the update
        if keras.backend.backend() == "torch":
            import torch

            self.zero_grad()
            y_pred = self(x, training=True)
            loss = self._loss_value(y, y_pred, sw)
            loss.backward()
            with torch.no_grad():
                self.optimizer.apply([v.value.grad for v in variables], variables)
            loss, y_pred = loss.detach(), y_pred.detach()
        else:
            import tensorflow as tf

            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self._loss_value(y, y_pred, sw)
            self.optimizer.apply(tape.gradient(loss, variables), variables)
        self._after_update(step, loss, y, y_pred, sw)
        return ops.cast(loss, "float64")

    def _train_step_stateful(self, data):
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)

        def trip(i, go, loss_sum):  # probe the weights of this step, then update if due
            if self.in_step_probe is not None:
                self.in_step_probe.maybe_probe()
            go = self._more(i, ops.convert_to_tensor(self.optimizer.iterations))
            loss = ops.cond(go, lambda: self._update(x, y, sw), lambda: ops.zeros((), "float64"))
            return i + ops.cast(go, "int32"), go, loss_sum + loss

        count, _, loss_sum = ops.while_loop(
            lambda i, go, _: go, trip, (ops.zeros((), "int32"), True, ops.zeros((), "float64")))
        return self._finish(x, loss_sum, count)

    def _train_step_jax(self, state, data):
        import jax

        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
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
            trainable, non_trainable, opt, metrics = state = _state.mirrored(self, state)
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
            if self.in_step_probe is not None:
                state = scoped(state, self.in_step_probe.maybe_probe)[1]
            go = self._more(i, iterations(state))
            loss, state = jax.lax.cond(go, update, lambda s: (ops.zeros((), "float32"), s), state)
            return i + ops.cast(go, "int32"), go, loss_sum + loss, state

        count, _, loss_sum, state = jax.lax.while_loop(lambda carry: carry[1], trip, (
            0, True, ops.zeros((), "float32"), tuple(list(s) for s in state)))
        return scoped(state, lambda: self._finish(x, loss_sum, count))


def full_batch_data(x, y):
    """`(x, y)` as every batch of `fit`, in its own dtype (NumPy arrays given to `fit` would be
    cast to `floatx`): on TensorFlow a repeated `tf.data` batch without autotuning (its thread
    can stall `fit`'s end), elsewhere a generator."""
    if keras.backend.backend() != "tensorflow":
        return ((x, y) for _ in itertools.count())
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.from_tensors((x, y)).repeat().with_options(options)


#: `build_runner`'s result: `model.fit(callbacks=callbacks, **fit_kwargs)` trains the run.
Runner = collections.namedtuple("Runner", "model x y loss recorder callbacks fit_kwargs")


def build_runner(*, width=100, amplitude=70.0, period=5000, steps=70000, seed=0, data_seed=0,
                 learning_rate=1.0, dtype="float32", record=False, probe_every=0,
                 probe_ntk=True, updates_per_batch=None, jit_compile=True, loss="ce",
                 progress=False):
    """The compiled spiral model of one run and the arguments of its one `fit` call.

    Args:
        width: hidden units.
        amplitude: A (1 = the static loss).
        period: T in steps.
        steps: GD steps; Γ ≡ 1 from `steps - period` on.
        seed, data_seed: seeds of the initial weights and of the spiral.
        learning_rate: η of `SGD`.
        dtype: "float32" or "float64" (on JAX float64 needs `jax_enable_x64`).
        record: record F(t) and accuracy at every step (`StepRecorder`).
        probe_every: Hessian (and NTK) λ_max every this many steps, in the training loop (an
            `InStepProbe`: Lanczos order 10, warm starts); 0: none.
        probe_ntk: also probe the NTK.
        updates_per_batch: GD steps per compiled call (default `ceil(steps / 20)`).
        jit_compile: compile the loop with XLA (not on PyTorch, whose loop runs eagerly).
        loss: "ce", "mse", "dmse" or "dmse-componentwise" (`_losses.spiral_loss`).
        progress: a `keras.utils.Progbar` over the steps (with an ETA and the last step's
            accuracy) among the callbacks.

    Returns:
        A `Runner(model, x, y, loss, recorder, callbacks, fit_kwargs)`.
    """
    if dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            raise ValueError("Invalid value for argument `dtype`: float64 on JAX needs "
                             "`jax_enable_x64` (set JAX_ENABLE_X64=1). Received: dtype='float64'")
    x, y = spiral(seed=data_seed, dtype=dtype)
    num_classes = int(y.max()) + 1
    loss = spiral_loss(loss, num_classes, amplitude=amplitude, period=period,
                       static_after=max(steps - period, 0), dtype=dtype)
    recorder = StepRecorder(steps, dtype) if record else None
    per_batch = min(updates_per_batch or -(-steps // 20), steps)
    model = build_mlp(width, num_classes, seed=seed, dtype=dtype, total_steps=steps,
                      updates_per_batch=per_batch, recorder=recorder)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=loss,
                  metrics=["accuracy"] if progress and not record else [],
                  jit_compile=jit_compile and keras.backend.backend() != "torch")
    model.optimizer.build(model.trainable_variables)
    callbacks = [DynamicalLossScheduler(log_weights=False)]
    if probe_every:
        from keras_dynloss.curvature import CurvatureProbe, InStepProbe

        probe = CurvatureProbe((x, y), every_n_steps=probe_every, ntk=probe_ntk,
                               lanczos_order=10, ntk_order=10)
        model.in_step_probe = InStepProbe(probe, capacity=steps // probe_every + 1)
        model.in_step_probe.build(model)
        callbacks.append(model.in_step_probe)
    if progress:
        bar = keras.utils.Progbar(steps, unit_name="step", stateful_metrics=["accuracy"])

        def show(epoch, logs):
            done = min(int(ops.convert_to_numpy(model.optimizer.iterations)), steps)
            accuracy = recorder.accuracy[done - 1] if recorder else logs.get("accuracy")
            bar.update(done, [("accuracy", float(accuracy))])

        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=show))
    fit_kwargs = dict(x=full_batch_data(x, y), epochs=-(-steps // per_batch), steps_per_epoch=1,
                      shuffle=False, verbose=0)
    return Runner(model, x, y, loss, recorder, callbacks, fit_kwargs)


def train_spiral(*, validation_seed=None, **kwargs):
    """Full-batch GD on the spiral with the dynamical loss (last period static), one `fit`.

    Args:
        validation_seed: if given, `val_acc` is the final accuracy on
            `spiral(seed=validation_seed)`.
        **kwargs: as for `build_runner`.

    Returns:
        A dict: `final_acc`, `final_loss` (the cross-entropy of the final logits), `seconds`
        of `fit`, `val_acc`; when recorded `loss` / `accuracy` (`(steps,)` arrays) and
        `gamma_steps` / `gamma` (Γ at about 2000 steps); with probes `probe` (its history).

    Example:
        >>> out = train_spiral(width=8, steps=200, period=50)
    """
    runner = build_runner(**kwargs)
    model, x, y, dtype = runner.model, runner.x, runner.y, runner.x.dtype.name
    start = time.perf_counter()
    model.fit(callbacks=runner.callbacks, **runner.fit_kwargs)
    seconds = time.perf_counter() - start

    def accuracy(x, y):
        return float(np.mean(np.argmax(ops.convert_to_numpy(model(x)), -1) == y))

    logits = model(x)
    final_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)
    out = dict(final_acc=accuracy(x, y), seconds=seconds,
               final_loss=float(ops.convert_to_numpy(final_loss(y, logits))))
    if validation_seed is not None:
        out["val_acc"] = accuracy(*spiral(seed=validation_seed, dtype=dtype))
    if runner.recorder is not None:
        steps = runner.recorder.num_steps
        out["loss"], out["accuracy"] = runner.recorder.loss, runner.recorder.accuracy
        out["gamma_steps"] = np.unique(np.linspace(0, steps - 1, 2001).astype(np.int64))
        out["gamma"] = runner.loss.schedule.weights_at(out["gamma_steps"], dtype=dtype)
    if model.in_step_probe is not None:
        out["probe"] = {k: list(v) for k, v in model.in_step_probe.probe.history.items()}
    return out
