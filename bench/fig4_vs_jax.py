"""The Fig. 4 job, whole process each, against two JAX loops written by hand.

Up to five commands, each timed as a whole process (start-up, imports, training, outputs),
alternated ``--runs`` times (the order rotates each run); prints the medians, the CPU
times, the training time each reports (``fit``, or the JAX loop with its compilation) and
the ratios against the goals:

* ``ours (TF)``: ``python -m keras_dynloss fig4 --probe-every P --out DIR --no-progress``
  (``FullBatchSequential`` through ``model.fit``, F(t) and accuracy recorded per step,
  ``fig4.json`` and ``fig4.png`` written; no TensorBoard);
* ``ours (JAX)``: the same command under ``KERAS_BACKEND=jax`` (``JAX_ENABLE_X64=1`` for
  float64); ``--hide-tf`` runs it with TensorFlow hidden, as on a machine without it;
* ``JAX step loop``: the authors' style (github miguel-rg/dynamical-loss-functions):
  ``stax.serial(Dense(100), Relu, Dense(3))``, Γ from the authors' ``c_fn``, one jitted
  step per Python iteration returning the new parameters, F(t) and the accuracy, kept per
  step and saved to ``.npz``;
* ``JAX fori_loop``: written for speed: the whole run in one jitted ``lax.fori_loop`` that
  writes F(t) and the accuracy of every step into preallocated arrays;
* ``ours (TF) unprobed`` (by default only with ``--probe-every``): ours (TF) with
  ``--probe-every 0``.

Both JAX loops: 70000 full-batch GD steps (η = 1, A = 70, T = 5000, last period static),
in ``--dtype``. With ``--probe-every P > 0`` they also compute the Hessian λ_max every P
steps (a jitted order-10 Lanczos, forward-over-reverse products, full
re-orthogonalisation; no NTK, which ours adds).

Goals: ours (TF) <= the fastest JAX loop; ours (JAX) / JAX fori_loop <= 1.2; with probes,
ours (TF) / ours (TF) unprobed <= 2.0.
Needs ``jax`` (CPU is enough) besides the package.

    python bench/fig4_vs_jax.py [--runs 5] [--steps 70000] [--dtype float64] [--probe-every 0]
"""

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("ours (TF)", "ours (JAX)", "JAX step loop", "JAX fori_loop", "ours (TF) unprobed")


