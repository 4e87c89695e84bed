"""Shared helpers of the host-side (NumPy-facing) spectral algorithms."""

import numpy as np
import tensorflow as tf

from keras_dynloss import _checks as val


def _apply(matvec, v):
    out = matvec(v)
    if hasattr(out, "numpy"):
        out = out.numpy()
    return np.asarray(out, dtype=np.float64).reshape(-1)


def _check_common(matvec, size):
    val.check_callable("matvec", matvec)
    return val.check_int("size", size, minimum=1)


def _check_seed(seed):
    return val.check_int("seed", seed, minimum=0)


def _random_unit(rng, size):
    v = rng.standard_normal(size)
    return v / np.linalg.norm(v)


def _tensor_matvec(matvec):
    """Eager float64 tensor in -> float64 tensor out, calling `matvec` on NumPy."""

    def mv(q):
        return tf.constant(_apply(matvec, q.numpy()))

    return mv
