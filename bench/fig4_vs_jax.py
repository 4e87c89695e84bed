"""Whole-process time of the Fig. 4 job vs a plain JAX float64 loop in the authors' style.

Two commands, each timed as a whole process (start-up, imports, training,
output), alternated ``--runs`` times; prints the medians and their ratio
(target: <= 0.7 without probes).

* ours: ``python -m keras_dynloss fig4 --probe-every P --steps N --out DIR
  --no-progress`` — float64 by default, per-step F(t) and accuracy recorded,
  ``fig4.json`` and ``fig4.png`` written; with ``P > 0`` also Hessian and NTK
  λ_max every P steps.
* JAX: ``python bench/fig4_vs_jax.py --jax-loop`` — the authors' notebook loop
  (github miguel-rg/dynamical-loss-functions), cleaned up: ``jax_enable_x64``,
  ``stax.serial(Dense(100), Relu, Dense(3))`` from ``PRNGKey(0)``, Γ from the
  authors' ``c_fn`` inside one jitted step that returns the new parameters, F(t)
  and the accuracy; one jitted call per Python iteration, 70000 full-batch GD
  steps (η = 1, T = 5000, last period static), F(t) and accuracy kept per step
  and saved to ``.npz``. With ``P > 0`` a jitted Lanczos probe (order 10,
  forward-over-reverse HVPs, full reorthogonalisation) of the Hessian λ_max
  every P steps (no NTK: ours does strictly more work there).

``pip install jax`` (CPU) is needed for the JAX side only; it is not a
dependency of the package.

    python bench/fig4_vs_jax.py [--runs 5] [--steps 70000] [--probe-every 0]
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def jax_loop(steps, period, width, probe_every, out):
    """The JAX float64 training loop (run in its own process)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.example_libraries import stax
    from jax.flatten_util import ravel_pytree

    jax.config.update("jax_enable_x64", True)
    n, c, lr = 100, 3, 1.0
    np.random.seed(0)
    x = np.zeros((n * c, 2))
    y = np.zeros((n * c, c))
    for j in range(c):
        ix = range(n * j, n * (j + 1))
        r = np.linspace(0.0, 1, n)
        t = np.linspace(2 * np.pi * j / c, 2 * np.pi * j / c + 4 * np.pi, n) \
            + np.random.randn(n) * 0.2
        x[ix] = np.c_[r * np.cos(t), r * np.sin(t)]
        y[ix, j] = 1
    x, y = jax.device_put(x), jax.device_put(y)
    init_fn, apply_fn = stax.serial(stax.Dense(width), stax.Relu, stax.Dense(c))
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)

    def c_fn(t, i, w_max):  # the authors' Γ
        slope = 2 * (w_max - 1) / period
        w_main = jnp.where(t < period / 2.0, 1 + t * slope, 2 * w_max - t * slope - 1)
        res = jnp.ones(c) + (w_main - 1) * jnp.eye(c)[i]
        return res / jnp.sum(res) * c

    def weighted_loss(p, t, i, w_max):
        logits = apply_fn(p, x)
        return -jnp.mean(jax.nn.log_softmax(logits) * y * c_fn(t, i, w_max)) * c, logits

    @jax.jit
    def step(p, t, i, w_max):
        (f, logits), g = jax.value_and_grad(weighted_loss, has_aux=True)(p, t, i, w_max)
        acc = jnp.mean(jnp.argmax(logits, 1) == jnp.argmax(y, 1))
        return jax.tree_util.tree_map(lambda a, da: a - lr * da, p, g), f, acc

    flat0, unravel = ravel_pytree(params)

    @jax.jit
    def lanczos_max(p, t, i, w_max, v0, order=10):
        def loss_flat(w):
            return weighted_loss(unravel(w), t, i, w_max)[0]

        w = ravel_pytree(p)[0]

        def hvp(v):
            return jax.jvp(jax.grad(loss_flat), (w,), (v,))[1]

        vs = jnp.zeros((order, w.size)).at[0].set(v0 / jnp.linalg.norm(v0))
        alphas, betas = jnp.zeros(order), jnp.zeros(order)
        for k in range(order):
            q = vs[k]
            z = hvp(q)
            a = z @ q
            z = z - vs.T @ (vs @ z)  # full reorthogonalisation
            z = z - vs.T @ (vs @ z)
            b = jnp.linalg.norm(z)
            alphas, betas = alphas.at[k].set(a), betas.at[k].set(b)
            if k + 1 < order:
                vs = vs.at[k + 1].set(z / b)
        tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
        return jnp.linalg.eigvalsh(tri)[-1]

    losses, accs, probes = [], [], []
    v0 = jax.random.normal(jax.random.PRNGKey(1), flat0.shape, dtype=jnp.float64)
    t, cls, w_max = 0, 0, 70.0
    for k in range(steps):
        if probe_every and k % probe_every == 0:
            probes.append(lanczos_max(params, t, cls, w_max, v0))
        params, f, acc = step(params, t, cls, w_max)
        losses.append(f)
        accs.append(acc)
        t += 1
        if t >= period:  # new period: next class; the last period is static
            t, cls = 0, (cls + 1) % c
            if k + 1 >= steps - period:
                w_max = 1.0
    np.savez(out, loss=np.asarray(jax.device_get(losses)),
             accuracy=np.asarray(jax.device_get(accs)),
             hessian_max_eig=np.asarray(jax.device_get(probes)))
    print(f"JAX: final accuracy {float(accs[-1]):.4f}")