def jax_job(kind, steps, period, width, probe_every, dtype, out):
    """One JAX run, `kind` "step" or "fori" (in its own process)."""
    import jax

    jax.config.update("jax_enable_x64", dtype == "float64")
    import jax.numpy as jnp
    import numpy as np
    from jax.example_libraries import stax
    from jax.flatten_util import ravel_pytree

    n, c, lr, amplitude = 100, 3, 1.0, 70.0
    np.random.seed(0)
    x, y = np.zeros((n * c, 2)), np.zeros((n * c, c))
    for j in range(c):  # the authors' spiral
        ix = range(n * j, n * (j + 1))
        r = np.linspace(0.0, 1, n)
        t = np.linspace(2 * np.pi * j / c, 2 * np.pi * j / c + 4 * np.pi, n) \
            + np.random.randn(n) * 0.2
        x[ix] = np.c_[r * np.cos(t), r * np.sin(t)]
        y[ix, j] = 1
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    init_fn, apply_fn = stax.serial(stax.Dense(width), stax.Relu, stax.Dense(c))
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    flat0, unravel = ravel_pytree(params)
    static_from = -(-(steps - period) // period) * period  # first period boundary >= N - T

    def c_fn(t, i, w_max):  # the authors' Γ
        slope = 2 * (w_max - 1) / period
        w_main = jnp.where(t < period / 2.0, 1 + t * slope, 2 * w_max - t * slope - 1)
        res = jnp.ones(c, dtype) + (w_main - 1) * jnp.eye(c, dtype=dtype)[i]
        return res / jnp.sum(res) * c

    def weighted_loss(p, t, i, w_max):
        logits = apply_fn(p, x)
        return -jnp.mean(jax.nn.log_softmax(logits) * y * c_fn(t, i, w_max)) * c, logits

    def step(p, t, i, w_max):
        (f, logits), g = jax.value_and_grad(weighted_loss, has_aux=True)(p, t, i, w_max)
        acc = jnp.mean(jnp.argmax(logits, 1) == jnp.argmax(y, 1)).astype(dtype)
        return jax.tree_util.tree_map(lambda a, da: a - lr * da, p, g), f, acc

    v0 = jax.random.normal(jax.random.PRNGKey(1), flat0.shape, dtype)

    def lanczos_max(p, t, i, w_max, order=10):
        w = ravel_pytree(p)[0]
        grad = jax.grad(lambda w: weighted_loss(unravel(w), t, i, w_max)[0])
        vs = jnp.zeros((order, w.size), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
        alphas, betas = jnp.zeros(order, dtype), jnp.zeros(order, dtype)
        for k in range(order):
            z = jax.jvp(grad, (w,), (vs[k],))[1]
            alphas = alphas.at[k].set(z @ vs[k])
            z = z - vs.T @ (vs @ z)
            z = z - vs.T @ (vs @ z)  # full re-orthogonalisation, twice
            betas = betas.at[k].set(jnp.linalg.norm(z))
            if k + 1 < order:
                vs = vs.at[k + 1].set(z / betas[k])
        tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
        return jnp.linalg.eigvalsh(tri)[-1]

    num_probes = -(-steps // probe_every) if probe_every else 0
    start = time.perf_counter()
    if kind == "step":  # one jitted call per Python iteration
        step_jit, probe_jit = jax.jit(step), jax.jit(lanczos_max)
        losses, accs, probes = [], [], []
        t, cls, w_max = 0, 0, amplitude
        for k in range(steps):
            if probe_every and k % probe_every == 0:
                probes.append(probe_jit(params, t, cls, w_max))
            params, f, acc = step_jit(params, t, cls, w_max)
            losses.append(f)
            accs.append(acc)
            t += 1
            if t >= period:  # new period: next class; the last period is static
                t, cls = 0, (cls + 1) % c
                if k + 1 >= static_from:
                    w_max = 1.0
        losses, accs, probes = (np.asarray(jax.device_get(v)) for v in (losses, accs, probes))
    else:  # the whole run in one jitted fori_loop
        def body(k, carry):
            p, losses, accs, probes = carry
            t, cls = k % period, (k // period) % c
            w_max = jnp.where(k >= static_from, 1.0, amplitude).astype(dtype)
            if probe_every:
                probes = jax.lax.cond(
                    k % probe_every == 0,
                    lambda: probes.at[k // probe_every].set(lanczos_max(p, t, cls, w_max)),
                    lambda: probes)
            p, f, acc = step(p, t, cls, w_max)
            return p, losses.at[k].set(f), accs.at[k].set(acc), probes

        zeros = jnp.zeros(steps, dtype)
        run = jax.jit(lambda p: jax.lax.fori_loop(
            0, steps, body, (p, zeros, zeros, jnp.zeros(num_probes, dtype))))
        params, losses, accs, probes = jax.device_get(run(params))
    seconds = time.perf_counter() - start
    np.savez(out, loss=losses, accuracy=accs, hessian_max_eig=probes)
    print(f"fig4: final training accuracy {float(accs[-1]):.4f} ({steps} steps, {seconds:.1f} s)")


def timed(cmd, env, cwd):
    """Wall seconds, CPU seconds (user + sys, all threads) and stdout of a finished process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, proc


def commands(args, tmp):
    """`{name: (command, environment)}` of the configurations asked for."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a new user
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    flags = ["--steps", str(args.steps), "--period", str(args.period), "--width",
             str(args.width), "--probe-every", str(args.probe_every), "--dtype", args.dtype]
    cli = ["fig4", *flags, "--no-progress"]
    ours = [sys.executable, "-m", "keras_dynloss", *cli]
    jax_env = dict(env, KERAS_BACKEND="jax", JAX_ENABLE_X64=str(int(args.dtype == "float64")))
    if args.hide_tf:  # as on a machine without TensorFlow
        ours_jax = [sys.executable, "-c", "import sys, runpy; sys.modules['tensorflow'] = None; "
                    f"sys.argv = ['keras_dynloss'] + {cli!r} + sys.argv[1:]; "
                    "runpy.run_module('keras_dynloss', run_name='__main__')"]
    else:
        ours_jax = list(ours)
    mine = [sys.executable, os.path.abspath(__file__), *flags]
    out = {"ours (TF)": (ours + ["--out", os.path.join(tmp, "tf")], env),
           "ours (JAX)": (ours_jax + ["--out", os.path.join(tmp, "jax")], jax_env),
           "JAX step loop": (mine + ["--jax", "step", "--out", os.path.join(tmp, "s.npz")], env),
           "JAX fori_loop": (mine + ["--jax", "fori", "--out", os.path.join(tmp, "f.npz")], env),
           "ours (TF) unprobed": (ours + ["--probe-every", "0", "--out", os.path.join(tmp, "u")],
                                  env)}
    return {name: out[name] for name in args.configs}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps", type=int, default=70000)
    p.add_argument("--period", type=int, default=5000)
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--probe-every", type=int, default=0, dest="probe_every")
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    p.add_argument("--hide-tf", action="store_true", dest="hide_tf",
                   help="run ours (JAX) with TensorFlow hidden")
    p.add_argument("--configs", type=lambda s: s.split(","), default=None,
                   help=f"comma-separated subset of: {','.join(CONFIGS)} (default: the first "
                        "four, and the fifth with --probe-every)")
    p.add_argument("--jax", choices=("step", "fori"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.jax:
        return jax_job(args.jax, args.steps, args.period, args.width, args.probe_every,
                       args.dtype, args.out)
    args.configs = args.configs or CONFIGS[:4 + bool(args.probe_every)]
    if set(args.configs) - set(CONFIGS):
        p.error(f"--configs: choose from {', '.join(CONFIGS)}")
    times, cpus, training = ({name: [] for name in args.configs} for _ in range(3))
    final = {}
    with tempfile.TemporaryDirectory() as tmp:
        todo = list(commands(args, tmp).items())
        for run in range(args.runs):
            for name, (cmd, env) in todo[run % len(todo):] + todo[:run % len(todo)]:
                seconds, cpu, proc = timed(cmd, env, tmp)  # cwd: not this checkout
                times[name].append(seconds)
                cpus[name].append(cpu)
                found = re.search(r"final training accuracy ([\d.]+) .*steps, ([\d.]+) s\)",
                                  proc.stdout)
                final[name], train = found.groups() if found else ("?", "nan")
                training[name].append(float(train))
                if run == 0 and name.startswith("ours") and proc.stderr.strip():
                    print(f"  ({name} wrote {len(proc.stderr.splitlines())} stderr lines)")
            print(f"  run {run + 1}: " + "   ".join(f"{n} {times[n][-1]:.2f} s"
                                                   for n in args.configs), flush=True)
    print(f"Fig. 4 job, whole process: {args.steps} steps, width {args.width}, {args.dtype}, "
          f"probes every {args.probe_every or 'never'}, {os.cpu_count()} CPU cores, load "
          f"{os.getloadavg()[0]:.1f}, medians of {args.runs} alternating runs")
    med = {n: statistics.median(t) for n, t in times.items()}
    for name in args.configs:
        print(f"  {name:18s} {med[name]:6.2f} s  (CPU {statistics.median(cpus[name]):5.1f} s; "
              f"training {statistics.median(training[name]):5.1f} s)  final accuracy "
              f"{final[name]}")

    def ratio(a, b, goal):
        if a in med and b in med:
            paired = statistics.median(x / y for x, y in zip(times[a], times[b]))
            print(f"  {a} / {b}: {med[a] / med[b]:.3f} (paired {paired:.3f})  goal {goal}")

    unprobed = " (a goal for unprobed runs)" if args.probe_every else ""
    loops = [n for n in ("JAX step loop", "JAX fori_loop") if n in med]
    if loops:
        ratio("ours (TF)", min(loops, key=med.get), "<= 1 (the fastest JAX loop)" + unprobed)
    ratio("ours (JAX)", "JAX fori_loop", "<= 1.2" + unprobed)
    if args.probe_every:
        ratio("ours (TF)", "ours (TF) unprobed", "<= 2.0 (the user's command, probed / not)")


if __name__ == "__main__":
    main()
