"""`InStepProbe`: a `CurvatureProbe` run inside the training step."""

import keras
import numpy as np
from keras import ops

from keras_dynloss import _checks, _compat, backend
from keras_dynloss.curvature import eos
from keras_dynloss.curvature.lanczos import krylov_dtype
from keras_dynloss.curvature.probe import CurvatureProbe
from keras_dynloss.curvature.program import filled, xla_cpu_warning


class ProbeState(keras.metrics.Metric):
    """The variables of an `InStepProbe`, in `model.metrics_variables`; never reset."""

    def __init__(self, spec, sizes, capacity, last=-1):
        super().__init__(name="in_step_probe")

        def add(name, shape, dtype, value=0):
            return self.add_variable(shape=shape, dtype=dtype, name=name,
                                     initializer=keras.initializers.Constant(value),
                                     aggregation="only_first_replica")

        rows = (capacity + 1,)  # the last: scratch
        # rows since the flush, due probes missed, probes taken
        self.count, self.missed, self.total = (add(n, (), "int32")
                                               for n in ("count", "missed", "total"))
        self.last = add("last", (), "int32", last)  # the step last probed
        self.steps = add("steps", rows, "int32")
        self.rates = add("learning_rates", rows, krylov_dtype())
        self.buffers = [add(f"result_{i}", rows + tuple(s.shape), s.dtype)
                        for i, s in enumerate(keras.tree.flatten(spec))]
        self.starts = {name: add(f"start_{i}", (n,), krylov_dtype())
                       for i, (name, n) in enumerate(sizes.items())}

    def update_state(self, *args, **kwargs):
        """Unused: `InStepProbe.maybe_probe` writes the variables."""

    def reset_state(self):
        """Kept across epochs."""

    def result(self):
        return {}


def _write_row(variable, row, value):
    """`variable[row] = value` in place (a copy of the whole buffer per step would not be)."""
    if backend.name() == "tensorflow":
        variable.value.scatter_nd_update(ops.reshape(row, (1, 1)), value[None])
    elif backend.name() == "torch":
        with __import__("torch").no_grad():
            variable.value[row] = value
    else:  # JAX: a dynamic-update-slice of the step's state
        start = (row,) + (row * 0,) * len(value.shape)
        variable.assign(ops.slice_update(variable.value, start, value[None]))


