"""Speed of the Fig. 4 training through ``model.fit`` vs a bare compiled loop.

The loss-only Fig. 4 run: spiral (300 points), Dense(100)-ReLU-Dense(3),
full-batch GD with η = 1, DynamicalLoss(A=70, T=5000, last period static),
``--steps`` steps. Three ways, same process, same initial weights, timed
alternately ``--runs`` times after one untimed warm-up (trace / compile) each:

* ``fit, full batch``: what ``python -m keras_dynloss fig4`` runs —
  ``model.fit`` over ``experiments._spiral.full_batch_dataset(x, y)`` (the
  full batch, repeated, without tf.data autotuning) with
  ``DynamicalLossScheduler``; the model is a ``FullBatchSequential`` that runs
  ``--chunk`` GD updates per batch as one compiled loop (its ``train_step``);
* ``fit, Keras loop``: a plain ``keras.Sequential`` and Keras's own
  ``steps_per_execution=--spe`` loop (one ``train_step`` per update);
* ``bare``: one ``tf.function`` holding a ``tf.while_loop`` of ``--chunk`` GD
  steps on plain ``tf.Variable``s, Γ(t) from the same schedule and
  :func:`~keras_dynloss.dynamical_crossentropy`, called steps/chunk times.

``--jit`` XLA-compiles all three (``jit_compile=True``). Prints the median times,
µs/step and the ratios fit / bare (targets: <= 1.1; <= 1.2 with ``--jit``).

    python bench/fit_speed.py [--steps 70000] [--dtype float64] [--jit] [--runs 3] [--threads 1]
"""

import argparse
import os
import statistics
import time

import keras_dynloss as kd  # first: imports TensorFlow without start-up noise

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras_dynloss.datasets import spiral
from keras_dynloss.experiments._common import set_cpu_threads
from keras_dynloss.experiments._spiral import build_mlp, full_batch_dataset


def make_loss(args):
    return kd.DynamicalLoss(3, amplitude=args.amplitude, period=args.period,
                            from_logits=True, static_after=args.steps - args.period,
                            dtype=args.dtype)


