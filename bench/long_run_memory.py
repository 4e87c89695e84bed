"""Memory of a long probed run: peak RSS at 10k steps vs at the end (70k).

Paper Fig. 4 setup on the package's own spiral (`keras_dynloss.datasets.spiral`,
3 arms x 100 points), MLP 2-100-3 (ReLU), `DynamicalLoss(A=70, T=5000)` with
`DynamicalLossScheduler`, full-batch `SGD(1.0)`, `steps_per_execution=25`,
`CurvatureProbe(every_n_steps=25, ntk=True)` (Hessian and NTK lambda_max every
25 steps) streaming its series to a CSV file (`csv_path=`), so nothing grows
with the number of probes. Peak RSS is `resource.getrusage(RUSAGE_SELF)
.ru_maxrss` (monotone); the current RSS (psutil) is printed beside it.

Prints peak RSS at step 10k and at the last step and their ratio (goal <= 1.1).

Run: PYTHONPATH=. python bench/long_run_memory.py --steps 70000
"""

import argparse
import csv
import os
import resource
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import psutil  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_dynloss import DynamicalLoss, DynamicalLossScheduler  # noqa: E402
from keras_dynloss.curvature import CurvatureProbe  # noqa: E402
from keras_dynloss.datasets import spiral  # noqa: E402


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_mib():
    return psutil.Process().memory_info().rss / 2**20


class MemoryLog(keras.callbacks.Callback):
    """Peak and current RSS at the end of every epoch (1000 steps)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.rows.append((step, peak_mib(), current_mib()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=70000)
    parser.add_argument("--at", type=int, default=10000, help="reference step")
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--no-ntk", action="store_true")
    args = parser.parse_args()
    x, y = spiral()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(100, activation="relu"), keras.layers.Dense(3)]
    )
    loss = DynamicalLoss(3, amplitude=70.0, period=5000, from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss, steps_per_execution=25)
    path = os.path.join(tempfile.mkdtemp(), "probe.csv")
    probe = CurvatureProbe((x, y), every_n_steps=args.every, ntk=not args.no_ntk, csv_path=path)
    memory = MemoryLog()
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=1000, epochs=args.steps // 1000, verbose=0, shuffle=False,
              callbacks=[DynamicalLossScheduler(), probe, memory])
    seconds = time.perf_counter() - t0
    with open(path) as f:
        rows = sum(1 for _ in csv.DictReader(f))
    print(f"{args.steps} steps, probe every {args.every} steps "
          f"({'Hessian' if args.no_ntk else 'Hessian + NTK'}), {rows} probes streamed to CSV, "
          f"{seconds:.0f} s")
    for step, peak, cur in memory.rows:
        if step in (1000, args.at) or step % 10000 == 0:
            print(f"  step {step:6d}: peak RSS {peak:8.1f} MiB, current RSS {cur:8.1f} MiB")
    at = next(p for s, p, _ in memory.rows if s >= args.at)
    end = memory.rows[-1][1]
    print(f"  peak RSS ratio step {memory.rows[-1][0]} / step {args.at}: {end / at:.3f}  (goal <= 1.1)")


if __name__ == "__main__":
    main()