class InStepProbe(keras.callbacks.Callback):
    """Runs `probe` inside a compiled training step (the curvature guide).

    The step calls `maybe_probe()`; a due probe writes a row of buffers (`capacity + 1` rows),
    `flush()` records them. JAX: call it in a `keras.StatelessScope` of the step's values.

    Args:
        probe: a `CurvatureProbe` with `every_n_steps` and a fixed batch `(x, y)`; its
            options apply and its `history` receives the values.
        capacity: the most probes between two flushes (an epoch's, with `in_step` in
            `callbacks`), e.g. `steps_per_epoch // every_n_steps + 2`. A probe due while the
            buffers are full is not taken: it is counted, and the next `flush` raises.

    Example:
        >>> in_step = InStepProbe(CurvatureProbe((x, y), every_n_steps=25), capacity=200)
        >>> in_step.build(model); model.in_step_probe = in_step   # FullBatchSequential
        >>> model.fit(data, epochs=20, callbacks=[in_step])
    """

    def __init__(self, probe, *, capacity):
        super().__init__()
        if not isinstance(probe, CurvatureProbe) or probe.every_n_steps is None:
            raise _checks.invalid("probe", "a CurvatureProbe with `every_n_steps`", probe)
        self.probe, self.capacity = probe, _checks.check_int("capacity", capacity, minimum=1)
        self._program = self._state = None

    @property
    def history(self):
        """The probe's `history`."""
        return self.probe.history

    def build(self, model):
        """Builds the probe for `model` and attaches its `ProbeState`; call before `fit`."""
        program = self.probe.build_for(model)
        if program is self._program:
            return
        self.probe._warn_once("xla-cpu", xla_cpu_warning(
            model, model.jit_compile, "the model's jit-compiled training step"))
        self._program, self._optimizer = program, self.probe.optimizer_in_use()
        start = int(ops.convert_to_numpy(self._optimizer.iterations))
        self._state = ProbeState(program.spec, program.sizes, self.capacity,
                                 -1 if self.probe.probe_at_start else start)
        _compat.track(model, "_keras_dynloss_in_step_probe", self._state)  # in model.metrics
        if getattr(model, "train_function", None) is not None:
            model.make_train_function(force=True)
        self._offset = self.probe.probes_taken

    def maybe_probe(self):
        """Probes now if the step is due and not yet probed (graph code in a compiled step)."""
        if self._state is None:
            raise _checks.invalid("model", "an InStepProbe built for it (`in_step.build(model)` "
                                  "after compile)", None)
        if backend.name() == "tensorflow":  # graph code already: AutoGraph must not convert it
            return __import__("tensorflow").autograph.experimental.do_not_convert(
                self._maybe_probe)()
        return self._maybe_probe()

    def _maybe_probe(self):
        probe, program, state = self.probe, self._program, self._state
        step = ops.cast(ops.convert_to_tensor(self._optimizer.iterations), "int32")
        count, last = ops.convert_to_tensor(state.count), ops.convert_to_tensor(state.last)
        due = ops.logical_and(ops.equal(step % probe.every_n_steps, 0), ops.not_equal(step, last))
        take = ops.logical_and(due, count < self.capacity)
        if backend.name() == "torch" and not bool(due):  # eager: nothing to write
            return
        starts = ({k: ops.convert_to_tensor(v) for k, v in state.starts.items()}
                  if probe.warm_start else program.zero_starts())

        def run():
            flat, (x, y, sw) = program.flat, probe._batch
            total = ops.convert_to_tensor(state.total) + self._offset
            seed = ops.stack([ops.convert_to_tensor(probe.seed, "int32"), total])
            return program.fn(flat.flatten(flat.model.trainable_variables), flat.non_trainable(),
                              x, y, sw, starts, seed, step, program.moments())

        results, nexts = ops.cond(take, run, lambda: (filled(program.spec, 0.0), starts))
        row = ops.where(take, count, self.capacity)
        for variable, value in zip(state.buffers, keras.tree.flatten(results)):
            _write_row(variable, row, value)
        _write_row(state.steps, row, step)
        if program.kind is not None:
            rate = ops.cast(eos.learning_rate(self._optimizer), krylov_dtype())
            _write_row(state.rates, row, rate)
        if probe.warm_start:
            for name, value in nexts.items():
                state.starts[name].assign(value)
        state.count.assign(count + ops.cast(take, "int32"))
        state.total.assign(ops.convert_to_tensor(state.total) + ops.cast(take, "int32"))
        state.last.assign(ops.where(take, step, last))
        missed = ops.cast(ops.logical_and(due, ops.logical_not(take)), "int32")
        state.missed.assign(ops.convert_to_tensor(state.missed) + missed)

    def flush(self):
        """Records the buffered probes and empties the buffer; returns the last values. Raises
        `ValueError` if due probes found the buffer full."""
        if self._state is None:
            return {}
        model = self._program.flat.model
        if hasattr(model, "jax_state_sync"):  # JAX: the step's state back into the variables
            model.jax_state_sync()
        state = self._state
        count, missed = (int(ops.convert_to_numpy(v)) for v in (state.count, state.missed))
        steps, rates, *buffers = (ops.convert_to_numpy(v)[:count]
                                  for v in (state.steps, state.rates, *state.buffers))
        values = {}
        for i, step in enumerate(steps):
            results = keras.tree.pack_sequence_as(self._program.spec, [b[i] for b in buffers])
            rate = rates[i] if self._program.kind is not None else None
            values = self.probe.record(results, step=int(step), learning_rate=rate)
        state.count.assign(np.zeros((), "int32"))  # the buffer is free again
        if missed:
            state.missed.assign(np.zeros((), "int32"))
            raise _checks.invalid("capacity", f"room for every due probe ({missed} found the "
                                  "buffer full and were not taken)", self.capacity)
        return values

    def on_train_begin(self, logs=None):
        self.probe.open_writer(self)

    def on_epoch_begin(self, epoch, logs=None):
        self.probe.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.flush()
        self.probe.on_epoch_end(epoch, logs)  # the latest values into `logs`, TensorBoard flushed

    def on_train_end(self, logs=None):
        self.flush()
        self.probe.on_train_end(logs)
