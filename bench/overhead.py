"""Per-step cost of DynamicalLoss against SparseCategoricalCrossentropy, and where it goes.

Same model, same data, same process (TensorFlow): one compiled copy of one initial model per
loss variant, timed alternately, ``--trials`` rounds of one ``fit`` of ``--steps`` steps
each (``steps_per_execution``, one epoch). Variants, each with ``from_logits=True``:

* ``SparseCCE``: ``keras.losses.SparseCategoricalCrossentropy`` (the reference);
* ``Dynamical``: ``DynamicalLoss(A=70, T=500)`` with ``DynamicalLossScheduler()``;
* ``no Γ statistics``: the same with ``DynamicalLossScheduler(log_weights=False)`` (the
  statistics come from the schedule at each epoch's end, outside the compiled step);
* ``fixed Γ``: Γ a constant vector instead of the schedule at ``optimizer.iterations``;
* ``no label check``: ``Γ_y · CE`` from Keras's sparse cross-entropy, labels unchecked;
* ``weighted CE only``: fixed Γ, no label check, no statistics.

(The last three are subclasses of ``DynamicalLoss`` defined here, to take the work apart.)
Three times per step: ``in step`` (wall and CPU, this process's threads) sums the compiled
calls, between ``on_train_batch_begin`` and ``_end``; ``whole fit`` adds ``fit``'s per-call
work (callbacks, iterator). The objects built before timing are frozen out of the garbage
collector, as ``python -m keras_dynloss`` does. Prints the medians, the medians of the
paired ratios to ``SparseCCE`` (goal for ``Dynamical``: <= 1.03), and the paired
differences that price each piece.

Setups: the spiral MLP 2-32-3, full batch (300), ``steps_per_execution=1000``; a small
conv net on the 8x8 digits, batch 128. ``--jit`` compiles with XLA.

    python bench/overhead.py [--trials 9] [--steps 3000] [--jit] [--setups spiral,digits]
"""

import argparse
import gc
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

import keras_dynloss as kd  # noqa: E402
from keras_dynloss.experiments.workers import set_cpu_threads  # noqa: E402


