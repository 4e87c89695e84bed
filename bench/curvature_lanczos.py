"""Hessian-vector products needed for lambda_max to 1e-3 relative error.

Lanczos (full float64 reorthogonalisation) vs power iteration, same operator,
spiral MLP 2-100-3 (ReLU) full batch, at initialisation and after training.
Reference: eigvalsh of the dense Hessian (n = 603). Medians over seeds.

Run: PYTHONPATH=. python bench/curvature_lanczos.py
"""

import argparse

import keras
import numpy as np

from curvature_common import spiral, spiral_mlp
from keras_dynloss.curvature import HessianOperator, lanczos_tridiagonal


def lanczos_count(op, exact, seed, max_order=80, rtol=1e-3):
    dec = lanczos_tridiagonal(op, op.size, order=max_order, seed=seed, keep_basis=False)
    t = dec.tridiagonal()
    for m in range(1, max_order + 1):
        top = np.linalg.eigvalsh(t[:m, :m])[-1]
        if abs(top - exact) <= rtol * abs(exact):
            return m
    return None


def power_count(op, exact, seed, max_iter=5000, rtol=1e-3):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(op.size)
    u /= np.linalg.norm(u)
    for i in range(1, max_iter + 1):
        w = op(u)
        lam = u @ w
        if abs(lam - exact) <= rtol * abs(exact):
            return i
        u = w / np.linalg.norm(w)
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=2000)
    args = parser.parse_args()
    x, y = spiral()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = spiral_mlp()
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss)
    for label in ("init", f"after {args.train_steps} GD steps (lr 1)"):
        if label != "init":
            model.fit(x, y, batch_size=300, epochs=args.train_steps, verbose=0, shuffle=False)
        op = HessianOperator(model, loss, (x, y))
        spectrum = np.linalg.eigvalsh(0.5 * (op.dense() + op.dense().T))
        exact = spectrum[-1]
        lz = [lanczos_count(op, exact, s) for s in range(args.seeds)]
        pw = [power_count(op, exact, s) for s in range(args.seeds)]
        print(f"\nspiral MLP, {label}: lambda_max={exact:.4f}, lambda_2={spectrum[-2]:.4f} "
              f"(gap ratio {spectrum[-2] / exact:.3f}), n={op.size}")
        print(f"  Lanczos HVPs to 1e-3:         per seed {lz}  median {np.median(lz):.0f}")
        print(f"  power iteration HVPs to 1e-3: per seed {pw}  median {np.median([p or 5000 for p in pw]):.0f}")


if __name__ == "__main__":
    main()
