"""Per-step cost of DynamicalLoss relative to SparseCategoricalCrossentropy.

Same model, same data, same run: the two losses are timed alternately, each
trial on a freshly compiled copy of one initial model, and the script prints the
median time per step and the ratio (goal: <= 1.03).

    python bench/overhead.py [--trials 7] [--steps 4000]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_dynloss as kd  # noqa: E402


def spiral_setup():
    rng = np.random.default_rng(0)
    n, c = 100, 3
    xs, ys = [], []
    for j in range(c):
        r = np.linspace(0.0, 1.0, n)
        t = np.linspace(2 * np.pi * j / c, 2 * np.pi * j / c + 4 * np.pi, n) + 0.2 * rng.normal(size=n)
        xs.append(np.c_[r * np.cos(t), r * np.sin(t)])
        ys.append(np.full(n, j))
    x = np.concatenate(xs).astype("float32")
    y = np.concatenate(ys).astype("int32")

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((2,)), keras.layers.Dense(100, activation="relu"), keras.layers.Dense(3)
        ])

    return dict(name="spiral MLP 2-100-3, batch 300, SGD lr 1", x=x, y=y, build=build,
                batch_size=300, steps_per_execution=1000, lr=1.0, num_classes=3)


def digits_setup():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[..., None] / 16.0).astype("float32")
    y = d.target.astype("int32")

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ])

    return dict(name="digits conv net 8x8, batch 128, SGD lr 0.1", x=x, y=y, build=build,
                batch_size=128, steps_per_execution=100, lr=0.1, num_classes=10)


def time_fit(setup, loss, steps, weights):
    """Seconds per optimizer step of ``fit`` over a repeated dataset (one epoch)."""
    import tensorflow as tf

    model = setup["build"]()
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(setup["lr"]), loss=loss,
                  steps_per_execution=setup["steps_per_execution"])
    callbacks = [kd.DynamicalLossScheduler(log_weights=False)] if isinstance(loss, kd.DynamicalLoss) else []
    data = tf.data.Dataset.from_tensor_slices((setup["x"], setup["y"]))
    data = data.batch(setup["batch_size"], drop_remainder=True).cache().repeat()
    warm = setup["steps_per_execution"]
    model.fit(data, steps_per_epoch=warm, epochs=1, verbose=0, callbacks=callbacks)  # trace
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4000)
    args = parser.parse_args()
    for setup in (spiral_setup(), digits_setup()):
        weights = setup["build"]().get_weights()
        ref, dyn = [], []
        for _ in range(args.trials):
            ref.append(time_fit(setup, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                args.steps, weights))
            dyn.append(time_fit(setup, kd.DynamicalLoss(setup["num_classes"], amplitude=70, period=500,
                                                        from_logits=True), args.steps, weights))
        r, d = np.median(ref), np.median(dyn)
        ratios = np.array(dyn) / np.array(ref)
        print(f"{setup['name']}: SparseCCE {r * 1e6:.1f} us/step, DynamicalLoss {d * 1e6:.1f} us/step, "
              f"ratio of medians {d / r:.3f} (per-trial ratios median {np.median(ratios):.3f}, "
              f"min {ratios.min():.3f}, max {ratios.max():.3f})")


if __name__ == "__main__":
    main()