class Variant(kd.DynamicalLoss):
    """`DynamicalLoss` with pieces switched off: the schedule (`fixed_gamma`), the label
    check (`check_labels`)."""

    def __init__(self, *args, fixed_gamma=False, check_labels=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_labels = check_labels
        self.fixed = self.weights_at(self.schedule.period // 2) if fixed_gamma else None

    def call(self, y_true, y_pred):
        if self.fixed is not None:
            gamma = ops.convert_to_tensor(self.fixed, y_pred.dtype)
        else:
            gamma = self.schedule(self.current_step(), dtype=y_pred.dtype)
        if self.check_labels:
            counter = getattr(self.state, "invalid_labels", None)
            return kd.dynamical_crossentropy(y_true, y_pred, gamma, from_logits=True,
                                             invalid_label_counter=counter)
        y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        return ops.take(gamma, y) * keras.losses.sparse_categorical_crossentropy(
            y, y_pred, from_logits=True)


def variants(num_classes):
    """`{name: (loss factory, callbacks factory)}`."""
    schedule = dict(amplitude=70.0, period=500, from_logits=True)

    def scheduler(log_weights=True):
        return lambda: [kd.DynamicalLossScheduler(log_weights=log_weights)]

    return {
        "SparseCCE": (lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      lambda: []),
        "Dynamical": (lambda: kd.DynamicalLoss(num_classes, **schedule), scheduler()),
        "no Γ statistics": (lambda: kd.DynamicalLoss(num_classes, **schedule),
                            scheduler(log_weights=False)),
        "fixed Γ": (lambda: Variant(num_classes, fixed_gamma=True, **schedule), scheduler()),
        "no label check": (lambda: Variant(num_classes, check_labels=False, **schedule),
                           scheduler()),
        "weighted CE only": (lambda: Variant(num_classes, fixed_gamma=True, check_labels=False,
                                             **schedule), scheduler(log_weights=False)),
    }


def untuned(data):
    """`data` without tf.data autotuning: its teardown at the end of `fit` sometimes stalls
    for seconds, which would land on one variant's whole-fit time."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def spiral_setup():
    x, y = kd.datasets.spiral()
    data = untuned(tf.data.Dataset.from_tensors((x, y)).repeat())

    def build():
        return keras.Sequential([keras.Input((2,)), keras.layers.Dense(32, activation="relu"),
                                 keras.layers.Dense(3)])

    return dict(name="spiral MLP 2-32-3, full batch 300, SGD(1.0)", build=build, data=data,
                lr=1.0, num_classes=3, step_scale=1.0)


def digits_setup():
    x, y = kd.datasets.digits()
    data = untuned(tf.data.Dataset.from_tensor_slices((x[..., None], y)).batch(
        128, drop_remainder=True).cache().repeat())

    def build():
        return keras.Sequential([
            keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])

    return dict(name="digits conv net 8x8, batch 128, SGD(0.1)", build=build, data=data,
                lr=0.1, num_classes=10, step_scale=0.25)


class ExecutionTimer(keras.callbacks.Callback):
    """Wall and CPU seconds (this process, all threads) inside the compiled calls of a `fit`."""

    def on_train_begin(self, logs=None):
        self.seconds = self.cpu = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, batch, logs=None):
        self.seconds += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]


def compiled(setup, make_loss, make_callbacks, weights, args, steps):
    """A compiled, warmed-up model; `run()` returns seconds per step: in step (wall, CPU) and
    whole fit (wall)."""
    model = setup["build"]()
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(setup["lr"]), loss=make_loss(),
                  steps_per_execution=args.spe, jit_compile=args.jit)
    timer = ExecutionTimer()
    callbacks = make_callbacks() + [timer]

    def run(n=steps):
        start = time.perf_counter()
        model.fit(setup["data"], steps_per_epoch=n, epochs=1, verbose=0, callbacks=callbacks)
        return timer.seconds / n, timer.cpu / n, (time.perf_counter() - start) / n

    run(args.spe)  # trace, compile, warm up
    return run


MEASURES = ("in step", "in step CPU", "whole fit")
PIECES = (("Γ schedule", "Dynamical", "fixed Γ"),
          ("label check", "Dynamical", "no label check"),
          ("Γ statistics", "Dynamical", "no Γ statistics"),  # ~0 in step: at epoch ends
          ("the rest", "weighted CE only", "SparseCCE"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=9)
    p.add_argument("--steps", type=int, default=3000,
                   help="steps per trial (digits: a quarter), a multiple of --spe")
    p.add_argument("--spe", type=int, default=1000, help="steps_per_execution")
    p.add_argument("--jit", action="store_true", help="jit_compile=True")
    p.add_argument("--threads", type=int, default=1, help="TF CPU threads (0: TF default)")
    p.add_argument("--setups", default="spiral,digits")
    args = p.parse_args()
    set_cpu_threads(args.threads)
    for setup in [{"spiral": spiral_setup, "digits": digits_setup}[s]()
                  for s in args.setups.split(",")]:
        steps = max(args.spe, int(args.steps * setup["step_scale"]) // args.spe * args.spe)
        keras.utils.set_random_seed(0)
        weights = setup["build"]().get_weights()
        runs = {name: compiled(setup, loss, cbs, weights, args, steps)
                for name, (loss, cbs) in variants(setup["num_classes"]).items()}
        gc.collect()
        gc.freeze()  # else a full collection over every model's objects lands on one variant
        t = {name: [] for name in runs}  # per trial: (in step, in step CPU, whole fit)
        for _ in range(args.trials):  # alternate, so drifts in machine speed hit all alike
            for name, run in runs.items():
                t[name].append(run())
        print(f"{setup['name']}, steps_per_execution={args.spe}, jit_compile={args.jit}, "
              f"{args.trials} trials of {steps} steps, {args.threads or 'default'} TF threads, "
              f"load {os.getloadavg()[0]:.1f}")
        print("  us per step (ratio to SparseCCE: median of paired ratios)")
        print(f"  {'':18s}" + "".join(f"{m:>20s}" for m in MEASURES))
        for name in runs:
            cells = []
            for m in range(len(MEASURES)):
                mine, ref = [x[m] for x in t[name]], [x[m] for x in t["SparseCCE"]]
                ratio = statistics.median(a / b for a, b in zip(mine, ref))
                cells.append(f"{1e6 * statistics.median(mine):9.1f} ({ratio:5.3f})")
            print(f"  {name:18s}" + "".join(f"{c:>20s}" for c in cells))
        print("  goal: Dynamical / SparseCCE <= 1.03.  What each piece costs, us per step "
              "(median of paired differences, in step wall / CPU):")
        for piece, a, b in PIECES:
            diff = [statistics.median(x[m] - y[m] for x, y in zip(t[a], t[b])) for m in (0, 1)]
            print(f"    {piece:13s} {a} - {b}: {1e6 * diff[0]:+6.1f} / {1e6 * diff[1]:+6.1f}")


if __name__ == "__main__":
    main()