def fit_runner(x, y, weights, args, full_batch):
    model = build_mlp(args.width, dtype=args.dtype,
                      updates_per_batch=args.chunk if full_batch else 1)
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=make_loss(args),
                  steps_per_execution=1 if full_batch else args.spe,
                  jit_compile=args.jit)
    data = full_batch_dataset(x, y)  # as the fig4 CLI (autotuning's teardown stalled fit 10 s at random)
    batch_steps = args.chunk if full_batch else 1
    cb = [kd.DynamicalLossScheduler(log_weights=False)]
    epochs = args.steps // args.steps_per_epoch

    def run():
        model.set_weights(weights)
        model.optimizer.iterations.assign(0)
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(data, epochs=epochs, steps_per_epoch=args.steps_per_epoch // batch_steps,
                  verbose=0, callbacks=cb, shuffle=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert int(model.optimizer.iterations.numpy()) == args.steps
        return seconds, cpu, model.get_weights()

    model.fit(data, epochs=1, steps_per_epoch=max(1, args.spe // batch_steps), verbose=0,
              callbacks=cb, shuffle=False)  # trace / compile
    return run


def bare_runner(x, y, weights, args):
    dtype = tf.as_dtype(args.dtype)
    variables = [tf.Variable(w) for w in weights]
    step = tf.Variable(0, dtype=tf.int64)
    schedule = make_loss(args).schedule
    xt, yt = tf.constant(x), tf.constant(y)
    lr = tf.constant(1.0, dtype)  # as SGD(1.0)

    def gd_step():
        w1, b1, w2, b2 = variables
        gamma = schedule(step, dtype=dtype)
        with tf.GradientTape() as tape:
            logits = tf.matmul(tf.nn.relu(tf.matmul(xt, w1) + b1), w2) + b2
            loss = tf.reduce_mean(kd.dynamical_crossentropy(yt, logits, gamma,
                                                            from_logits=True))
        grads = tape.gradient(loss, variables)
        for v, g in zip(variables, grads):
            v.assign_sub(lr * g)
        step.assign_add(1)

    @tf.function(jit_compile=args.jit)
    def chunk(n):
        for _ in tf.range(n):
            gd_step()

    n = tf.constant(args.chunk, tf.int64)

    def run():
        for v, w in zip(variables, weights):
            v.assign(w)
        step.assign(0)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps // args.chunk):
            chunk(n)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert int(step.numpy()) == args.steps
        return seconds, cpu, [v.numpy() for v in variables]

    chunk(n)  # trace / compile
    return run


def accuracy(weights, x, y):
    w1, b1, w2, b2 = weights
    return float(np.mean((np.maximum(x @ w1 + b1, 0) @ w2 + b2).argmax(-1) == y))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=70000)
    p.add_argument("--period", type=int, default=5000)
    p.add_argument("--amplitude", type=float, default=70.0)
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--spe", type=int, default=1000, help="steps_per_execution, Keras loop")
    p.add_argument("--steps-per-epoch", type=int, default=7000, dest="steps_per_epoch")
    p.add_argument("--chunk", type=int, default=1000,
                   help="GD steps per compiled call: bare loop and full-batch fit")
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    p.add_argument("--jit", action="store_true", help="XLA-compile all three")
    p.add_argument("--runs", type=int, default=3, help="alternating timed runs of each")
    p.add_argument("--threads", type=int, default=1,
                   help="TensorFlow CPU threads (1, as python -m keras_dynloss uses for the "
                        "spiral; 0 = TensorFlow's default)")
    p.add_argument("--no-keras-loop", action="store_true", dest="no_keras_loop",
                   help="skip the Keras-loop fit (slow under --jit)")
    args = p.parse_args()
    if args.steps % args.steps_per_epoch or args.steps_per_epoch % args.spe \
            or args.steps_per_epoch % args.chunk:
        p.error("--steps must be a multiple of --steps-per-epoch, and --steps-per-epoch "
                "a multiple of --spe and --chunk")
    set_cpu_threads(args.threads)
    x, y = spiral(dtype=args.dtype)
    weights = build_mlp(args.width, dtype=args.dtype, seed=0).get_weights()
    runners = {"fit, full batch": fit_runner(x, y, weights, args, full_batch=True)}
    if not args.no_keras_loop:
        runners["fit, Keras loop"] = fit_runner(x, y, weights, args, full_batch=False)
    runners["bare"] = bare_runner(x, y, weights, args)
    times = {name: [] for name in runners}
    cpus = {name: [] for name in runners}
    final = {}
    for _ in range(args.runs):  # alternate, so drifts in machine speed hit all alike
        for name, run in runners.items():
            seconds, cpu, final[name] = run()
            times[name].append(seconds)
            cpus[name].append(cpu)
    med = {name: statistics.median(t) for name, t in times.items()}
    med_cpu = {name: statistics.median(t) for name, t in cpus.items()}
    print(f"Fig. 4 loss-only run: {args.steps} steps, width {args.width}, {args.dtype}, "
          f"jit_compile={args.jit}, {args.threads or 'default'} TF threads, "
          f"{os.cpu_count()} CPU cores, medians of {args.runs} "
          f"alternating runs")
    for name, seconds in med.items():
        detail = {"fit, full batch": f"{args.chunk} GD steps per batch",
                  "fit, Keras loop": f"steps_per_execution={args.spe}",
                  "bare": f"tf.while_loop, {args.chunk} steps per call"}[name]
        print(f"  {name:16s} {seconds:7.2f} s  {1e6 * seconds / args.steps:7.1f} us/step  "
              f"(CPU {1e6 * med_cpu[name] / args.steps:6.1f} us/step)  "
              f"final acc {accuracy(final[name], x, y):.3f}  ({detail})")
    for name in runners:
        if name != "bare":
            paired = [a / b for a, b in zip(times[name], times["bare"])]
            print(f"  ratio {name} / bare: {med[name] / med['bare']:.3f} "
                  f"(paired {' '.join(f'{r:.2f}' for r in paired)}; CPU time "
                  f"{med_cpu[name] / med_cpu['bare']:.3f})")


if __name__ == "__main__":
    main()
