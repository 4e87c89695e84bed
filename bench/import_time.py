"""Cost and noise of ``import keras_dynloss`` over ``import tensorflow, keras``.

Alternates fresh interpreters ``--runs`` times (as a new user, without
``TF_CPP_MIN_LOG_LEVEL``): ``python -c "import tensorflow, keras"`` and
``python -c "import keras_dynloss"``; prints the median wall times, their
difference (target: <= 0.3 s) and the stderr lines each printed.

    python bench/import_time.py [--runs 5] [--repo PATH]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time


def timed(code, env):
    start = time.perf_counter()
    # cwd: a neutral folder, so that PYTHONPATH (this checkout or --repo) decides
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=os.path.expanduser("~"))
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{code!r} failed:\n{proc.stderr}")
    return seconds, [line for line in proc.stderr.splitlines() if line.strip()]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--repo", default=None, help="import keras_dynloss from this checkout")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    repo = os.path.abspath(args.repo) if args.repo else os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    codes = {"import tensorflow, keras": "import tensorflow, keras",
             "import keras_dynloss": "import keras_dynloss"}
    times = {name: [] for name in codes}
    noise = {}
    for _ in range(args.runs):
        for name, code in codes.items():
            seconds, noise[name] = timed(code, env)
            times[name].append(seconds)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"import time, {args.runs} alternating fresh interpreters, {os.cpu_count()} CPU "
          f"cores{', keras_dynloss from ' + repo if args.repo else ''}")
    for name, seconds in med.items():
        print(f"  {name:26s} median {seconds:6.2f} s  ({len(noise[name])} stderr lines)")
    print(f"  keras_dynloss - (tensorflow + keras): {med['import keras_dynloss'] - med['import tensorflow, keras']:+.2f} s")
    for line in noise["import keras_dynloss"][:5]:
        print(f"    stderr: {line[:120]}")


if __name__ == "__main__":
    main()
