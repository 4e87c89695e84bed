"""K gradient-descent updates per `fit` batch as one compiled loop, with plug-ins."""

import itertools

import keras
import numpy as np
from keras import ops

from keras_dynloss import _state
from keras_dynloss._checks import check_int

__all__ = ["FullBatchSequential", "StepRecorder", "full_batch_data"]


class StepRecorder(keras.metrics.Metric):
    """F(t) and the training accuracy of the first `num_steps` steps: row t of a
    `(num_steps + 1, 2)` buffer of `dtype` (later steps go to the last row, dropped); a metric,
    never reset, that logs nothing, so that every backend's trainer carries it in the compiled
    step."""

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
    """A `Sequential` whose training step runs up to K ordinary `fit` steps on one batch as one
    loop (`keras.ops.while_loop`; `lax.while_loop` on JAX). Each trip calls
    `in_step_probe.maybe_probe()` (an `InStepProbe`, set after `compile`), updates the weights
    while the batch and the run (`total_steps` updates, or None) last, then calls
    `recorder.record(...)` (a `StepRecorder` or None). `updates_per_batch`: K >= 1.
    """

    def __init__(self, layers=None, *, updates_per_batch=1, total_steps=None, recorder=None,
                 **kwargs):
        super().__init__(layers, **kwargs)
        self.updates_per_batch = check_int("updates_per_batch", updates_per_batch, minimum=1)
        self.total_steps = check_int("total_steps", total_steps, minimum=1, allow_none=True)
        self.recorder = recorder
        self.in_step_probe = None

    def _loss_value(self, y, y_pred, sample_weight, extra=()):
        """The loss plus added losses in its own dtype (`compute_loss` casts to float32)."""
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
    """`(x, y)` as every batch of `fit`, in its own dtype (`fit` casts NumPy to `floatx`); on
    TensorFlow a `tf.data` batch without autotuning (its thread can stall `fit`'s end)."""
    if keras.backend.backend() != "tensorflow":
        return ((x, y) for _ in itertools.count())
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.from_tensors((x, y)).repeat().with_options(options)
