"""Shared helpers for the curvature benchmarks (data, models, timing)."""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def spiral(points_per_arm=100, arms=3, seed=0):
    """The package's spiral (`keras_dynloss.datasets.spiral`): x float32, y int."""
    from keras_dynloss.datasets import spiral as package_spiral

    return package_spiral(points_per_arm, arms, seed=seed)


def spiral_mlp(width=100, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(width, activation="relu"), keras.layers.Dense(3)]
    )


def digits(n=512):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n] / 16.0).astype(np.float32)[..., None]
    return x, d.target[:n].astype(np.int64)


def digits_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


def time_interleaved(fns, repeats=30, inner=20):
    """Median seconds per call of each zero-argument function, timed side by side."""
    for fn in fns.values():
        fn()
        fn()
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner)
    return {k: float(np.median(v)) for k, v in samples.items()}


class AllocatorPeak:
    """Peak bytes TensorFlow's CPU allocator holds inside the block, above what
    it held on entry (`tf.config.experimental.get_memory_info`: every tensor,
    no sampling; not Python objects or kernel-internal scratch)."""

    def __enter__(self):
        import tensorflow as tf

        self._tf = tf
        self.base = tf.config.experimental.get_memory_info("CPU:0")["current"]
        tf.config.experimental.reset_memory_stats("CPU:0")
        return self

    def __exit__(self, *exc):
        self.growth = self._tf.config.experimental.get_memory_info("CPU:0")["peak"] - self.base


def allocator_peak(fn):
    """`AllocatorPeak` growth of the second of two calls of `fn` (the first traces)."""
    fn()
    with AllocatorPeak() as mem:
        fn()
    return mem.growth
