"""`CurvatureProbe`: Hessian / Gauss-Newton / NTK spectra during training."""

import keras
import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss.curvature import _records
from keras_dynloss.curvature import data as data_lib
from keras_dynloss.curvature import errors
from keras_dynloss.curvature import hessian
from keras_dynloss.curvature._probe_setup import EOS_RATIO, ProbeSetup

__all__ = ["CurvatureProbe", "EOS_RATIO"]


class CurvatureProbe(ProbeSetup, keras.callbacks.Callback):
    """Measures curvature on a probe batch every N steps (or epochs).

    Each probe is one compiled `tf.function` call that, at the current
    parameters, runs (all loops in-graph, one Lanczos implementation, one
    Hutchinson, see `krylov`):

    * Lanczos on the loss Hessian `H` (or the Gauss-Newton `G`,
      `operator="gauss_newton"`) of the probe batch -> top-`top_k` eigenvalues,
      warm-started from the previous probe's top Ritz vectors plus a random
      component, stopped once the top-`top_k` residuals are below `tol`
      relative (at most `lanczos_order` products);
    * with `per_layer`, the same for each layer's diagonal block;
    * with `trace`, `trace_samples` Hutchinson products -> `tr(H)`, stderr;
    * with `ntk`, Lanczos on the empirical NTK (matrix free, a VJP and its
      transpose per output channel; traced over outputs by default) -> NTK
      `lambda_max`;
    * for `eos_ratio` under Adam/AdamW, Lanczos on `P^-1/2 H P^-1/2`.

    Keys written into `logs` (progress bar, `History`, `CSVLogger`,
    `TensorBoard`) and kept in `history`, with `<op>` = `hessian` or
    `gauss_newton`:

    | key | value |
    |---|---|
    | `<op>_max_eig` | top eigenvalue `lambda_1` (Ritz value) |
    | `<op>_eig_2` .. `<op>_eig_k` | next ones when `top_k > 1` |
    | `<op>_max_eig_residual` | `||A u - lambda_1 u||`: bounds `|lambda_1 - eig|` |
    | `<op>_matvecs` | products this probe used for `lambda_1..k` |
    | `<op>_max_eig/<layer>`, `..._residual/<layer>` | per layer (`per_layer`) |
    | `<op>_trace`, `<op>_trace_stderr` | Hutchinson `tr(A)` (if `trace`) |
    | `ntk_max_eig`, `ntk_max_eig_residual`, `ntk_matvecs` | NTK (if `ntk`) |
    | `eos_ratio` | curvature / stability threshold of the optimizer (see `eos`): `lambda_1 eta / (2 + 2 mu)` for SGD with momentum `mu`; `lambda_max(P^-1 H) (1 - beta_1) eta / (2 + 2 beta_1)` for Adam/AdamW |
    | `preconditioned_max_eig` (+ `_residual`) | `lambda_max(P^-1 H)` (Adam/AdamW) |

    Exact vs stochastic: Lanczos values are deterministic for a fixed batch
    and trustworthy to their residual; `trace` is a Hutchinson estimate
    (report it with its stderr). With `data` a `tf.data.Dataset`, every probe
    draws the next batch (a fresh sample): the values are then stochastic
    estimates of the curvature of the expected loss (`stochastic` is True,
    `history["probe_batch"]` counts the batches drawn).

    On a probing batch the values go into that batch's `logs`; at every epoch
    end the latest values go into the epoch `logs`. Place `CurvatureProbe`
    *before* `CSVLogger` / `TensorBoard` (Keras calls callbacks in list order
    and appends `History` and the progress bar last). `history` (a dict of
    lists) also holds `"step"` (the true step, `optimizer.iterations`: the
    updates applied before the probe) and `"epoch"`. With
    `steps_per_execution > 1` the probe runs at the first batch hook at or
    after each multiple of `every_n_steps` and records the true step.

    The probe never changes training: it reads the variables and evaluates the
    model with `stateless_call` (inference mode by default), discarding any
    state update; it writes no variable and uses no global RNG. When the loss
    object or its `schedule` changes (e.g. `DynamicalLossScheduler(
    period_epochs=k)` sets a new period at `fit` start), the probe is rebuilt
    (and its warm start reset) before its next run; put the scheduler first
    in `callbacks` so that the probe at train begin already sees the change.
    A dynamical loss not yet bound to a step is probed at the optimizer's. Under mixed precision
    every product is computed in float32 (see `FlatParameters.full_precision`);
    the Krylov loops run in float64.

    Custom training loops: call `probe.probe(model)` yourself, e.g. every 25
    steps; the step recorded is `optimizer.iterations` (give `optimizer=` for
    an uncompiled model, or `step=` to `probe`). Several devices: under a
    `MirroredStrategy` (one machine) the products run on every replica on its
    shard of the probe batch and are summed across replicas (`distributed`);
    under a multi-worker strategy the probe uses no collective: each worker
    computes the same value from the same replicated weights and batch, so
    calling it on the chief only is correct and blocks no other worker.

    Args:
        data: probe batch `(x, y)` / `(x, y, sample_weight)`, or a
            `tf.data.Dataset` of equal-size batches (a fresh one per probe;
            re-iterated when exhausted).
        every_n_steps: probe when the step crosses a multiple of this.
        every_n_epochs: probe at the end of every N-th epoch (default 1 when
            `every_n_steps` is not given). Give at most one of the two.
        loss: loss to differentiate; default `model.loss`.
        operator: `"hessian"` (default) or `"gauss_newton"`.
        variables: `None` (all trainable variables) or variables/layers.
        per_layer: also the top eigenvalue of each layer's block (the model's
            direct `layers` that have trainable variables).
        top_k: number of eigenvalues (`1 <= top_k <= lanczos_order`).
        lanczos_order: most products per Lanczos run.
        tol: relative residual that stops a Lanczos run; `None` runs all
            `lanczos_order` steps.
        warm_start: start from the previous probe's Ritz vectors.
        warm_start_noise: weight of the random unit vector added to a warm
            start (so that a new top direction is found).
        trace: also estimate `tr(A)` (Hutchinson, `trace_samples` vectors).
        trace_samples: Hutchinson probe vectors per probe.
        ntk: also compute the NTK `lambda_max` (`ntk_order` most products).
        ntk_order: most NTK products per probe.
        ntk_trace_outputs: traced `(N, N)` NTK (default) or full `(N*K, N*K)`.
        eos_ratio: log `eos_ratio` (SGD, Adam, AdamW).
        probe_at_start: also probe at train begin.
        hvp_mode: `"reverse_over_reverse"` (default: forward pass and gradient
            recorded once per probe, kept for its products) or
            `"forward_over_reverse"` (a forward pass per product: slower, less
            memory; see the README's performance table).
        micro_batch_size: compute every product over sub-batches of this
            many samples, one at a time (less memory, a forward pass per
            sub-batch; see `micro_batches`). `"auto"` (default): a quarter of
            the probe batch (equal sub-batches) when one forward pass on it
            holds more than 32 MiB of activations and `training=False`, else
            the whole batch (`micro_batches.auto_batch_size`; the size in use is
            `build_for(model).micro_batch_size`). `None`: never split. Under
            a `MirroredStrategy` the replicas' shards are the split.
        training: evaluate the model in training mode (default `False`).
        seed: seed of the random start vectors and Hutchinson probes.
        optimizer: optimizer giving the step and `eos_ratio`; default
            `model.optimizer` (a `LossScaleOptimizer` is looked through).
        csv_path: stream each probe as one CSV row to this file (flushed per
            probe) instead of keeping `history` (overwritten at first probe).
        jit_compile: compile the probe with XLA (spiral MLP first probe: ~1.2 s; warns for a CNN on CPU).

    Example:
        >>> probe = CurvatureProbe((x[:256], y[:256]), every_n_steps=25, ntk=True)
        >>> model.fit(x, y, callbacks=[probe, keras.callbacks.CSVLogger("log.csv")])
        >>> plt.plot(probe.history["step"], probe.history["hessian_max_eig"])
    """

    def __init__(self, data, *, every_n_steps=None, every_n_epochs=None, loss=None, operator="hessian",
                 variables=None, per_layer=False, top_k=1, lanczos_order=20, tol=1e-3, warm_start=True,
                 warm_start_noise=0.01, trace=False, trace_samples=10, ntk=False, ntk_order=10,
                 ntk_trace_outputs=True, eos_ratio=True, probe_at_start=True, hvp_mode="reverse_over_reverse",
                 training=False, seed=0, optimizer=None, csv_path=None, jit_compile=False,
                 micro_batch_size="auto"):
        super().__init__()
        if every_n_steps is not None and every_n_epochs is not None:
            raise val.invalid("every_n_epochs", "None when `every_n_steps` is given (give at most one)",
                              every_n_epochs)
        self.every_n_steps = val.check_int("every_n_steps", every_n_steps, minimum=1, allow_none=True)
        if every_n_steps is None and every_n_epochs is None:
            every_n_epochs = 1
        self.every_n_epochs = val.check_int("every_n_epochs", every_n_epochs, minimum=1, allow_none=True)
        self.stochastic = isinstance(data, tf.data.Dataset)
        if self.stochastic:
            self._dataset, self._iterator = data, None
        else:
            self._batch = data_lib.check_batch(data)
        if loss is not None:
            val.check_callable("loss", loss)
        self._loss = loss
        self.operator = val.check_choice("operator", operator, hessian.OPERATORS)
        self.variables = variables
        self.lanczos_order = val.check_int("lanczos_order", lanczos_order, minimum=1)
        self.top_k = val.check_int("top_k", top_k, minimum=1, maximum=self.lanczos_order)
        self.tol = None if tol is None else val.check_float("tol", tol, positive=True)
        self.warm_start_noise = val.check_float("warm_start_noise", warm_start_noise, nonnegative=True)
        for name, flag in (("per_layer", per_layer), ("warm_start", warm_start), ("trace", trace),
                           ("jit_compile", jit_compile),
                           ("ntk", ntk), ("ntk_trace_outputs", ntk_trace_outputs), ("eos_ratio", eos_ratio),
                           ("probe_at_start", probe_at_start), ("training", training)):
            if not isinstance(flag, bool):
                raise val.invalid(name, "a bool", flag)
        self.per_layer, self.warm_start, self.trace = per_layer, warm_start, trace
        self.trace_samples = val.check_int("trace_samples", trace_samples, minimum=2)
        self.ntk, self.ntk_trace_outputs = ntk, ntk_trace_outputs
        self.ntk_order = val.check_int("ntk_order", ntk_order, minimum=1)
        self.eos_ratio, self.probe_at_start, self.training = eos_ratio, probe_at_start, training
        self.jit_compile = jit_compile
        self.hvp_mode = val.check_choice("hvp_mode", hvp_mode, hessian.HVP_MODES)
        if not (isinstance(micro_batch_size, str) and micro_batch_size == "auto"):
            try:
                micro_batch_size = val.check_int("micro_batch_size", micro_batch_size, minimum=1, allow_none=True)
            except ValueError:
                raise val.invalid("micro_batch_size", "'auto', None or an int >= 1", micro_batch_size) from None
        self.micro_batch_size = micro_batch_size
        self.seed = val.check_int("seed", seed, minimum=0)
        if optimizer is not None and not isinstance(optimizer, keras.optimizers.Optimizer):
            raise val.invalid("optimizer", "a keras.optimizers.Optimizer or None", optimizer)
        self._optimizer = optimizer
        self._recorder = _records.Recorder(csv_path)
        self.csv_path = self._recorder.csv_path
        self.history = self._recorder.history
        self.latest = {}
        self.prefix = "hessian" if self.operator == "hessian" else "gauss_newton"
        self._graph = self._key = self._starts = None
        self._count = 0
        self._last_bucket = None
        self._epoch = 0
        self._warned = set()

    # ------------------------------------------------------------------ #
    def _next_batch(self):
        if not self.stochastic:
            return self._batch
        for _ in range(2):
            if self._iterator is None:
                self._iterator = iter(self._dataset)
            try:
                return data_lib.check_batch(next(self._iterator))
            except StopIteration:
                self._iterator = None
        raise val.invalid("data", "a non-empty dataset", self._dataset)

    def _current_step(self):
        opt = self.optimizer_in_use()
        if opt is None:
            raise val.invalid("step", "the training step (the model has no optimizer to read it from; pass "
                              "`optimizer=` to CurvatureProbe or `step=` to `probe`)", None)
        return int(tf.convert_to_tensor(opt.iterations).numpy())

    def probe(self, model=None, *, step=None):
        """Runs one probe now; returns the dict of values (also recorded).

        Args:
            model: the model to probe (a custom training loop passes it here;
                `fit` sets it). Default: the model already set.
            step: the step to record; default `optimizer.iterations`.

        Returns:
            A dict `{key: float}` of this probe's values.
        """
        if model is not None and model is not self.model:
            self.set_model(model)
        if self.model is None:
            raise val.invalid("model", "a built keras.Model", None)
        step = self._current_step() if step is None else val.check_int("step", step, minimum=0)
        x, y, sw = self._next_batch()
        graph = self._graph_for(x)
        seed = tf.constant([self.seed, self._count], tf.int64)
        starts = self._starts if self.warm_start else graph.initial_starts()
        summary, starts = errors.run_guarded(
            self.model, graph, x, y, sw, starts, seed, fixed_shapes=not self.stochastic,
            probes=errors.output_probes(graph.flat, x))
        self._starts = starts
        return self.record_summary(summary.numpy(), step=step)

    def build_for(self, model):
        """Builds (or reuses) the probe graph for `model` on the fixed probe batch.

        Returns the `ProbeGraph` whose `compute(x, y, sw, starts, seed)` is the
        probe as graph code, for `InStepProbe` (a probe inside the training
        step). Rebuilt when the loss, its schedule or the optimizer changes.
        """
        if self.stochastic:
            raise val.invalid("data", "a fixed probe batch (x, y) to compile into the training step, not a "
                              "tf.data.Dataset", self._dataset)
        if model is not self.model:
            self.set_model(model)
        return self._graph_for(self._batch[0])

    def probe_batch(self):
        """The fixed probe batch `(x, y, sample_weight)` (tensors)."""
        if self.stochastic:
            raise val.invalid("data", "a fixed probe batch (x, y), not a tf.data.Dataset", self._dataset)
        return self._batch

    @property
    def probes_taken(self):
        """Number of probes recorded so far."""
        return self._count

    def record_summary(self, summary, *, step):
        """Records one probe's `summary` (NumPy, from `ProbeGraph.compute`) at
        `step`; returns the dict of values (also in `latest` and `history`)."""
        values = self._values(self._graph.unpack(summary))
        row = {"step": int(step), "epoch": self._epoch}
        if self.stochastic:
            row["probe_batch"] = self._count
        self._count += 1
        row.update(values)
        self._recorder.record(row)
        self.latest = dict(values)
        return values

    # ------------------------------------------------------------------ #
    def on_train_begin(self, logs=None):
        if self.optimizer_in_use() is None:
            raise val.invalid("model", "a compiled model with an optimizer", self.model)
        if self.every_n_steps is not None:
            self._last_bucket = self._current_step() // self.every_n_steps
        if self.probe_at_start:
            self.probe()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.every_n_steps is None:
            return
        bucket = self._current_step() // self.every_n_steps
        if bucket > self._last_bucket:
            self._last_bucket = bucket
            values = self.probe()
            if logs is not None:
                logs.update(values)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            self.probe()
        if logs is not None and self.latest:
            logs.update(self.latest)
