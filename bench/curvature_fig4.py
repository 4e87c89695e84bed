"""Fig. 4 with curvature probes every 25 steps inside the training loop, ÷ without.

Each timing is a fresh process, the configurations alternating `--runs` times (medians):

1. the spiral runner (`experiments._spiral.train_spiral`: MLP 2-100-3, float64, XLA, 70000
   full-batch GD steps, Γ with A = 70, T = 5000) with the in-step Hessian λ_max every 25 steps
   (`InStepProbe`: Lanczos order 10, tolerance 1e-3, warm start) ÷ unprobed, one CPU thread
   as the CLI runs it: `fit` alone and the whole process (goal <= 1.5);
2. the user's command, Hessian and NTK λ_max as the paper plots:
   `python -m keras_dynloss fig4 --probe-every 25` ÷ `--probe-every 0`, whole process
   (goal <= 2.0).

Run: PYTHONPATH=. python bench/curvature_fig4.py [--runs 3] [--steps 70000]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

RUNNER = ("import os; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3'); "
          "from keras_dynloss.experiments.workers import set_cpu_threads; "
          "set_cpu_threads(1); "  # as the CLI runs the spiral
          "from keras_dynloss.experiments._spiral import train_spiral; "
          "r = train_spiral(width=100, steps={steps}, dtype='float64', probe_every={every}, "
          "probe_ntk=False); print('fit', r['seconds'])")


def timed(command):
    """(whole-process seconds, the `fit` seconds the process printed or None)."""
    t0 = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    fit = [float(line.split()[1]) for line in out.splitlines() if line.startswith("fit ")]
    return time.perf_counter() - t0, fit[0] if fit else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=70000)
    args = parser.parse_args()
    out = tempfile.mkdtemp()
    configs = {
        "runner, unprobed": [sys.executable, "-c", RUNNER.format(steps=args.steps, every=0)],
        "runner, Hessian every 25": [sys.executable, "-c",
                                     RUNNER.format(steps=args.steps, every=25)],
        "fig4 --probe-every 0": [sys.executable, "-m", "keras_dynloss", "fig4", "--steps",
                                 str(args.steps), "--probe-every", "0", "--no-progress",
                                 "--out", out],
        "fig4 --probe-every 25": [sys.executable, "-m", "keras_dynloss", "fig4", "--steps",
                                  str(args.steps), "--probe-every", "25", "--no-progress",
                                  "--out", out],
    }
    times = {name: [] for name in configs}
    for run in range(args.runs):
        for name, command in configs.items():
            times[name].append(timed(command))
            print(f"run {run + 1}: {name:26s} whole {times[name][-1][0]:6.2f} s", flush=True)

    def median(name, part):
        return statistics.median(t[part] for t in times[name])

    print(f"\nmedians of {args.runs} runs, {args.steps} steps")
    for name in configs:
        fit = median(name, 1) if times[name][0][1] is not None else None
        print(f"  {name:26s} whole {median(name, 0):6.2f} s" + (f"   fit {fit:6.2f} s" if fit else ""))
    print(f"runner, Hessian every 25 ÷ unprobed: whole process "
          f"{median('runner, Hessian every 25', 0) / median('runner, unprobed', 0):.2f}, fit "
          f"{median('runner, Hessian every 25', 1) / median('runner, unprobed', 1):.2f} (goal <= 1.5)")
    print(f"fig4 --probe-every 25 ÷ --probe-every 0, whole process: "
          f"{median('fig4 --probe-every 25', 0) / median('fig4 --probe-every 0', 0):.2f} "
          "(goal <= 2.0)")


if __name__ == "__main__":
    main()
