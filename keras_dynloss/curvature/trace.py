"""Hutchinson's trace estimator (`hutchinson_loop` in graphs, `hutchinson_trace` from Python
for any callable) and stochastic Lanczos quadrature (`spectral_density`)."""

import numpy as np
from keras import ops

from keras_dynloss import _checks, backend
from keras_dynloss.curvature.lanczos import (_check_operator, _host_matvec, krylov_dtype,
                                             lanczos_tridiagonal)
from keras_dynloss.curvature.results import DensityResult, TraceResult

_DISTRIBUTIONS = ("rademacher", "gaussian")


def _probe(n, seed, distribution, dtype):
    """A random vector `(n,)` with `E[z z^T] = I`: entries +-1 or standard normal."""
    if distribution == "rademacher":
        return 2.0 * ops.cast(backend.get().uniform((n,), seed, dtype) >= 0, dtype) - 1.0
    return backend.get().normal((n,), seed, dtype)


def _sample(matvec, n, i, seed, distribution, dtype):
    """`z_i^T A z_i` for the probe `z_i` of seed `fold_in(seed, i)`."""
    z = _probe(n, backend.fold_in(seed, i), distribution, dtype)
    return ops.sum(z * ops.cast(matvec(z), dtype))


def hutchinson_loop(matvec, n, num_samples, seed, distribution="rademacher"):
    """Hutchinson's samples `z_i^T A z_i`, `i < num_samples`, as one `ops.fori_loop`; probe
    `z_i` is drawn from `backend.fold_in(seed, i)`, so a run is a function of the seed alone.

    Args:
        matvec: `v -> A v` on tensors `(n,)` of `krylov_dtype()`, traceable.
        n: the size of `A` (a Python int).
        num_samples: the number of probes `s` (a Python int).
        seed: an int or an int32 tensor `(2,)`.
        distribution: `"rademacher"` (entries +-1) or `"gaussian"`.

    Returns:
        A tensor `(s,)` of `krylov_dtype()`.

    Example:
        >>> d = ops.convert_to_tensor(np.arange(4.0))
        >>> ops.convert_to_numpy(hutchinson_loop(lambda v: d * v, 4, 2, 0))
        array([6., 6.])
    """
    dtype = krylov_dtype()

    def body(i, samples):
        value = _sample(matvec, n, i, seed, distribution, dtype)
        return ops.slice_update(samples, (i,), value[None])

    return ops.fori_loop(0, num_samples, body, ops.zeros((num_samples,), dtype))


def hutchinson_trace(matvec, size, *, num_samples=100, distribution="rademacher", seed=0):
    """Hutchinson's estimate `tr(A) ~ 1/s sum_i z_i^T A z_i`, probes `z_i` (n,) with
    `E[z z^T] = I`, and its standard error. A Rademacher sample has variance
    `2 sum_{i != j} A_ij^2`: exact for a diagonal `A`.

    Args:
        matvec: `v -> A v` on NumPy float64 vectors `(n,)`.
        size: `n`.
        num_samples: the number of probes `s >= 2` (one product each).
        distribution: `"rademacher"` or `"gaussian"`.
        seed: an int >= 0.

    Returns:
        A `TraceResult`.

    Example:
        >>> a = np.diag(np.arange(10.0))
        >>> hutchinson_trace(lambda v: a @ v, 10, num_samples=4).trace
        45.0
    """
    size, seed = _check_operator(matvec, size, seed)
    num_samples = _checks.check_int("num_samples", num_samples, minimum=2)
    distribution = _checks.check_choice("distribution", distribution, _DISTRIBUTIONS)
    apply, dtype, seed = _host_matvec(matvec, size), krylov_dtype(), backend.seed_pair(seed)
    samples = np.array([float(_sample(apply, size, i, seed, distribution, dtype))
                        for i in range(num_samples)])
    return TraceResult(trace=float(samples.mean()),
                       stderr=float(samples.std(ddof=1) / np.sqrt(num_samples)),
                       num_samples=num_samples, num_matvecs=num_samples, samples=samples)


def spectral_density(matvec, size, *, num_vectors=8, order=30, sigma=None, grid=None,
                     num_points=512, seed=0):
    """Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

    Lanczos from a unit Rademacher `v` gives `v^T f(A) v ~ sum_j w_j f(theta_j)` (`theta_j`
    the eigenvalues of `T`, `w_j` the squared first components of its eigenvectors); the mean
    over `V` vectors for a Gaussian `f` estimates `phi(t) = 1/n sum_i N(t; lambda_i, sigma^2)`.

    Args:
        matvec: `v -> A v` on NumPy float64 vectors `(n,)`, `A` symmetric.
        size: `n`.
        num_vectors: the number of start vectors `V`.
        order: Lanczos steps `m` per vector (at most `n` are taken); a run stops early at
            an invariant subspace, where the quadrature is exact.
        sigma: the kernel width; default `0.01 (max node - min node)` (else `1e-3 max(1, |node|)`).
        grid: evaluation points `(g,)`; default `num_points` on `[min - 6 sigma, max + 6 sigma]`.
        num_points: the number of default grid points, >= 2.
        seed: seed of the start vectors, an int >= 0.

    Returns:
        A `DensityResult`.

    Example:
        >>> a = np.diag(np.r_[np.zeros(30), 5.0 * np.ones(10)])
        >>> res = spectral_density(lambda v: a @ v, 40, order=10)
        >>> round(res.mass(4.0, 6.0), 6)
        0.25
    """
    size, seed = _check_operator(matvec, size, seed)
    num_vectors = _checks.check_int("num_vectors", num_vectors, minimum=1)
    order = min(_checks.check_int("order", order, minimum=1), size)
    num_points = _checks.check_int("num_points", num_points, minimum=2)
    if sigma is not None:
        sigma = _checks.check_float("sigma", sigma, positive=True)
    if grid is not None:
        grid = np.asarray(grid, np.float64)
        if grid.ndim != 1 or grid.size < 2 or not np.all(np.isfinite(grid)):
            raise _checks.invalid("grid", "a finite 1-D array of >= 2 points", grid)
    nodes, weights = np.full((num_vectors, order), np.nan), np.zeros((num_vectors, order))
    products = 0
    for v in range(num_vectors):
        start = _probe(size, backend.fold_in(backend.seed_pair(seed), v), "rademacher",
                       krylov_dtype())
        dec = lanczos_tridiagonal(matvec, size, order=order, start=ops.convert_to_numpy(start),
                                  keep_basis=False, restart_on_breakdown=False,
                                  warn_on_breakdown=False)
        theta, s = np.linalg.eigh(dec.tridiagonal())
        nodes[v, :dec.order], weights[v, :dec.order] = theta, s[0] ** 2
        products += dec.num_matvecs
    low, high = np.nanmin(nodes), np.nanmax(nodes)
    if sigma is None:
        sigma = 0.01 * (high - low) if high > low else 1e-3 * max(1.0, abs(high))
    if grid is None:
        grid = np.linspace(low - 6.0 * sigma, high + 6.0 * sigma, num_points)
    z = (grid[:, None, None] - np.nan_to_num(nodes)[None]) / sigma  # NaN nodes have weight 0
    kernel = np.exp(-0.5 * z**2) / (sigma * np.sqrt(2.0 * np.pi))
    density = (kernel * weights[None]).sum(axis=(1, 2)) / num_vectors
    return DensityResult(grid=grid, density=density,
                         nodes=nodes, weights=weights, sigma=float(sigma), num_matvecs=products)
