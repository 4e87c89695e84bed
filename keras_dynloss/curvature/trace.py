"""Hutchinson's trace estimator on a matrix-free operator: the one compiled
loop (`hutchinson_loop`, also run inside `CurvatureProbe`) and its host API
(`hutchinson_trace`)."""

import numpy as np
import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss.curvature._host import _check_common, _check_seed, _tensor_matvec
from keras_dynloss.curvature.results import TraceResult


def hutchinson_trace(
    matvec, size, *, num_samples=100, distribution="rademacher", seed=0
):
    """Hutchinson's stochastic trace estimator with its standard error.

    `tr(A) ≈ 1/s sum_i z_i^T A z_i` with i.i.d. probe vectors `z_i` of shape
    `(n,)`, `E[z z^T] = I` (Rademacher `±1`, or standard Gaussian). For
    Rademacher probes the variance of one sample is `2 sum_{i≠j} A_ij^2`.

    Args:
        matvec: callable `v -> A v` on vectors of shape `(n,)`.
        size: `n`.
        num_samples: number of probe vectors `s >= 2` (one product each).
        distribution: `"rademacher"` (default) or `"gaussian"`.
        seed: seed of the probe vectors.

    Returns:
        A `TraceResult` with `trace` and `stderr = std(samples) / sqrt(s)`.

    Example:
        >>> a = np.diag(np.arange(10.0))
        >>> hutchinson_trace(lambda v: a @ v, 10, num_samples=4).trace
        45.0
    """
    size = _check_common(matvec, size)
    num_samples = val.check_int("num_samples", num_samples, minimum=2)
    distribution = val.check_choice(
        "distribution", distribution, ("rademacher", "gaussian")
    )
    samples = hutchinson_loop(
        _tensor_matvec(matvec), size, num_samples, _check_seed(seed), distribution
    ).numpy()
    return TraceResult(
        trace=float(samples.mean()),
        stderr=float(samples.std(ddof=1) / np.sqrt(num_samples)),
        num_samples=num_samples,
        num_matvecs=num_samples,
        samples=samples,
    )


def probe_vectors(n, seed, distribution="rademacher"):
    """`i -> z_i`, random float64 vectors `(n,)` from a stateless RNG.

    Rademacher (`±1`) or standard Gaussian, both with `E[z z^T] = I`. `seed` is
    an int or an int tensor `(2,)`; vector `i` uses `fold_in(seed, i)`.
    """
    seed = tf.cast(tf.reshape(seed, [-1]), tf.int64)
    seed = tf.concat([seed, tf.zeros([2], tf.int64)], 0)[:2]

    def one(i):
        s = tf.random.experimental.stateless_fold_in(seed, i)
        if distribution == "rademacher":
            bits = tf.random.stateless_uniform(tf.reshape(n, [1]), seed=s, minval=0, maxval=2, dtype=tf.int64)
            return tf.cast(2 * bits - 1, tf.float64)
        return tf.random.stateless_normal(tf.reshape(n, [1]), seed=s, dtype=tf.float64)

    return one


def hutchinson_loop(matvec, n, num_samples, seed, distribution="rademacher"):
    """Samples `z_i^T A z_i`, `i < num_samples`, as a float64 tensor `(s,)`.

    `tr(A) = E[z^T A z]` for probes with `E[z z^T] = I` (see `probe_vectors`).
    """
    vector = probe_vectors(n, seed, distribution)

    def body(i, samples):
        z = vector(i)
        value = tf.tensordot(z, tf.cast(matvec(z), tf.float64), 1)
        return i + 1, tf.tensor_scatter_nd_update(samples, [[i]], [value])

    _, samples = tf.while_loop(
        lambda i, _: i < num_samples, body, (tf.constant(0), tf.zeros([num_samples], tf.float64)),
        parallel_iterations=1,  # one product (one backward pass) in memory at a time
    )
    return samples
