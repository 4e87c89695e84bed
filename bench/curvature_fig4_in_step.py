"""Cost of the Fig. 4 job's curvature probes, compiled into its training loop.

`python -m keras_dynloss fig4 --probe-every 25` trains with
`experiments._spiral.train_spiral`: full-batch GD on the package's spiral,
MLP 2-100-3, float64, per-step F(t) and accuracy recorded, XLA, 3500 GD updates
per compiled call. With `probe_every` an `InStepProbe` runs the Hessian
lambda_max Lanczos (warm start + 1 % noise, stopped at a 1e-3 relative
residual, at most 10 products: the runner's `CurvatureProbe`) inside that loop
every 25 steps; `--ntk` adds the NTK lambda_max as in the CLI default.

Probed and unprobed runs alternate `--repeats` times; printed: the ratio of the
median training times (the whole `fit`, compile included) and of the fastest
runs (this VM has phases in which every run is up to 2x slower), the same without the
first compiled call (steady state), the one-time compile cost, the extra time
per probe, and the products per probe. The F(t) records of both runs are
checked to be identical (probing changes nothing).

Run: PYTHONPATH=. python bench/curvature_fig4_in_step.py --steps 70000 --repeats 3
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def child(steps, probe_every, ntk, per_call, path):
    """One timed run in this (fresh) process; results saved to `path` (.npz)."""
    from keras_dynloss.experiments._spiral import train_spiral

    t0 = time.perf_counter()
    out = train_spiral(width=100, steps=steps, dtype="float64", record=True, probe_every=probe_every,
                       probe_ntk=ntk, steps_per_execution=per_call)
    seconds = time.perf_counter() - t0
    h = out.get("probe", {})
    np.savez(path, seconds=seconds, loss=out["loss"],
             **{k: np.asarray(h[k], np.float64) for k in ("hessian_matvecs", "hessian_max_eig",
                                                          "hessian_max_eig_residual") if k in h})


def timed(steps, probe_every, ntk, per_call):
    """Runs `child` in a new Python process: each run starts with an empty heap
    (in one process, Python's garbage collector paused later runs by up to
    7 s while walking the earlier runs' graphs)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.npz")
        here = os.path.dirname(os.path.abspath(__file__))
        code = (f"import sys; sys.path[:0] = {[here, os.path.dirname(here)]!r}; "
                f"import curvature_fig4_in_step as b; b.child({steps}, {probe_every}, {ntk}, {per_call}, {path!r})")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=here)
        with np.load(path) as data:
            out = {k: data[k] for k in data.files}
    return float(out.pop("seconds")), out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=70000)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ntk", action="store_true", help="also the NTK lambda_max (the CLI default)")
    args = p.parse_args()
    per_call = max(1000, args.steps // 20)
    times = {"unprobed": [], "probed": [], "unprobed, one call": [], "probed, one call": []}
    for _ in range(args.repeats):
        for name, every in (("unprobed", 0), ("probed", args.every)):
            seconds, out = timed(args.steps, every, args.ntk, per_call)
            times[name].append(seconds)
            # One compiled call of the same length: compile + the first 3500 steps.
            times[name + ", one call"].append(timed(per_call, every, args.ntk, per_call)[0])
            if every:
                probed = out
            else:
                base = out
    med = {name: float(np.median(t)) for name, t in times.items()}
    calls = args.steps // per_call
    # The one-call runs hold compile + 1/calls of the work: subtract that share.
    compile_extra = (med["probed, one call"] - med["unprobed, one call"]
                     - (med["probed"] - med["unprobed"]) / calls) * calls / (calls - 1)
    h = probed
    n = len(h["hessian_max_eig"])
    hvps = np.asarray(h["hessian_matvecs"])
    steady = (med["probed"] - compile_extra) / med["unprobed"]
    print(f"fig4 runner, {args.steps} steps float64, probe every {args.every} steps inside the XLA loop "
          f"({per_call} updates per call){' + NTK' if args.ntk else ''}; medians of {args.repeats} alternating runs")
    for name, t in times.items():
        print(f"  {name:20s} {med[name]:7.2f} s  runs {np.round(t, 2)}")
    print(f"  ratio probed / unprobed (whole fit, compile included): {med['probed'] / med['unprobed']:.2f}"
          f"  (goal <= 1.3)")
    print(f"  ratio of the fastest runs (this VM has slow phases of up to 2x): "
          f"{min(times['probed']) / min(times['unprobed']):.2f}")
    print(f"  one-time extra compile of the probe: {compile_extra:.2f} s; without it: {steady:.2f}")
    print(f"  extra per probe, compile excluded: "
          f"{(med['probed'] - compile_extra - med['unprobed']) / n * 1e3:.2f} ms ({n} probes)")
    print(f"  HVPs per probe: mean {hvps.mean():.2f}, median {np.median(hvps):.0f}, max {hvps.max():.0f}; "
          f"relative residual max {np.max(np.asarray(h['hessian_max_eig_residual']) / np.abs(h['hessian_max_eig'])):.1e}")
    print(f"  F(t) identical with and without probes: {np.array_equal(base['loss'], probed['loss'])}; "
          f"lambda_max peak {max(h['hessian_max_eig']):.2f}, above 2/eta = 2 at "
          f"{int(np.sum(np.asarray(h['hessian_max_eig']) > 2))} of {n} probes")


if __name__ == "__main__":
    main()
