"""Hutchinson's trace estimator on a matrix-free operator (the `krylov` loop)."""

import numpy as np

from keras_dynloss import _checks as val
from keras_dynloss.curvature import krylov
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
    samples = krylov.hutchinson_loop(
        _tensor_matvec(matvec), size, num_samples, _check_seed(seed), distribution
    ).numpy()
    return TraceResult(
        trace=float(samples.mean()),
        stderr=float(samples.std(ddof=1) / np.sqrt(num_samples)),
        num_samples=num_samples,
        num_matvecs=num_samples,
        samples=samples,
    )
