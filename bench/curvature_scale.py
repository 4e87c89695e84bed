"""Curvature probes at the sizes users train: a ResNet-style CNN and a 1.86M-parameter MLP.

CNN (`curvature_common.resnet_cnn`, 30.7k parameters, BatchNorm), Fashion-MNIST, probe batch
256, training batch 256, `SGD(0.05, momentum=0.9)`, `CurvatureProbe(lanczos_order=10,
ntk_order=10)` (warm start, tol 1e-3), TensorFlow without XLA (XLA's CPU backend runs
convolutions inside loops far slower, see `xla_cpu_conv_loop.py`):

* the first probe (build, trace, run), seconds (goal <= 20 s);
* the steady probe after every 25 training steps, in training steps (median of 4 probes over
  the median training step of the whole run; goal for Hessian + traced NTK <= 40), with the
  products per probe; and the Hessian alone.

MLP 784-1024-1024-10, batch 256: the steady Hessian probe in training steps, and
`ntk_eigenvalues` on 256 inputs (matrix-free: the dense Jacobian would be 35 GiB).

Run: PYTHONPATH=. python bench/curvature_scale.py [--skip-mlp]
"""

import argparse
import time

import keras
import numpy as np

from curvature_common import big_mlp, fashion, resnet_cnn
from keras_dynloss.curvature import CurvatureProbe, ntk_eigenvalues


def steady(model, x, y, probe, probes=4, between=25):
    """(first probe s, median steady probe s, median training step s, probe history)."""
    xb, yb = x[:256], y[:256]
    model.train_on_batch(xb, yb)
    t0 = time.perf_counter()
    probe.probe(model)
    first = time.perf_counter() - t0
    steps, probes_s = [], []
    for i in range(probes):
        for j in range(between):
            s = (i * between + j) * 256 % (len(x) - 256)
            t0 = time.perf_counter()
            model.train_on_batch(x[s:s + 256], y[s:s + 256])
            steps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        probe.probe(model)
        probes_s.append(time.perf_counter() - t0)
    return first, float(np.median(probes_s)), float(np.median(steps)), probe.history


def report(name, first, probe_s, step_s, history):
    cells = [f"first {first:5.1f} s", f"steady {probe_s:5.2f} s = {probe_s / step_s:5.1f} steps",
             f"Hessian products {np.mean(history['hessian_matvecs'][1:]):.2f}"]
    if "ntk_matvecs" in history:
        cells.append(f"NTK products {np.mean(history['ntk_matvecs'][1:]):.2f}")
    print(f"{name:24s} " + "   ".join(cells), flush=True)


def cnn(x, y, ntk):
    model = resnet_cnn()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return steady(model, x, y, CurvatureProbe((x[:256], y[:256]), lanczos_order=10, ntk=ntk,
                                              ntk_order=10))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-mlp", action="store_true")
    args = parser.parse_args()
    x, y = fashion()
    print("CNN, 30.7k parameters, probe batch 256 (goals: first <= 20 s, Hessian + NTK <= 40 "
          "training steps)")
    runs = {"Hessian + traced NTK": cnn(x, y, ntk=True), "Hessian alone": cnn(x, y, ntk=False)}
    step = float(np.median([r[2] for r in runs.values()]))  # the same model: one step time
    print(f"training step {step:.3f} s")
    for name, (first, probe_s, _, history) in runs.items():
        report(name, first, probe_s, step, history)
    if args.skip_mlp:
        return
    print("MLP 784-1024-1024-10, 1.86M parameters, batch 256")
    model = big_mlp()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    flat_x = x.reshape(len(x), -1)
    report("Hessian", *steady(model, flat_x, y, CurvatureProbe((flat_x[:256], y[:256]),
                                                                lanczos_order=10)))
    t0 = time.perf_counter()
    res = ntk_eigenvalues(model, flat_x[:256])
    print(f"{'ntk_eigenvalues, 256 inputs':24s} {time.perf_counter() - t0:.1f} s "
          f"({res.method}, {res.num_matvecs} products)")


if __name__ == "__main__":
    main()
