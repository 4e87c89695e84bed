"""Cost of ``import keras_dynloss`` over ``import tensorflow, keras``, and the CLI's stderr.

Alternates fresh interpreters ``--runs`` times (as a new user: no ``TF_CPP_MIN_LOG_LEVEL``),
each timing itself from its first line to the end of:

* ``import tensorflow, keras`` (``import jax, keras`` with ``--backend jax``);
* ``import keras_dynloss``.

Prints the median in-process times and their difference (goal <= 0.3 s; ``import
keras_dynloss`` collects no garbage while TensorFlow and Keras load), each one's minor page
faults, and, as whole processes alternated as often, ``python -m keras_dynloss --help``
against the same ``main(["--help"])`` called from ``python -c`` (which is not the command
line, so Keras loads the optional integrations the command line hides: the start-up
machinery is kept only while this gains > 0.3 s), with the command line's stderr lines
(goal: none).

    python bench/import_time.py [--runs 5] [--backend tensorflow]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(code, env):
    """In-process seconds and minor page faults of `code` in a fresh interpreter."""
    wrapped = ("import time; _t = time.perf_counter()\n" + code + "\nimport resource, sys; "
               "sys.stdout.write(f'{time.perf_counter() - _t!r} "
               "{resource.getrusage(resource.RUSAGE_SELF).ru_minflt}')")
    proc = subprocess.run([sys.executable, "-c", wrapped], env=env, capture_output=True,
                          text=True, cwd=os.path.expanduser("~"))  # not this checkout
    if proc.returncode:
        sys.exit(f"{code!r} failed:\n{proc.stderr}")
    seconds, faults = proc.stdout.split()
    return float(seconds), int(faults)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax", "torch"))
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(KERAS_BACKEND=args.backend, PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    codes = {f"import {args.backend}, keras": f"import {args.backend}, keras",
             "import keras_dynloss": "import keras_dynloss"}
    times, faults = {n: [] for n in codes}, {n: [] for n in codes}
    for _ in range(args.runs):
        for name, code in codes.items():
            seconds, minflt = timed(code, env)
            times[name].append(seconds)
            faults[name].append(minflt)
    commands = {"python -m keras_dynloss --help": ["-m", "keras_dynloss", "--help"],
                "main(['--help']) from python -c": [
                    "-c", "from keras_dynloss.cli import main; main(['--help'])"]}
    whole = {n: [] for n in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            start = time.perf_counter()
            cli = subprocess.run([sys.executable, *argv], env=env, capture_output=True,
                                 text=True, cwd=os.path.expanduser("~"))
            whole[name].append(time.perf_counter() - start)
            if argv[0] == "-m":
                stderr, returncode = cli.stderr, cli.returncode
    med = {n: statistics.median(t) for n, t in times.items()}
    base, ours = codes
    print(f"import time (in-process), KERAS_BACKEND={args.backend}, medians of {args.runs} "
          f"alternating fresh interpreters, {os.cpu_count()} CPU cores, load "
          f"{os.getloadavg()[0]:.1f}")
    for name in codes:
        print(f"  {name:28s} {med[name]:6.2f} s  ({statistics.median(faults[name]):.0f} minor "
              "page faults)")
    paired = statistics.median(b - a for a, b in zip(times[base], times[ours]))
    print(f"  {ours} - {base}: {med[ours] - med[base]:+.2f} s (paired {paired:+.2f} s)  "
          "goal <= 0.3 s")
    for name in commands:
        print(f"  {name:33s} {statistics.median(whole[name]):6.2f} s whole process")
    cli_name, plain = commands
    gain = statistics.median(b - a for a, b in zip(whole[cli_name], whole[plain]))
    print(f"  the command line's start-up gain (paired): {gain:+.2f} s  (kept if > 0.3 s)")
    lines = [line for line in stderr.splitlines() if line.strip()]
    print(f"  python -m keras_dynloss --help: exit {returncode}, {len(lines)} stderr lines  "
          "goal: 0 lines")
    for line in lines:
        print(f"    stderr: {line[:150]}")


if __name__ == "__main__":
    main()
