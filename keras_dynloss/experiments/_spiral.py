"""The spiral runs of the paper (Fig. 4, the width sweep): full-batch GD in one `fit` call."""

import collections
import time

import keras
import numpy as np
from keras import ops

from keras_dynloss.callbacks import DynamicalLossScheduler
from keras_dynloss.datasets import spiral
from keras_dynloss.experiments._full_batch import FullBatchSequential, StepRecorder
from keras_dynloss.experiments._full_batch import full_batch_data
from keras_dynloss.experiments._losses import spiral_loss

__all__ = ["build_mlp", "build_runner", "train_spiral"]


def build_mlp(width, num_classes=3, *, seed=0, dtype="float32", inputs=2, **kwargs):
    """Dense(width)-ReLU-Dense(C) initialised as jax's `stax.Dense`, drawn in NumPy from `seed`
    (the same weights on every backend): Glorot-normal kernels (a normal truncated at ±2, variance
    2 / (fan_in + fan_out)) and normal(0, 0.01²) biases. `kwargs` go to `FullBatchSequential`."""
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


#: `build_runner`'s result: `model.fit(callbacks=callbacks, **fit_kwargs)` trains the run.
Runner = collections.namedtuple("Runner", "model x y loss recorder callbacks fit_kwargs")


def build_runner(*, width=100, amplitude=70.0, period=5000, steps=70000, seed=0, data_seed=0,
                 learning_rate=1.0, dtype="float32", record=False, probe_every=0,
                 probe_ntk=True, updates_per_batch=None, jit_compile=True, loss="ce",
                 progress=False):
    """The compiled spiral model of one run and the arguments of its one `fit` call.

    Args:
        width, amplitude, period: hidden units, A (1 = the static loss), T in steps.
        steps: GD steps; Γ ≡ 1 from `steps - period` on.
        seed, data_seed, learning_rate: of the initial weights, of the spiral; η of `SGD`.
        dtype: "float32" or "float64" (on JAX float64 needs `jax_enable_x64`).
        record: record F(t) and accuracy at every step (`StepRecorder`).
        probe_every, probe_ntk: Hessian (and NTK) λ_max every this many steps (0: none), in
            the training loop (an `InStepProbe`: Lanczos order 10, warm starts).
        updates_per_batch: GD steps per compiled call (default `ceil(steps / 20)`).
        jit_compile: compile the loop with XLA (not on PyTorch, whose loop runs eagerly).
        loss: "ce", "mse", "dmse" or "dmse-componentwise" (`_losses.spiral_loss`).
        progress: a `keras.utils.Progbar` over the steps (with the last step's accuracy).

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
        validation_seed: if given, `val_acc` is the final accuracy on `spiral(seed=...)`.
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
