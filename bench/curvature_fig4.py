"""Cost of probing curvature during training, paper Fig. 4 setup.

Spiral (3 arms x 100 points), MLP 2-100-3 (ReLU), full-batch gradient descent
with keras.optimizers.SGD(1.0), `--steps` steps (70000 in the paper), compiled
with steps_per_execution=25. The probed run adds
`CurvatureProbe(every_n_steps=25, lanczos_order=10, ntk=True, ntk_order=10)`:
Hessian lambda_max (Lanczos, 10 HVPs) and NTK lambda_max (Lanczos on the traced
300x300 NTK, 10 products) every 25 steps, each probe one compiled call.
Prints wall-clock time of both runs and their ratio (goal <= 3); also checks
that the final weights are identical.

Run: PYTHONPATH=. python bench/curvature_fig4.py --steps 70000
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from curvature_common import spiral, spiral_mlp
from keras_dynloss.curvature import CurvatureProbe


def make_loss(dynamical):
    if dynamical:
        from keras_dynloss import DynamicalLoss

        return DynamicalLoss(3, amplitude=70.0, period=5000, from_logits=True)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def run(x, y, steps, spe, steps_per_epoch, callbacks, dynamical):
    model = spiral_mlp(seed=0)
    loss = make_loss(dynamical)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss, steps_per_execution=spe)
    if dynamical:
        from keras_dynloss import DynamicalLossScheduler

        callbacks = [DynamicalLossScheduler()] + callbacks
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps_per_epoch, epochs=steps // steps_per_epoch, verbose=0, callbacks=callbacks)
    return time.perf_counter() - t0, model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=70000)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--spe", type=int, default=25)
    parser.add_argument("--order", type=int, default=10)
    parser.add_argument("--ntk-order", type=int, default=10)
    parser.add_argument("--no-ntk", action="store_true")
    parser.add_argument("--hvp-mode", default="reverse_over_reverse")
    parser.add_argument("--dynamical", action="store_true", help="DynamicalLoss(A=70, T=5000) + scheduler")
    args = parser.parse_args()
    x, y = spiral()
    steps_per_epoch = min(args.steps, 1000)
    steps = args.steps - args.steps % steps_per_epoch
    # Short warm-up of both code paths (tracing is counted below anyway).
    t_base, base = run(x, y, steps, args.spe, steps_per_epoch, [], args.dynamical)
    probe = CurvatureProbe(
        (x, y), every_n_steps=args.every, lanczos_order=args.order, ntk=not args.no_ntk,
        ntk_order=args.ntk_order, hvp_mode=args.hvp_mode,
    )
    t_probe, probed = run(x, y, steps, args.spe, steps_per_epoch, [probe], args.dynamical)
    same = all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(base.variables, probed.variables))
    n_probes = len(probe.history["step"])
    print(f"steps={steps} steps_per_execution={args.spe} probe every {args.every} steps "
          f"(Hessian Lanczos order {args.order}" + ("" if args.no_ntk else f", NTK Lanczos order {args.ntk_order}") + f", {args.hvp_mode})")
    print(f"  baseline fit:  {t_base:8.2f} s  ({t_base / steps * 1e6:.1f} us/step)")
    print(f"  probed fit:    {t_probe:8.2f} s  ({n_probes} probes, {(t_probe - t_base) / n_probes * 1e3:.2f} ms extra per probe)")
    print(f"  ratio probed/baseline: {t_probe / t_base:.2f}  (goal <= 3)")
    print(f"  final weights identical: {same}")
    h = probe.history
    for i in sorted({0, n_probes // 4, n_probes // 2, 3 * n_probes // 4, n_probes - 1}):
        ntk = f"  ntk_max_eig={h['ntk_max_eig'][i]:.3f}" if "ntk_max_eig" in h else ""
        print(f"  step {h['step'][i]:6d}: hessian_max_eig={h['hessian_max_eig'][i]:.4f}  eos_ratio={h['eos_ratio'][i]:.3f}{ntk}")


if __name__ == "__main__":
    main()