def timed(cmd, env, cwd):
    """Wall seconds, CPU seconds (user + sys, all threads) and the finished process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, proc


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps", type=int, default=70000)
    p.add_argument("--period", type=int, default=5000)
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--probe-every", type=int, default=0, dest="probe_every")
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"),
                   help="dtype of our run (the JAX loop is float64, as the authors')")
    p.add_argument("--repo", default=None,
                   help="run ours from this checkout (e.g. an older commit, for before/after)")
    p.add_argument("--jax-loop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.jax_loop:
        jax_loop(args.steps, args.period, args.width, args.probe_every, args.out)
        return
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a new user runs it
    repo = os.path.abspath(args.repo) if args.repo else os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    ours_t, jax_t, ours_c, jax_c = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        ours = [sys.executable, "-m", "keras_dynloss", "fig4", "--steps", str(args.steps),
                "--period", str(args.period), "--width", str(args.width),
                "--probe-every", str(args.probe_every), "--dtype", args.dtype,
                "--out", tmp, "--no-progress"]
        theirs = [sys.executable, os.path.abspath(__file__), "--jax-loop",
                  "--steps", str(args.steps), "--period", str(args.period),
                  "--width", str(args.width), "--probe-every", str(args.probe_every),
                  "--out", os.path.join(tmp, "jax.npz")]
        for run in range(args.runs):
            s, c, proc = timed(ours, env, tmp)  # cwd: not this checkout (see --repo)
            ours_t.append(s)
            ours_c.append(c)
            if run == 0:
                noise = proc.stderr.strip()
                if noise:
                    print("  (ours wrote to stderr:)\n    " + noise.replace("\n", "\n    "))
                for name in ("fig4.json", "fig4.png"):
                    if not os.path.exists(os.path.join(tmp, name)):
                        sys.exit(f"ours did not write {name}")
            s, c, _ = timed(theirs, env, tmp)
            jax_t.append(s)
            jax_c.append(c)
            print(f"  run {run + 1}: ours {ours_t[-1]:6.2f} s ({ours_c[-1]:5.1f} s CPU)   "
                  f"JAX {jax_t[-1]:6.2f} s ({jax_c[-1]:5.1f} s CPU)", flush=True)
    mo, mj = statistics.median(ours_t), statistics.median(jax_t)
    ratios = [a / b for a, b in zip(ours_t, jax_t)]
    print(f"Fig. 4 whole process, {args.steps} steps, width {args.width}, ours {args.dtype}"
          f"{' from ' + args.repo if args.repo else ''}, "
          f"probes every {args.probe_every or 'never'}, {os.cpu_count()} CPU cores, "
          f"{args.runs} alternating runs")
    co, cj = statistics.median(ours_c), statistics.median(jax_c)
    print(f"  python -m keras_dynloss fig4: median {mo:6.2f} s  ({co:5.1f} s CPU)")
    print(f"  JAX float64 loop:             median {mj:6.2f} s  ({cj:5.1f} s CPU)")
    print(f"  ratio ours / JAX: {mo / mj:.3f} (median of paired ratios "
          f"{statistics.median(ratios):.3f}; CPU time {co / cj:.3f})")


if __name__ == "__main__":
    main()
