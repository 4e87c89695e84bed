"""`CurvatureProbe`: Hessian, Gauss-Newton and NTK spectra during training, a callback."""

import csv
import os
import warnings

import keras
import numpy as np
from keras import ops

from keras_dynloss import _checks, _tensorboard
from keras_dynloss.curvature import eos, products
from keras_dynloss.curvature.data import is_dataset, num_rows, read_batches
from keras_dynloss.curvature.errors import compile_guarded
from keras_dynloss.curvature.program import Program, xla_cpu_warning

_FLAGS = ("per_layer", "warm_start", "trace", "ntk", "ntk_trace_outputs", "eos_ratio",
          "probe_at_start", "training", "jit_compile")


class CurvatureProbe(keras.callbacks.Callback):
    """Measures curvature on a probe batch every N steps (or epochs) of `fit`.

    Each probe, one compiled call, runs Lanczos (and Hutchinson) on the curvature guide's
    targets. Its values go into `logs` (list `CSVLogger` after the probe), `history` (or
    `csv_path`) and TensorBoard, keyed by the optimizer step. Custom loops call `probe.probe()`.

    Args:
        data: a batch `(x, y[, sample_weight])` or a `tf.data.Dataset` of them (one a probe).
        every_n_steps: probe when the optimizer step passes a multiple of this.
        every_n_epochs: probe every N-th epoch end (default 1 without `every_n_steps`).
        loss: the loss to differentiate; default `model.loss`.
        operator: `"hessian"` or `"gauss_newton"`.
        variables: None (every trainable variable) or variables and/or layers: the block.
        per_layer: also `lambda_max` of the block of each direct layer.
        top_k: eigenvalues to report, `<= lanczos_order`.
        lanczos_order: the most products of a Lanczos run.
        tol: the relative residual that stops a run; None runs every step.
        warm_start: start from the previous probe's Ritz vectors.
        warm_start_noise: plus this weight of a random unit vector.
        trace: log Hutchinson's `tr(A)`.
        trace_samples: its number of products.
        ntk: log the NTK's `lambda_max`.
        ntk_order: the most products of its Lanczos run.
        ntk_trace_outputs: the traced NTK `(N, N)`, else the full one `(NK, NK)`.
        eos_ratio: log `eos_ratio` (SGD, Adam, AdamW).
        probe_at_start: also probe at the start of training.
        training: run the model in training mode (batch statistics, Dropout).
        seed: seed of the random start vectors and Hutchinson probes.
        optimizer: the optimizer giving the step; default `model.optimizer`.
        csv_path: stream each probe as a CSV row to this file instead of `history`.
        jit_compile: compile the probe with XLA on TensorFlow (JAX always compiles).
        micro_batch_size: rows per sub-batch of every product, a divisor of the batch size.
        log_dir: also write the TensorBoard scalars into `<log_dir>/train`.

    Example:
        >>> probe = CurvatureProbe((x[:256], y[:256]), every_n_steps=25, ntk=True)
        >>> model.fit(x, y, callbacks=[probe, keras.callbacks.CSVLogger("log.csv")])
        >>> probe.history["step"], probe.history["hessian_max_eig"]
    """

    def __init__(self, data, *, every_n_steps=None, every_n_epochs=None, loss=None,
                 operator="hessian", variables=None, per_layer=False, top_k=1, lanczos_order=20,
                 tol=1e-3, warm_start=True, warm_start_noise=0.01, trace=False, trace_samples=10,
                 ntk=False, ntk_order=10, ntk_trace_outputs=True, eos_ratio=True,
                 probe_at_start=True, training=False, seed=0, optimizer=None, csv_path=None,
                 jit_compile=False, micro_batch_size=None, log_dir=None):
        super().__init__()
        if every_n_steps is not None and every_n_epochs is not None:
            raise _checks.invalid("every_n_epochs", "None with `every_n_steps`", every_n_epochs)
        check = _checks.check_int
        self.every_n_steps = check("every_n_steps", every_n_steps, minimum=1, allow_none=True)
        default = 1 if every_n_steps is None and every_n_epochs is None else every_n_epochs
        self.every_n_epochs = check("every_n_epochs", default, minimum=1, allow_none=True)
        self.stochastic = is_dataset(data)
        self._dataset, self._iterator, self._rows = data, None, None
        self._batch = None if self.stochastic else read_batches(data)[0]
        self._loss = None if loss is None else _checks.check_callable("loss", loss)
        self.operator = _checks.check_choice("operator", operator, products.OPERATORS)
        self.variables = variables
        values = locals()
        for name, minimum in (("lanczos_order", 1), ("trace_samples", 2), ("ntk_order", 1),
                              ("seed", 0)):
            setattr(self, name, check(name, values[name], minimum=minimum))
        self.top_k = check("top_k", top_k, minimum=1, maximum=self.lanczos_order)
        self.tol = None if tol is None else _checks.check_float("tol", tol, positive=True)
        self.warm_start_noise = _checks.check_float("warm_start_noise", warm_start_noise,
                                                    nonnegative=True)
        for name in _FLAGS:
            setattr(self, name, _checks.check_bool(name, values[name]))
        self.micro_batch_size = check("micro_batch_size", micro_batch_size, minimum=1,
                                      allow_none=True)
        if optimizer is not None and not isinstance(optimizer, keras.optimizers.Optimizer):
            raise _checks.invalid("optimizer", "a keras.optimizers.Optimizer or None", optimizer)
        for name, path in (("csv_path", csv_path), ("log_dir", log_dir)):
            if path is not None and not isinstance(path, (str, os.PathLike)):
                raise _checks.invalid(name, "a path (str or os.PathLike) or None", path)
        self._optimizer, self.log_dir = optimizer, log_dir
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.history, self.latest, self.probes_taken, self._warned = {}, {}, 0, set()
        self._program = self._compiled = self._key = self._starts = self._writer = None
        self._columns, self._last_bucket, self._epoch = None, None, 0

    def optimizer_in_use(self):
        """The optimizer giving the step (`optimizer=` or the model's, unwrapped), or None."""
        opt = self._optimizer or getattr(self.model, "optimizer", None)
        return opt and eos.unwrap(opt)

    def _warn_once(self, key, message):
        if message and key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def build_for(self, model, x=None):
        """The `Program` of `model` on the probe batch (or `x`), reused while the key holds."""
        if model is not self.model:
            self.set_model(model)
        if x is None and self.stochastic:
            raise _checks.invalid("data", "a fixed probe batch (x, y), not a dataset",
                                  self._dataset)
        x = self._batch[0] if x is None else x
        loss = self._loss or getattr(model, "loss", None)
        loss = keras.losses.get(loss) if isinstance(loss, str) else loss
        if not callable(loss):
            raise _checks.invalid("loss", "a callable (pass `loss=` when the model was "
                                  "compiled with several losses or none)", loss)
        opt = self.optimizer_in_use()
        kind = eos.kind(opt) if opt is not None and self.eos_ratio else None
        if opt is not None and self.eos_ratio and kind is None:
            self._warn_once("eos", "CurvatureProbe: `eos_ratio` is defined for SGD, Adam and "
                            f"AdamW; not logged for {type(opt).__name__}.")
        key = (model, loss, getattr(loss, "schedule", None), opt, kind,
               kind == "adam" and opt.built, *model.trainable_variables)
        if self._key is not None and len(key) == len(self._key) and all(
                a is b for a, b in zip(key, self._key)):
            return self._program
        self._program, self._key = Program(self, model, loss, opt, kind, x), key
        self._warn_once("xla-cpu", xla_cpu_warning(model, self.jit_compile))
        self._compiled = compile_guarded(self._program.flat, self._program.fn, x,
                                         training=self.training, jit_compile=self.jit_compile)
        self._starts = self._program.zero_starts()
        return self._program

    def _next_batch(self):
        if not self.stochastic:
            return self._batch
        for _ in range(2):  # on to the end of the data, then once more from its start
            for element in self._iterator or ():
                x, y, sw = read_batches(element)[0]
                rows = num_rows(x)
                self._rows = self._rows or rows
                if rows == self._rows:
                    return x, y, sw
                self._warn_once("rows", f"CurvatureProbe: skipped a probe batch of {rows} "
                                f"samples (the first had {self._rows}); give the dataset "
                                "batches of one size, e.g. `.batch(n, drop_remainder=True)`.")
            self._iterator = iter(self._dataset)
        raise _checks.invalid("data", f"a dataset with batches of {self._rows} samples"
                              if self._rows else "a non-empty dataset", self._dataset)

    def _step(self):
        opt = self.optimizer_in_use()
        if opt is None:
            raise _checks.invalid("step", "the training step (the model has no optimizer: pass "
                                  "`optimizer=` to CurvatureProbe or `step=` to `probe`)", None)
        return int(ops.convert_to_numpy(opt.iterations))

    def probe(self, model=None, *, step=None):
        """Runs and records one probe of `model` at `step` (default: `optimizer.iterations`)."""
        if model is not None and model is not self.model:
            self.set_model(model)
        if self.model is None:
            raise _checks.invalid("model", "a built keras.Model", None)
        step = self._step() if step is None else _checks.check_int("step", step, minimum=0)
        x, y, sw = self._next_batch()
        program = self.build_for(self.model, x)
        seed = ops.convert_to_tensor([self.seed, self.probes_taken], "int32")
        starts = self._starts if self.warm_start else program.zero_starts()
        results, self._starts = self._compiled(
            program.flat.flatten(self.model.trainable_variables), program.flat.non_trainable(),
            x, y, sw, starts, seed, ops.convert_to_tensor(step, "int32"), program.moments())
        rate = None if program.kind is None else eos.learning_rate(self.optimizer_in_use())
        return self.record(results, step=step, learning_rate=rate)

    def record(self, results, *, step, learning_rate=None):
        """Records the `results` of a probe at `step`; returns its values `{key: float}`."""
        r = keras.tree.map_structure(lambda t: np.asarray(ops.convert_to_numpy(t)), results)
        p, kind, values = self.operator, self._program.kind, {}
        keys = {"ntk": "ntk_max_eig", "preconditioned": "preconditioned_max_eig"}
        for name, item in ((name, r[name]) for name in self._program.spec):
            if name == "trace":
                item = item.astype(np.float64)
                values[f"{p}_trace"] = float(item.mean())
                values[f"{p}_trace_stderr"] = float(item.std(ddof=1) / np.sqrt(item.size))
                continue
            key, suffix = keys.get(name, f"{p}_max_eig"), name[5:] if name[:6] == "layer/" else ""
            values[key + suffix] = float(item["values"][0])
            for i in range(1, item["values"].shape[0]):
                values[f"{p}_eig_{i + 1}"] = float(item["values"][i])
            values[f"{key}_residual{suffix}"] = float(item["residuals"][0])
            if name in ("main", "ntk"):
                values[key.replace("max_eig", "matvecs")] = int(item["matvecs"])
        if kind == "adam" and "preconditioned" not in r:  # no slots yet: undefined
            values["preconditioned_max_eig"] = values["preconditioned_max_eig_residual"] = np.nan
        if kind is not None:
            curvature = values["preconditioned_max_eig" if kind == "adam" else f"{p}_max_eig"]
            values["eos_ratio"] = eos.ratio(self.optimizer_in_use(), curvature, learning_rate)
        if int(r["main"]["breakdowns"]) and self._program.flat.size > int(r["main"]["matvecs"]):
            self._warn_once("breakdown", "CurvatureProbe: Lanczos breakdown (an invariant "
                            "Krylov subspace): the Ritz values there are exact eigenvalues.")
        row = {"step": int(step), "epoch": self._epoch, **(
            {"probe_batch": self.probes_taken} if self.stochastic else {}), **values}
        self._append(row)
        if self._writer is None and self.log_dir is not None:
            self.open_writer(None)
        if self._writer:
            self._writer.write(step, values)
        self.probes_taken, self.latest = self.probes_taken + 1, values
        return values

    def _append(self, row):
        """`row` into `history` or the CSV file (rewritten for a new key); missing values NaN."""
        if self.csv_path is None:
            rows = len(self.history.get("step", []))
            for key in list(row) + [k for k in self.history if k not in row]:
                self.history.setdefault(key, [np.nan] * rows).append(row.get(key, np.nan))
            return
        new, earlier = [k for k in row if k not in (self._columns or [])], []
        if new and self._columns:
            with open(self.csv_path, newline="") as f:
                earlier = list(csv.DictReader(f))
        self._columns = (self._columns or []) + new
        with open(self.csv_path, "w" if new else "a", newline="") as f:
            writer = csv.DictWriter(f, self._columns, restval="nan")
            if new:
                writer.writeheader()
            writer.writerows(earlier + [row])

    def open_writer(self, callback):
        """Writes TensorBoard scalars into `log_dir` and the `TensorBoard`s beside `callback`."""
        if self._writer:
            self._writer.close()
        dirs = (_tensorboard.log_dirs(callback, self.log_dir) if callback is not None
                else [os.path.join(os.fspath(self.log_dir), "train")])
        self._writer = _tensorboard.ScalarWriter(dirs)

    def on_train_begin(self, logs=None):
        if self.optimizer_in_use() is None:
            raise _checks.invalid("model", "a compiled model with an optimizer", self.model)
        self.open_writer(self)
        if self.every_n_steps is not None:
            self._last_bucket = self._step() // self.every_n_steps
        if self.probe_at_start:
            self.probe()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.every_n_steps is None or self._step() // self.every_n_steps <= self._last_bucket:
            return
        self._last_bucket = self._step() // self.every_n_steps
        values = self.probe()
        if logs is not None:
            logs.update(values)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
            self.probe()
        if logs is not None:
            logs.update(self.latest)
        if self._writer:
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer:
            self._writer.close()
        self._writer = None
