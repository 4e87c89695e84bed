"""Per-step cost of DynamicalLoss relative to SparseCategoricalCrossentropy.

Same model, same data, same run: two compiled copies of one initial model, one
per loss, are timed alternately (``fit`` of N steps each), and the script prints
the median time per step, the ratio of medians and the median of the paired
ratios (goal: <= 1.03).

    python bench/overhead.py [--trials 30] [--steps 2000] [--threads 1]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_dynloss as kd  # noqa: E402


def spiral_setup():
    x, y = kd.datasets.spiral()  # the paper's 3-arm spiral, 300 points

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((2,)), keras.layers.Dense(100, activation="relu"), keras.layers.Dense(3)
        ])

    return dict(name="spiral MLP 2-100-3, batch 300, SGD lr 1", x=x, y=y, build=build,
                batch_size=300, steps_per_execution=1000, lr=1.0, num_classes=3, step_scale=1.0)


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
                batch_size=128, steps_per_execution=100, lr=0.1, num_classes=10, step_scale=0.25)


def compiled(setup, loss, weights):
    """A compiled, traced model and its data; returns ``run(steps) -> s/step``."""
    import tensorflow as tf

    model = setup["build"]()
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(setup["lr"]), loss=loss,
                  steps_per_execution=setup["steps_per_execution"])
    callbacks = [kd.DynamicalLossScheduler(log_weights=False)] if isinstance(loss, kd.DynamicalLoss) else []
    data = tf.data.Dataset.from_tensor_slices((setup["x"], setup["y"]))
    data = data.batch(setup["batch_size"], drop_remainder=True).cache().repeat()

    def run(steps):
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)
        return (time.perf_counter() - start) / steps

    run(setup["steps_per_execution"])  # trace and warm up
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--steps", type=int, default=2000, help="steps per trial (spiral; digits: a quarter)")
    parser.add_argument("--threads", type=int, default=1,
                        help="TF intra/inter-op threads (1 cuts scheduling noise on small CPUs; 0 = TF default)")
    args = parser.parse_args()
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    for setup in (spiral_setup(), digits_setup()):
        weights = setup["build"]().get_weights()
        steps = int(args.steps * setup["step_scale"])
        run_ref = compiled(setup, keras.losses.SparseCategoricalCrossentropy(from_logits=True), weights)
        run_dyn = compiled(setup, kd.DynamicalLoss(setup["num_classes"], amplitude=70, period=500,
                                                   from_logits=True), weights)
        ref, dyn = [], []
        for _ in range(args.trials):  # alternate, so drifts in machine speed hit both alike
            ref.append(run_ref(steps))
            dyn.append(run_dyn(steps))
        r, d = np.median(ref), np.median(dyn)
        ratios = np.array(dyn) / np.array(ref)
        print(f"{setup['name']}: SparseCCE {r * 1e6:.1f} us/step, DynamicalLoss {d * 1e6:.1f} us/step, "
              f"ratio of medians {d / r:.3f}; median of paired ratios {np.median(ratios):.3f} "
              f"(quartiles {np.percentile(ratios, 25):.3f}-{np.percentile(ratios, 75):.3f}, "
              f"{args.trials} pairs of {steps} steps)")


if __name__ == "__main__":
    main()
