"""Cost of probing curvature during training, paper Fig. 4 setup.

The package's spiral (`keras_dynloss.datasets.spiral`, 3 arms x 100 points),
MLP 2-100-3 (ReLU), full-batch gradient descent with `SGD(1.0)`, `--steps`
steps (70000 in the paper), `steps_per_execution=25`, the dynamical loss
`DynamicalLoss(A=70, T=5000)` with `DynamicalLossScheduler` (`--plain` for
cross-entropy). The probed run adds `CurvatureProbe(every_n_steps=25)`:
Hessian lambda_max by Lanczos warm-started from the previous probe's Ritz
vector (plus a random component), stopped at a relative residual `--tol`
(1e-3), at most `--order` products; `--ntk` adds the NTK lambda_max,
`--cold` disables the warm start, `--jit` compiles the probe with XLA.

Baseline and probed runs alternate `--repeats` times; the ratio of the medians
is printed with the Hessian-vector products per probe and the residuals, and
the final weights of both runs are checked to be identical.

Run: PYTHONPATH=. python bench/curvature_fig4.py --steps 70000
"""

import argparse
import time

import keras
import numpy as np

from curvature_common import spiral, spiral_mlp
from keras_dynloss.curvature import CurvatureProbe
from keras_dynloss.experiments._spiral import full_batch_dataset


def run(x, y, steps, spe, callbacks, plain):
    from keras_dynloss import DynamicalLoss, DynamicalLossScheduler

    model = spiral_mlp(seed=0)
    if plain:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        loss = DynamicalLoss(3, amplitude=70.0, period=5000, from_logits=True)
        callbacks = [DynamicalLossScheduler(log_weights=False)] + callbacks
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss, steps_per_execution=spe)
    per_epoch = min(steps, 1000)
    ds = full_batch_dataset(x, y)
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=per_epoch, epochs=steps // per_epoch, verbose=0, shuffle=False,
              callbacks=callbacks)
    return time.perf_counter() - t0, model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=70000)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--spe", type=int, default=25)
    parser.add_argument("--order", type=int, default=20)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--noise", type=float, default=0.01, help="warm_start_noise")
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--ntk", action="store_true")
    parser.add_argument("--jit", action="store_true", help="CurvatureProbe(jit_compile=True)")
    parser.add_argument("--plain", action="store_true", help="cross-entropy instead of the dynamical loss")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    x, y = spiral()
    steps = args.steps - args.steps % min(args.steps, 1000)
    base_times, probe_times = [], []
    for _ in range(args.repeats):
        t, base = run(x, y, steps, args.spe, [], args.plain)
        base_times.append(t)
        probe = CurvatureProbe((x, y), every_n_steps=args.every, lanczos_order=args.order, tol=args.tol,
                               warm_start=not args.cold, warm_start_noise=args.noise, ntk=args.ntk,
                               jit_compile=args.jit)
        t, probed = run(x, y, steps, args.spe, [probe], args.plain)
        probe_times.append(t)
    same = all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(base.variables, probed.variables))
    h = probe.history
    n_probes = len(h["step"])
    hvps = np.array(h["hessian_matvecs"])
    rel = np.array(h["hessian_max_eig_residual"]) / np.abs(h["hessian_max_eig"])
    t_base, t_probe = np.median(base_times), np.median(probe_times)
    print(f"steps={steps} steps_per_execution={args.spe}, {'cross-entropy' if args.plain else 'DynamicalLoss(A=70, T=5000)'}; "
          f"probe every {args.every} steps: Hessian lambda_max, Lanczos {'cold' if args.cold else 'warm'} start, "
          f"tol {args.tol:g}, at most {args.order} HVPs" + (", + NTK" if args.ntk else "")
          + (", XLA" if args.jit else ""))
    print(f"  baseline fit: {t_base:8.2f} s  ({t_base / steps * 1e6:.1f} us/step)  runs {np.round(base_times, 2)}")
    print(f"  probed fit:   {t_probe:8.2f} s  ({n_probes} probes, {(t_probe - t_base) / n_probes * 1e3:.2f} ms extra "
          f"per probe)  runs {np.round(probe_times, 2)}")
    print(f"  ratio probed/baseline (medians of {args.repeats}): {t_probe / t_base:.2f}  (goal <= 1.3)")
    print(f"  HVPs per probe: mean {hvps.mean():.2f}, median {np.median(hvps):.0f}, max {hvps.max()} "
          f"(first probe {hvps[0]}); relative residual max {rel.max():.2e}, "
          f"above tol in {(rel > args.tol).sum()} of {n_probes} probes")
    print(f"  final weights identical: {same}")
    for i in sorted({0, n_probes // 4, n_probes // 2, 3 * n_probes // 4, n_probes - 1}):
        ntk = f"  ntk_max_eig={h['ntk_max_eig'][i]:.3f}" if "ntk_max_eig" in h else ""
        print(f"  step {h['step'][i]:6d}: hessian_max_eig={h['hessian_max_eig'][i]:.4f} "
              f"(residual {h['hessian_max_eig_residual'][i]:.1e}, {h['hessian_matvecs'][i]} HVPs)  "
              f"eos_ratio={h['eos_ratio'][i]:.3f}{ntk}")


if __name__ == "__main__":
    main()
