"""Cost and noise of ``import keras_dynloss`` over ``import tensorflow, keras``.

Alternates fresh interpreters ``--runs`` times (as a new user, without
``TF_CPP_MIN_LOG_LEVEL``), each timing itself from start to end of:

* ``import tensorflow, keras`` vs ``import keras_dynloss`` (target: difference
  <= 0.3 s);
* the same followed by a first op (``tf.constant(1.0) + 1``): TensorFlow
  initialises its devices then; ``import keras_dynloss`` does it during the
  import (it lists the GPUs so that CUDA's start-up messages can be filtered),
  so this pair compares the same work.

Prints the median in-process times, their differences, the stderr lines each
printed and the process's minor page faults (on CPython 3.11 a call depth at which
a hot function straddles a frame-stack chunk shows up as ~60 000 extra faults and
+0.4 s: see ``keras_dynloss._quiet_import._load_tensorflow``).

    python bench/import_time.py [--runs 5] [--repo PATH]
"""

import argparse
import os
import statistics
import subprocess
import sys

CODES = {
    "import tensorflow, keras": "import tensorflow, keras",
    "import keras_dynloss": "import keras_dynloss",
    "import tensorflow, keras; first op":
        "import tensorflow as tf, keras; tf.constant(1.0) + 1",
    "import keras_dynloss; first op":
        "import keras_dynloss, tensorflow as tf; tf.constant(1.0) + 1",
}


def timed(code, env):
    wrapped = ("import time, sys; _t = time.perf_counter()\n" + code +
               "\nimport resource; sys.stdout.write(f'{time.perf_counter() - _t!r} "
               "{resource.getrusage(resource.RUSAGE_SELF).ru_minflt}')")
    # cwd: a neutral folder, so that PYTHONPATH (this checkout or --repo) decides
    proc = subprocess.run([sys.executable, "-c", wrapped], env=env, capture_output=True,
                          text=True, cwd=os.path.expanduser("~"))
    if proc.returncode:
        sys.exit(f"{code!r} failed:\n{proc.stderr}")
    seconds, faults = proc.stdout.split()
    return float(seconds), int(faults), [line for line in proc.stderr.splitlines() if line.strip()]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--repo", default=None, help="import keras_dynloss from this checkout")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    repo = os.path.abspath(args.repo) if args.repo else os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    times = {name: [] for name in CODES}
    faults = {name: [] for name in CODES}
    noise = {}
    for _ in range(args.runs):
        for name, code in CODES.items():
            seconds, page_faults, noise[name] = timed(code, env)
            times[name].append(seconds)
            faults[name].append(page_faults)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"import time (in-process), medians of {args.runs} alternating fresh interpreters, "
          f"{os.cpu_count()} CPU cores{', keras_dynloss from ' + repo if args.repo else ''}")
    for name, seconds in med.items():
        print(f"  {name:36s} {seconds:6.2f} s  ({len(noise[name])} stderr lines, "
              f"{statistics.median(faults[name]):.0f} minor page faults)")
    names = list(CODES)
    print(f"  import keras_dynloss - import tensorflow, keras: "
          f"{med[names[1]] - med[names[0]]:+.2f} s")
    print(f"  same, to the first op:                          "
          f"{med[names[3]] - med[names[2]]:+.2f} s")
    for line in noise[names[3]][:5]:
        print(f"    stderr: {line[:120]}")


if __name__ == "__main__":
    main()
