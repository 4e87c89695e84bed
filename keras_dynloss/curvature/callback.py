"""`CurvatureProbe`: Hessian / NTK spectra of a fixed probe batch during `fit`."""

import csv
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_dynloss.curvature import _graph
from keras_dynloss import _checks as val
from keras_dynloss.curvature import operators

#: Keys written into `logs` (and kept in `CurvatureProbe.history`).
HESSIAN_MAX_EIG = "hessian_max_eig"
HESSIAN_TRACE = "hessian_trace"
HESSIAN_TRACE_STDERR = "hessian_trace_stderr"
NTK_MAX_EIG = "ntk_max_eig"
EOS_RATIO = "eos_ratio"


def _same(a, b):
    """Identity, or equality for plain numbers (a schedule's period)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return a is b


class CurvatureProbe(keras.callbacks.Callback):
    """Measures curvature on a fixed probe batch every N steps (or epochs).

    Each probe is one compiled `tf.function` call that, at the current
    parameters `theta`, runs (all iterations in-graph):

    * `lanczos_order` Lanczos steps on the loss Hessian `H` of the probe batch
      (full float64 reorthogonalisation) -> top-`top_k` eigenvalues;
    * optionally `trace_samples` Hutchinson products -> `tr(H)` and stderr;
    * optionally `ntk_order` Lanczos steps on the empirical NTK of the probe
      inputs (matrix free: VJP + JVP per product; traced over outputs by
      default, as `ntk_eigenvalues`) -> NTK `lambda_max`.

    Values are written into `logs` under these keys, so they appear in the
    progress bar, `History`, `CSVLogger` and `TensorBoard`:

    | key | value |
    |---|---|
    | `hessian_max_eig` | largest Hessian eigenvalue `lambda_1` |
    | `hessian_eig_2` .. `hessian_eig_k` | next eigenvalues when `top_k > 1` |
    | `hessian_trace`, `hessian_trace_stderr` | Hutchinson `tr(H)` (if `trace`) |
    | `ntk_max_eig` | largest NTK eigenvalue (if `ntk`) |
    | `eos_ratio` | `lambda_1 * lr / 2` for SGD (`lambda_1 * lr / (2 (1 + momentum))` with momentum); 1 is the edge of stability of gradient descent on a quadratic |

    On a probing batch the values go into that batch's `logs`; at every epoch
    end the latest values go into the epoch `logs`. Place `CurvatureProbe`
    *before* `CSVLogger` / `TensorBoard` in `callbacks=[...]` (Keras calls
    callbacks in list order and appends `History` and the progress bar last),
    and after `DynamicalLossScheduler` so that the probed loss is bound to the
    training step.

    Every probe also appends to `self.history` (a dict of lists): `"step"`
    (the true step, `model.optimizer.iterations`, i.e. the number of updates
    applied before the probe), `"epoch"`, and each key above.

    With `steps_per_execution > 1`, Keras calls batch hooks once per execution;
    the probe then runs at the first hook at or after each multiple of
    `every_n_steps` and records the true step.

    The probe never changes training: it reads the variables and evaluates
    the model with `stateless_call` (inference mode by default), discarding
    any state update; it does not touch the optimizer or the global RNG.

    Args:
        data: fixed probe batch, `(x, y)` or `(x, y, sample_weight)`.
        every_n_steps: probe when the step crosses a multiple of this.
        every_n_epochs: probe at the end of every N-th epoch (default 1 when
            `every_n_steps` is not given). Give at most one of the two.
        loss: loss to differentiate; default `model.loss`.
        top_k: number of Hessian eigenvalues (`1 <= top_k <= lanczos_order`).
        lanczos_order: Lanczos steps (Hessian-vector products) per probe.
        trace: also estimate `tr(H)` (Hutchinson).
        trace_samples: Hutchinson probe vectors per probe.
        ntk: also compute the NTK `lambda_max`.
        ntk_order: Lanczos steps for the NTK.
        ntk_trace_outputs: NTK traced over outputs (`(N, N)`, default) or
            full (`(N*K, N*K)`).
        eos_ratio: log `eos_ratio` (needs a `keras.optimizers.SGD`).
        probe_at_start: also probe at train begin (recorded in `history`).
        hvp_mode: `"reverse_over_reverse"` (default) or
            `"forward_over_reverse"`; see `HessianOperator`.
        training: evaluate the model in training mode (default `False`).
        seed: seed of the Lanczos start vectors and Hutchinson probes.
        optimizer: optimizer whose `iterations` give the step and whose
            learning rate gives `eos_ratio`; default `model.optimizer` (a
            `LossScaleOptimizer` is looked through). Needed in a custom
            training loop with an uncompiled model.
        csv_path: if given, stream each probe as one row (`step`, `epoch`,
            then the values) to this CSV file, written and flushed per probe,
            and keep nothing in `history` (memory stays flat in long runs).
            The file is overwritten by the first probe of this callback.

    Custom training loops: build the probe, then call `probe.probe(model)`
    yourself, e.g. every 25 steps. The step recorded is
    `optimizer.iterations` (pass `step=` to `probe` to give it yourself). Under
    a `tf.distribute` strategy the probe computes on its own fixed batch with
    the current (replicated, hence identical) variable values and uses no
    collective operation: its value is the same on every worker, so calling it
    on the chief only is correct and does not block the other workers
    (calling it on every worker repeats the same work).

    Mixed precision: under `mixed_float16` / `mixed_bfloat16` every product is
    computed with the layers in their variable dtype (float32), never in 16
    bits; the probed values are float32-accurate.

    The traced probe captures the loss and its schedule. When the loss object
    or its `schedule` changes (e.g. `DynamicalLossScheduler(period_epochs=k)`
    sets a new period at `fit` start), the probe is rebuilt before its next
    run, so values always belong to the loss in force.

    Example:
        >>> probe = CurvatureProbe((x[:256], y[:256]), every_n_steps=25,
        ...                        ntk=True)
        >>> model.fit(x, y, callbacks=[probe, keras.callbacks.CSVLogger("log.csv")])
        >>> plt.plot(probe.history["step"], probe.history["hessian_max_eig"])
    """

    def __init__(
        self,
        data,
        *,
        every_n_steps=None,
        every_n_epochs=None,
        loss=None,
        top_k=1,
        lanczos_order=10,
        trace=False,
        trace_samples=10,
        ntk=False,
        ntk_order=10,
        ntk_trace_outputs=True,
        eos_ratio=True,
        probe_at_start=True,
        hvp_mode="reverse_over_reverse",
        training=False,
        seed=0,
        optimizer=None,
        csv_path=None,
    ):
        super().__init__()
        if every_n_steps is not None and every_n_epochs is not None:
            raise val.invalid(
                "every_n_epochs",
                "None when `every_n_steps` is given (give at most one)",
                every_n_epochs,
            )
        self.every_n_steps = val.check_int(
            "every_n_steps", every_n_steps, minimum=1, allow_none=True
        )
        if every_n_steps is None and every_n_epochs is None:
            every_n_epochs = 1
        self.every_n_epochs = val.check_int(
            "every_n_epochs", every_n_epochs, minimum=1, allow_none=True
        )
        if isinstance(data, tf.data.Dataset):
            raise val.invalid(
                "data", "a fixed probe batch (x, y) or (x, y, sample_weight)", data
            )
        data = operators.check_data(data)
        self._x, self._y = data[0], data[1]
        self._sw = data[2] if len(data) == 3 else None
        if loss is not None:
            val.check_callable("loss", loss)
        self._loss = loss
        self.lanczos_order = val.check_int("lanczos_order", lanczos_order, minimum=1)
        self.top_k = val.check_int("top_k", top_k, minimum=1, maximum=self.lanczos_order)
        for name, flag in (
            ("trace", trace),
            ("ntk", ntk),
            ("ntk_trace_outputs", ntk_trace_outputs),
            ("eos_ratio", eos_ratio),
            ("probe_at_start", probe_at_start),
            ("training", training),
        ):
            if not isinstance(flag, bool):
                raise val.invalid(name, "a bool", flag)
        self.trace = trace
        self.trace_samples = val.check_int("trace_samples", trace_samples, minimum=2)
        self.ntk = ntk
        self.ntk_order = val.check_int("ntk_order", ntk_order, minimum=1)
        self.ntk_trace_outputs = ntk_trace_outputs
        self.eos_ratio = eos_ratio
        self.probe_at_start = probe_at_start
        self.hvp_mode = val.check_choice("hvp_mode", hvp_mode, operators.HVP_MODES)
        self.training = training
        self.seed = val.check_int("seed", seed, minimum=0)
        if optimizer is not None and not isinstance(optimizer, keras.optimizers.Optimizer):
            raise val.invalid("optimizer", "a keras.optimizers.Optimizer or None", optimizer)
        self._optimizer = optimizer
        if csv_path is not None and not isinstance(csv_path, (str, os.PathLike)):
            raise val.invalid("csv_path", "a file path (str or os.PathLike) or None", csv_path)
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self._csv_columns = None
        self.history = {}
        self.latest = {}
        self._rng = np.random.default_rng(self.seed)
        self._probe_fn = None
        self._key = None
        self._last_bucket = None
        self._epoch = 0
        self._warned = set()

    # ------------------------------------------------------------------ #
    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _resolve_loss(self):
        loss = self._loss if self._loss is not None else getattr(self.model, "loss", None)
        if isinstance(loss, str):
            loss = keras.losses.get(loss)
        if not callable(loss):
            raise val.invalid(
                "loss",
                "a callable loss (pass `loss=` when the model was compiled "
                "with several losses or none)",
                loss,
            )
        return loss

    def _optimizer_in_use(self):
        opt = self._optimizer
        if opt is None:
            opt = getattr(self.model, "optimizer", None)
        if isinstance(opt, keras.optimizers.LossScaleOptimizer):
            opt = opt.inner_optimizer
        return opt

    def _probe_loss(self, loss):
        """The loss to differentiate; a dynamical loss is probed through a copy.

        The copy follows the same step as the loss (or the optimizer's, when the
        loss is not bound yet) and has no invalid-label counter, so probing
        never writes to training state.
        """
        if not (hasattr(loss, "at_step") and hasattr(loss, "bind")):
            return loss
        source = getattr(loss, "step", None)
        if source is None:
            opt = self._optimizer_in_use()
            source = None if opt is None else opt.iterations
        if source is None:
            raise val.invalid(
                "loss",
                "a dynamical loss bound to a step (`loss.bind(optimizer)`), or "
                "a model/probe with an optimizer to follow",
                loss,
            )
        return loss.at_step(0).bind(source)

    def _trace_key(self):
        """Objects the traced probe depends on; a change forces a rebuild."""
        loss = self._resolve_loss()
        schedule = getattr(loss, "schedule", None)
        return loss, (
            self.model,
            loss,
            schedule,
            getattr(schedule, "period", None),
            getattr(loss, "step", None),
            self._optimizer_in_use(),
            *self.model.trainable_variables,
        )

    def _build(self, loss):
        model = self.model
        flat = operators.FlatParameters(model)
        self._flat = flat
        loss = self._probe_loss(loss)
        hvp = operators.hvp_fn(flat, loss, mode=self.hvp_mode, training=self.training)
        x, y, sw = self._x, self._y, self._sw
        dtype = flat.dtype
        order, ntk_order = self.lanczos_order, self.ntk_order
        n = flat.size
        self._order = min(order, n)
        if self.ntk:
            n_samples, k_out = operators._num_samples_and_outputs(flat, x, self.training)
            ntk_mv = operators.ntk_matvec_fn(
                flat,
                trace_outputs=self.ntk_trace_outputs,
                training=self.training,
                num_outputs=k_out,
            )
            self._ntk_size = n_samples if self.ntk_trace_outputs else n_samples * k_out
            self._ntk_order = min(ntk_order, self._ntk_size)
        trace, samples = self.trace, self.trace_samples
        h_order = self._order

        def probe(v0, z, u0):
            theta = flat.read()

            def hmv(v):
                return tf.cast(hvp(theta, tf.cast(v, dtype), x, y, sw)[0], tf.float64)

            out = {}
            out["h_alpha"], out["h_beta"] = _graph.graph_lanczos(hmv, v0, h_order)
            if trace:
                out["trace"] = tf.stack(
                    [tf.tensordot(z[i], hmv(z[i]), 1) for i in range(samples)]
                )
            if self.ntk:

                def nmv(u):
                    return tf.cast(ntk_mv(theta, tf.cast(u, dtype), x), tf.float64)

                out["n_alpha"], out["n_beta"] = _graph.graph_lanczos(
                    nmv, u0, self._ntk_order
                )
            return out

        self._probe_fn = tf.function(probe)

    def _learning_rate_ratio(self):
        opt = self._optimizer_in_use()
        if not isinstance(opt, keras.optimizers.SGD):
            self._warn_once(
                "eos",
                "CurvatureProbe: `eos_ratio` is defined for "
                "keras.optimizers.SGD only; not logged for "
                f"{type(opt).__name__}.",
            )
            return None
        lr = float(tf.convert_to_tensor(opt.learning_rate).numpy())
        momentum = float(getattr(opt, "momentum", 0.0) or 0.0)
        return lr / (2.0 * (1.0 + momentum))

    def _current_step(self):
        opt = self._optimizer_in_use()
        if opt is None:
            raise val.invalid(
                "step",
                "the training step (the model has no optimizer to read it from; "
                "pass `optimizer=` to CurvatureProbe or `step=` to `probe`)",
                None,
            )
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
        loss, key = self._trace_key()
        if (
            self._probe_fn is None
            or len(key) != len(self._key)
            or not all(_same(a, b) for a, b in zip(key, self._key))
        ):
            self._build(loss)
            self._key = key
        n = self._flat.size
        v0 = self._rng.standard_normal(n)
        z = (
            self._rng.integers(0, 2, size=(self.trace_samples, n)) * 2.0 - 1.0
            if self.trace
            else np.zeros((0, n))
        )
        u0 = self._rng.standard_normal(self._ntk_size) if self.ntk else np.zeros(0)
        out = operators.run_guarded(
            self.model,
            self._probe_fn,
            tf.constant(v0, tf.float64),
            tf.constant(z, tf.float64),
            tf.constant(u0, tf.float64),
            probes=operators.output_probes(self._flat, self._x),
        )
        eps = float(np.finfo(self._flat.dtype.as_numpy_dtype).eps)
        values = {}
        dec = _graph.decomposition_from_coefficients(
            out["h_alpha"].numpy(), out["h_beta"].numpy(), eps=eps
        )
        if dec.breakdowns and self._order < n:
            self._warn_once(
                "breakdown",
                "CurvatureProbe: Lanczos breakdown on the Hessian (invariant "
                "Krylov subspace); the iteration restarted from rounding noise.",
            )
        theta = np.sort(np.linalg.eigvalsh(dec.tridiagonal()))[::-1]
        values[HESSIAN_MAX_EIG] = float(theta[0])
        for i in range(1, self.top_k):
            values[f"hessian_eig_{i + 1}"] = float(theta[i]) if i < theta.size else float("nan")
        if self.trace:
            samples = out["trace"].numpy()
            values[HESSIAN_TRACE] = float(samples.mean())
            values[HESSIAN_TRACE_STDERR] = float(
                samples.std(ddof=1) / np.sqrt(samples.size)
            )
        if self.ntk:
            ndec = _graph.decomposition_from_coefficients(
                out["n_alpha"].numpy(), out["n_beta"].numpy(), eps=eps
            )
            values[NTK_MAX_EIG] = float(np.linalg.eigvalsh(ndec.tridiagonal()).max())
        if self.eos_ratio:
            ratio = self._learning_rate_ratio()
            if ratio is not None:
                values[EOS_RATIO] = values[HESSIAN_MAX_EIG] * ratio
        self._record(step, values)
        return values

    def _record(self, step, values):
        self.latest = dict(values)
        if self.csv_path is not None:
            self._write_row(step, values)
            return
        self.history.setdefault("step", []).append(step)
        self.history.setdefault("epoch", []).append(self._epoch)
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)

    def _write_row(self, step, values):
        row = {"step": step, "epoch": self._epoch, **values}
        first = self._csv_columns is None
        if first:
            self._csv_columns = list(row)
        with open(self.csv_path, "w" if first else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._csv_columns, restval="nan")
            if first:
                writer.writeheader()
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})

    # ------------------------------------------------------------------ #
    def on_train_begin(self, logs=None):
        if self._optimizer_in_use() is None:
            raise val.invalid("model", "a compiled model with an optimizer", self.model)
        step = self._current_step()
        if self.every_n_steps is not None:
            self._last_bucket = step // self.every_n_steps
        if self.probe_at_start:
            self.probe()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.every_n_steps is None:
            return
        step = self._current_step()
        bucket = step // self.every_n_steps
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
