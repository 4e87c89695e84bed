"""`InStepProbe`: a `CurvatureProbe` compiled into the training step itself.

The callback path runs each probe as its own compiled call from a batch hook:
Keras then runs Python after every batch, and the probe pays a launch and a
host round trip. A custom `train_step` (or a `tf.function` training loop) can
instead call `InStepProbe.maybe_probe()` where the parameters are current
(e.g. before each update and after the last one): when
`optimizer.iterations` is a multiple of `every_n_steps` not yet probed, the
probe graph (`ProbeGraph.compute`: the same Lanczos, warm start, tolerance and
seeds as the callback) runs inside the step, with XLA if the step is compiled,
and writes its summary into a preallocated float64 buffer `(capacity,
summary_size)`. Nothing is read back until an epoch ends: then the new rows
are unpacked into the probe's `history` / `latest` / CSV exactly as
`CurvatureProbe.probe` records them (the step of each row is the step it was
taken at).

Memory: the buffer (`capacity x summary_size` float64, ~10 numbers per probe
for `lambda_max`) and the warm start (`n` float64) besides the probe itself.
A probe due when the buffer is full is not taken; the count of those is
checked at every flush and raises, so no value is lost silently.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss.curvature import _probe_setup
from keras_dynloss.curvature.callback import CurvatureProbe


class InStepProbe(keras.callbacks.Callback):
    """Runs `probe` inside a compiled training step (see the module docstring).

    Args:
        probe: a `CurvatureProbe` with `every_n_steps` and a fixed batch
            `(x, y)`; its options (order, tolerance, warm start, NTK, ...)
            apply, its `history` receives the values.
        capacity: most probes this object holds (e.g. `steps // every_n_steps
            + 1` for a run from step 0).

    Use: `in_step.build(model)` after `compile` (the optimizer and loss must
    exist), call `in_step.maybe_probe()` in the train step wherever the
    parameters are those of step `optimizer.iterations`, and pass `in_step`
    in `callbacks` (it flushes at each epoch end and at train end; or call
    `flush()`). The compiled step keeps the probe graph it was traced with:
    build after the loss's schedule is final (a schedule replaced later, e.g.
    by `DynamicalLossScheduler(period_epochs=...)`, needs the callback path).
    """

    def __init__(self, probe, *, capacity):
        super().__init__()
        if not isinstance(probe, CurvatureProbe):
            raise val.invalid("probe", "a keras_dynloss.curvature.CurvatureProbe", probe)
        if probe.every_n_steps is None:
            raise val.invalid("probe", "a CurvatureProbe with `every_n_steps` (probes by step)", probe)
        self.probe = probe
        self.capacity = val.check_int("capacity", capacity, minimum=1)
        self._graph = None

    def build(self, model):
        """Builds the probe graph for `model` and the buffers; call before `fit`."""
        graph = self.probe.build_for(model)
        message = getattr(model, "jit_compile", False) and _probe_setup.xla_cpu_convolution_warning(
            model, "the model's jit-compiled training step")
        if message:
            self.probe._warn_once("xla-cpu-convolution", message)
        if graph is self._graph:
            return
        self._graph = graph
        self._x, self._y, self._sw = self.probe.probe_batch()
        with tf.init_scope():
            self._starts = tf.Variable(graph.initial_starts(), trainable=False, name="probe_starts")
            self._buffer = tf.Variable(tf.zeros([self.capacity, graph.summary_size], tf.float64),
                                       trainable=False, name="probe_buffer")
            self._steps = tf.Variable(tf.zeros([self.capacity], tf.int64), trainable=False, name="probe_steps")
            self._count = tf.Variable(0, dtype=tf.int32, trainable=False, name="probe_count")
            self._missed = tf.Variable(0, dtype=tf.int32, trainable=False, name="probe_missed")
            # The step last probed; the starting step counts as probed without
            # `probe_at_start`.
            start = int(tf.convert_to_tensor(self.probe.optimizer_in_use().iterations).numpy())
            self._last = tf.Variable(-1 if self.probe.probe_at_start else start, dtype=tf.int64,
                                     trainable=False, name="probe_last_step")
        self._flushed = 0
        self._seed_offset = self.probe.probes_taken  # seeds continue the probe's own count

    @tf.autograph.experimental.do_not_convert  # the probe is graph code: no AutoGraph from a converted caller
    def maybe_probe(self):
        """Graph code: probes now if the step is due and not yet probed."""
        if self._graph is None:
            raise val.invalid("model", "an InStepProbe built for it (`in_step.build(model)` after compile)",
                              None)
        opt = self.probe.optimizer_in_use()
        step = tf.cast(tf.convert_to_tensor(opt.iterations), tf.int64)
        due = tf.logical_and(tf.equal(step % self.probe.every_n_steps, 0), tf.not_equal(step, self._last))
        full = self._count >= self.capacity

        def take():
            i = self._count
            seed = tf.stack([tf.constant(self.probe.seed, tf.int64), tf.cast(i + self._seed_offset, tf.int64)])
            starts = self._starts if self.probe.warm_start else self._graph.initial_starts()
            summary, next_starts = self._graph.compute(self._x, self._y, self._sw, tf.convert_to_tensor(starts),
                                                       seed)
            return tf.group(self._starts.assign(next_starts),
                            self._buffer.scatter_nd_update([[i]], summary[None]),
                            self._steps.scatter_nd_update([[i]], step[None]),
                            self._last.assign(step), self._count.assign_add(1))

        def skip():
            return tf.group(self._missed.assign_add(tf.cast(tf.logical_and(due, full), tf.int32)))

        return tf.cond(tf.logical_and(due, tf.logical_not(full)), take, skip)

    def flush(self):
        """Records the buffered probes into `probe.history`; returns the last values."""
        if self._graph is None:
            return {}
        count = int(self._count.numpy())
        missed = int(self._missed.numpy())
        if missed:
            raise RuntimeError(
                f"InStepProbe: {missed} due probe(s) were not taken because the buffer was full. Increase "
                f"`capacity` (received capacity={self.capacity}).")
        rows, steps = self._buffer[self._flushed:count].numpy(), self._steps[self._flushed:count].numpy()
        values = {}
        for row, step in zip(rows, steps):
            values = self.probe.record_summary(np.asarray(row), step=int(step))
        self._flushed = count
        return values

    # ------------------------------------------------------------------ #
    def on_epoch_begin(self, epoch, logs=None):
        self.probe.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        values = self.flush()
        if logs is not None and values:
            logs.update(values)

    def on_train_end(self, logs=None):
        self.flush()
