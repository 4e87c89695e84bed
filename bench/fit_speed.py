"""Speed of the Fig. 4 training through ``model.fit`` against a bare compiled TF loop.

The loss-only Fig. 4 run (TensorFlow): spiral (300 points), Dense(100)-ReLU-Dense(3),
full-batch GD with η = 1, the dynamical cross-entropy (A = 70, T = 5000, last period
static), ``--steps`` steps, no recording. Two ways, same process, same initial weights,
timed alternately ``--runs`` times after one untimed warm-up (trace and compile) each:

* ``fit``: what ``python -m keras_dynloss fig4 --probe-every 0`` trains, built by
  ``experiments._spiral.build_runner``: a ``FullBatchSequential`` running ``--chunk`` GD
  updates per ``fit`` batch as one compiled loop, ``DynamicalLossScheduler``, one ``fit``;
* ``bare``: one ``tf.function`` holding a ``tf.while_loop`` of ``--chunk`` GD steps on plain
  ``tf.Variable``s, Γ(t) from the same ``ClassWeightSchedule``, the weighted cross-entropy
  written with ``tf.nn``, called steps / chunk times.

``--jit`` XLA-compiles both. Prints the median times, µs per step, the ratio fit / bare
(goal <= 1.1, also with ``--jit``) and how far the two differ after the first chunk.

    python bench/fit_speed.py [--steps 70000] [--dtype float64] [--jit] [--runs 3] [--threads 1]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_dynloss.experiments._spiral import build_runner  # noqa: E402
from keras_dynloss.experiments.workers import set_cpu_threads  # noqa: E402


def fit_runner(runner, weights, steps):
    model = runner.model
    kwargs = dict(runner.fit_kwargs, callbacks=runner.callbacks)

    def run():
        model.set_weights(weights)
        model.optimizer.iterations.assign(0)
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(**kwargs)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert int(model.optimizer.iterations.numpy()) == steps
        return seconds, cpu

    model.set_weights(weights)
    model.fit(**dict(kwargs, epochs=1))  # trace and compile: one chunk of updates
    return run, model.get_weights()


def bare_runner(runner, weights, args):
    variables = [tf.Variable(w) for w in weights]
    step = tf.Variable(0, dtype=tf.int64)
    schedule = runner.loss.schedule
    x, y = tf.constant(runner.x), tf.constant(runner.y, tf.int32)

    def gd_step():
        w1, b1, w2, b2 = variables
        gamma = schedule(step, dtype=args.dtype)
        with tf.GradientTape() as tape:
            logits = tf.matmul(tf.nn.relu(tf.matmul(x, w1) + b1), w2) + b2
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            loss = tf.reduce_mean(tf.gather(gamma, y) * ce)
        for v, g in zip(variables, tape.gradient(loss, variables)):
            v.assign_sub(args.learning_rate * g)
        step.assign_add(1)

    @tf.function(jit_compile=args.jit)
    def chunk(n):
        for _ in tf.range(n):
            gd_step()

    def run():
        for v, w in zip(variables, weights):
            v.assign(w)
        step.assign(0)
        start, cpu = time.perf_counter(), time.process_time()
        for done in range(0, args.steps, args.chunk):
            chunk(tf.constant(min(args.chunk, args.steps - done), tf.int64))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert int(step.numpy()) == args.steps
        return seconds, cpu

    chunk(tf.constant(args.chunk, tf.int64))  # trace and compile: one chunk of updates
    return run, [v.numpy() for v in variables]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=70000)
    p.add_argument("--period", type=int, default=5000)
    p.add_argument("--amplitude", type=float, default=70.0)
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--learning-rate", type=float, default=1.0, dest="learning_rate")
    p.add_argument("--chunk", type=int, default=None,
                   help="GD steps per compiled call (default: steps / 20, as the fig4 CLI)")
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    p.add_argument("--jit", action="store_true", help="XLA-compile both")
    p.add_argument("--runs", type=int, default=3, help="alternating timed runs of each")
    p.add_argument("--threads", type=int, default=1,
                   help="TensorFlow CPU threads (1, as the fig4 CLI; 0: TensorFlow's default)")
    args = p.parse_args()
    args.chunk = args.chunk or -(-args.steps // 20)
    set_cpu_threads(args.threads)
    runner = build_runner(width=args.width, amplitude=args.amplitude, period=args.period,
                          steps=args.steps, seed=0, data_seed=0,
                          learning_rate=args.learning_rate, dtype=args.dtype, record=False,
                          probe_every=0, probe_ntk=False, updates_per_batch=args.chunk,
                          jit_compile=args.jit, loss="ce")
    weights = runner.model.get_weights()
    (fit, fit_warm), (bare, bare_warm) = (fit_runner(runner, weights, args.steps),
                                          bare_runner(runner, weights, args))
    runs = {"fit": fit, "bare": bare}
    times, cpus = {n: [] for n in runs}, {n: [] for n in runs}
    for _ in range(args.runs):  # alternate, so drifts in machine speed hit both alike
        for name, run in runs.items():
            seconds, cpu = run()
            times[name].append(seconds)
            cpus[name].append(cpu)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"Fig. 4 loss-only run: {args.steps} steps ({args.chunk} per compiled call), width "
          f"{args.width}, {args.dtype}, jit_compile={args.jit}, {args.threads or 'default'} TF "
          f"threads, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}, medians of "
          f"{args.runs} alternating runs")
    for name in runs:
        print(f"  {name:5s} {med[name]:7.2f} s  {1e6 * med[name] / args.steps:7.1f} us/step  "
              f"(CPU {1e6 * statistics.median(cpus[name]) / args.steps:6.1f} us/step)")
    paired = [a / b for a, b in zip(times["fit"], times["bare"])]
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(fit_warm, bare_warm))
    print(f"  ratio fit / bare: {med['fit'] / med['bare']:.3f} (paired "
          f"{' '.join(f'{r:.2f}' for r in paired)})  goal <= 1.1")
    print(f"  same steps: weights after the first {args.chunk} updates, fit vs bare, max "
          f"|difference| {diff:.1e} (later, rounding differences grow: GD on the edge of "
          "stability)")


if __name__ == "__main__":
    main()
