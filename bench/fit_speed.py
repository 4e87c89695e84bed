"""Speed of the Fig. 4 training through ``model.fit`` vs a bare compiled loop.

The loss-only Fig. 4 run: spiral (300 points), Dense(100)-ReLU-Dense(3),
full-batch GD with η = 1, DynamicalLoss(A=70, T=5000, last period static),
70000 steps. Two ways, same process, same initial weights:

* ``fit``: ``model.fit`` over ``tf.data.Dataset.from_tensors((x, y)).repeat()``
  with ``steps_per_execution=K`` and ``DynamicalLossScheduler`` (the package);
* ``bare``: one ``tf.function`` holding a ``tf.while_loop`` of
  ``--chunk`` GD steps on plain ``tf.Variable``s, Γ(t) from the same schedule
  and :func:`~keras_dynloss.dynamical_crossentropy`, called steps/chunk times.

Each is run once to trace/compile (not timed) and once timed. Prints both
times, ms/step, the ratio fit / bare and the final training accuracies (the
authors' JAX loop takes about 19 s, 0.27 ms/step, on a 2-core CPU).

    python bench/fit_speed.py [--steps 70000] [--spe 1000] [--dtype float32] [--jit]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_dynloss as kd  # noqa: E402
from keras_dynloss.datasets import spiral  # noqa: E402
from keras_dynloss.experiments._spiral import build_mlp  # noqa: E402


def make_loss(steps, period, amplitude, dtype="float32"):
    return kd.DynamicalLoss(3, amplitude=amplitude, period=period, from_logits=True,
                            static_after=steps - period, dtype=dtype)


def run_fit(x, y, weights, args):
    model = build_mlp(args.width, dtype=args.dtype)
    model.set_weights(weights)
    loss = make_loss(args.steps, args.period, args.amplitude, args.dtype)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss,
                  steps_per_execution=args.spe, jit_compile=args.jit)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    epoch = args.steps_per_epoch
    cb = [kd.DynamicalLossScheduler(log_weights=False)]
    model.fit(data, epochs=1, steps_per_epoch=args.spe, verbose=0, callbacks=cb,
              shuffle=False)  # trace
    model.set_weights(weights)
    model.optimizer.iterations.assign(0)
    start = time.perf_counter()
    model.fit(data, epochs=args.steps // epoch, steps_per_epoch=epoch, verbose=0,
              callbacks=cb, shuffle=False)
    seconds = time.perf_counter() - start
    acc = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    return seconds, acc, int(model.optimizer.iterations.numpy())


def run_bare(x, y, weights, args):
    dtype = tf.as_dtype(args.dtype)
    variables = [tf.Variable(w) for w in weights]
    step = tf.Variable(0, dtype=tf.int64)
    schedule = make_loss(args.steps, args.period, args.amplitude, args.dtype).schedule
    xt, yt = tf.constant(x), tf.constant(y)

    def gd_step():
        w1, b1, w2, b2 = variables
        gamma = schedule(step, dtype=dtype)
        with tf.GradientTape() as tape:
            logits = tf.matmul(tf.nn.relu(tf.matmul(xt, w1) + b1), w2) + b2
            loss = tf.reduce_mean(kd.dynamical_crossentropy(yt, logits, gamma,
                                                            from_logits=True))
        grads = tape.gradient(loss, variables)
        for v, g in zip(variables, grads):
            v.assign_sub(g)
        step.assign_add(1)

    @tf.function(jit_compile=args.jit)
    def chunk(n):
        for _ in tf.range(n):
            gd_step()

    n = tf.constant(args.chunk, tf.int64)
    chunk(n)  # trace
    for v, w in zip(variables, weights):
        v.assign(w)
    step.assign(0)
    start = time.perf_counter()
    for _ in range(args.steps // args.chunk):
        chunk(n)
    seconds = time.perf_counter() - start
    w1, b1, w2, b2 = [v.numpy() for v in variables]
    logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    return seconds, float(np.mean(logits.argmax(-1) == y)), int(step.numpy())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=70000)
    p.add_argument("--period", type=int, default=5000)
    p.add_argument("--amplitude", type=float, default=70.0)
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--spe", type=int, default=1000, help="steps_per_execution of fit")
    p.add_argument("--steps-per-epoch", type=int, default=7000, dest="steps_per_epoch")
    p.add_argument("--chunk", type=int, default=7000, help="steps per bare-loop call")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--jit", action="store_true", help="XLA-compile both")
    args = p.parse_args()
    if args.steps % args.steps_per_epoch or args.steps_per_epoch % args.spe \
            or args.steps % args.chunk:
        p.error("--steps must be a multiple of --steps-per-epoch and --chunk, "
                "--steps-per-epoch a multiple of --spe")
    x, y = spiral()
    x = x.astype(args.dtype)
    weights = build_mlp(args.width, dtype=args.dtype, seed=0).get_weights()
    t_fit, acc_fit, n_fit = run_fit(x, y, weights, args)
    t_bare, acc_bare, n_bare = run_bare(x, y, weights, args)
    print(f"Fig. 4 loss-only run: {args.steps} steps, width {args.width}, {args.dtype}, "
          f"jit={args.jit}, {os.cpu_count()} CPU cores")
    print(f"  model.fit (steps_per_execution={args.spe}): {t_fit:7.2f} s  "
          f"{1e3 * t_fit / args.steps:.4f} ms/step  final acc {acc_fit:.3f}  ({n_fit} steps)")
    print(f"  bare compiled loop (chunk {args.chunk}):     {t_bare:7.2f} s  "
          f"{1e3 * t_bare / args.steps:.4f} ms/step  final acc {acc_bare:.3f}  ({n_bare} steps)")
    print(f"  ratio fit / bare: {t_fit / t_bare:.3f}")


if __name__ == "__main__":
    main()
