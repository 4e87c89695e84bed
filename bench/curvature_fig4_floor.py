"""Where the Fig. 4 in-step probes' cost goes: products against training updates.

`curvature_fig4_in_step.py` times whole runs in fresh processes, and this VM's
noise between processes (up to 2x) hides what the ratio is made of. This bench
runs the same job in ONE process as two models trained in lockstep, one
compiled call (`--per-call` updates) of each in turn: the runner's
`FullBatchSequential` step (float64, XLA, F(t) recorded, SGD with eta = 1, the
spiral's dynamical loss), one with the runner's `InStepProbe` (Hessian
lambda_max every `--every` steps, warm start, tolerance 1e-3, at most 10
products), one without. Printed:

* the first call of each (trace + XLA compile + one call of updates) and the
  one-time extra of the probe;
* the steady ratio: median probed call / median unprobed call (compile
  excluded), and the whole-run ratio these give;
* what one probe is made of, timed in compiled loops of the same process: one
  GD update of that model (forward, loss, gradient, SGD; no F(t) record), one
  Hessian product of the probe (`hessian.linearized_curvature_fn`; the first
  one with its linearisation), a Lanczos step of the probe and
  its fixed part (`ProbeGraph.compute` at 1 and 4 steps); with the products per
  probe of the run, the ratio the products alone give.

Run: PYTHONPATH=. python bench/curvature_fig4_floor.py [--steps 70000]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_dynloss.curvature import CurvatureProbe  # noqa: E402
from keras_dynloss.curvature import flat as flat_lib  # noqa: E402
from keras_dynloss.curvature import hessian  # noqa: E402
from keras_dynloss.datasets import spiral  # noqa: E402
from keras_dynloss.experiments._spiral import build_runner  # noqa: E402


def runner_model(steps, per_call, every):
    """The fig4 runner's compiled model (`build_runner`, as `train_spiral`
    builds it: float64, XLA, F(t) recorded, its `InStepProbe` without the NTK
    when `every`); returns `(model, compiled step, in_step or None)`."""
    runner = build_runner(width=100, amplitude=70.0, period=5000, steps=steps, seed=0, data_seed=0,
                          learning_rate=1.0, dtype="float64", record=True, probe_every=every, probe_ntk=False,
                          updates_per_batch=per_call, jit_compile=True, loss="ce")
    model = runner.model
    runner.loss.bind(model)  # what the runner's DynamicalLossScheduler does in `fit`
    xs, ys = tf.constant(runner.x), tf.constant(runner.y)
    step = tf.function(lambda: model.train_step((xs, ys))["loss"], jit_compile=True, autograph=False)
    return model, step, runner.in_step


def timed_loop(body, trips):
    """Seconds per trip of `body(a)` run `trips` times in one compiled loop
    (`a`, the running sum, keeps XLA from hoisting the body out of the loop)."""
    fn = tf.function(lambda: tf.while_loop(lambda i, a: i < trips, lambda i, a: (i + 1, a + body(a)),
                                           (0, tf.constant(0.0, tf.float64)))[1],
                     jit_compile=True, autograph=False)
    fn()
    return fn


def pieces(model, every, trips=300, repeats=7):
    """Per-trip microseconds of a GD update, a product, a probe's Lanczos step."""
    x, y = spiral(dtype="float64")
    xs, ys = tf.constant(x), tf.constant(y)
    loss, opt, variables = model.loss, model.optimizer, model.trainable_variables
    flat = flat_lib.FlatParameters(model)

    def update(a):  # forward, loss, gradient, SGD (1e-12 x the step: the weights stay put)
        with tf.GradientTape() as tape:
            value = loss(ys, model(xs + a * 1e-300, training=True))
        opt.apply([g * 1e-12 for g in tape.gradient(value, variables)], variables)
        return value

    linearized = hessian.linearized_curvature_fn(flat, loss)
    v = tf.constant(np.random.default_rng(0).normal(size=flat.size))

    def products(k):
        def body(a):
            matvec, w = linearized(flat.read(), xs + a * 1e-300, ys, None), v
            for _ in range(k):
                w = matvec(w) * 1e-3
            return tf.reduce_sum(w)
        return body

    def probe(order):
        graph = CurvatureProbe((x, y), every_n_steps=every, ntk=False, lanczos_order=order,
                               tol=None).build_for(model)
        start = tf.constant(np.random.default_rng(1).normal(size=flat.size))
        return lambda a: graph.compute(xs, ys, None, start + a * 1e-300, tf.constant([0, 1], tf.int64))[0][0]

    fns = {"update": update, "1 product": products(1), "3 products": products(3), "probe, 1 step": probe(1),
           "probe, 4 steps": probe(4)}
    fns = {name: timed_loop(body, trips) for name, body in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn().numpy()
            times[name].append((time.perf_counter() - t) / trips * 1e6)
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=70000)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--per-call", type=int, default=3500, dest="per_call")
    args = p.parse_args()
    calls = args.steps // args.per_call
    models = {"unprobed": runner_model(args.steps, args.per_call, 0),
              "probed": runner_model(args.steps, args.per_call, args.every)}
    first, times = {}, {name: [] for name in models}
    for name, (_, step, _) in models.items():
        t = time.perf_counter()
        step().numpy()
        first[name] = time.perf_counter() - t
    for _ in range(calls - 1):
        for name, (_, step, _) in models.items():
            t = time.perf_counter()
            step().numpy()
            times[name].append(time.perf_counter() - t)
    model, _, in_step = models["probed"]
    in_step.flush()
    history = in_step.probe.history
    hvps = np.asarray(history["hessian_matvecs"])
    weights_equal = all(np.array_equal(a.numpy(), b.numpy()) for a, b in
                        zip(models["unprobed"][0].trainable_variables, model.trainable_variables))
    med = {name: float(np.median(t)) for name, t in times.items()}
    extra_first = (first["probed"] - med["probed"]) - (first["unprobed"] - med["unprobed"])
    steady = med["probed"] / med["unprobed"]
    whole = {name: first[name] + sum(times[name]) for name in models}
    print(f"fig4 runner in one process: {args.steps} steps float64 XLA, {calls} calls of {args.per_call} "
          f"updates per model, alternating; probe every {args.every} steps ({len(hvps)} probes)")
    print(f"  first call (trace + compile + {args.per_call} updates): unprobed {first['unprobed']:.2f} s, "
          f"probed {first['probed']:.2f} s; one-time extra of the probe {extra_first:.2f} s")
    print(f"  median call: unprobed {med['unprobed']:.3f} s ({med['unprobed'] / args.per_call * 1e6:.1f} us an "
          f"update), probed {med['probed']:.3f} s; steady ratio {steady:.3f}")
    print(f"  whole run: unprobed {whole['unprobed']:.2f} s, probed {whole['probed']:.2f} s, ratio "
          f"{whole['probed'] / whole['unprobed']:.3f} (goal <= 1.3); training identical: {weights_equal}")
    print(f"  products per probe: mean {hvps.mean():.3f}, median {np.median(hvps):.0f}, "
          f"counts {({int(k): int(c) for k, c in zip(*np.unique(hvps, return_counts=True))})}")
    us = pieces(model, args.every)
    product = (us["3 products"] - us["1 product"]) / 2
    lanczos_step = (us["probe, 4 steps"] - us["probe, 1 step"]) / 3
    fixed = us["probe, 1 step"] - lanczos_step
    probe_us = fixed + hvps.mean() * lanczos_step
    print(f"  one GD update {us['update']:.1f} us; the first product (its linearisation included) "
          f"{us['1 product']:.1f} us, each further one {product:.1f} us = {product / us['update']:.2f} updates")
    print(f"  probe: Lanczos step {lanczos_step:.1f} us, fixed part {fixed:.1f} us; at {hvps.mean():.2f} "
          f"steps {probe_us:.0f} us = {probe_us / us['update']:.2f} updates")
    print(f"  ratio from the probes' compiled work alone: 1 + {probe_us / us['update']:.2f} / {args.every} = "
          f"{1 + probe_us / (args.every * us['update']):.3f}; with the one-time extra over this run's "
          f"unprobed time: {1 + probe_us / (args.every * us['update']) + extra_first / whole['unprobed']:.3f}")


if __name__ == "__main__":
    main()
