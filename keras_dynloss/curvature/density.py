"""Spectral density by stochastic Lanczos quadrature (SLQ)."""

import numpy as np

from keras_dynloss import _checks as val
from keras_dynloss.curvature._host import _check_common, _check_seed
from keras_dynloss.curvature.lanczos import lanczos_tridiagonal
from keras_dynloss.curvature.results import DensityResult


def gaussian_density(nodes, weights, grid, sigma):
    """`sum_j w_j N(grid; nodes_j, sigma^2)` averaged over runs.

    Args:
        nodes: `(V, m)` Ritz values (NaN allowed for padding).
        weights: `(V, m)` quadrature weights.
        grid: `(g,)` evaluation points.
        sigma: kernel width > 0.

    Returns:
        float64 array `(g,)`.
    """
    nodes = np.where(np.isfinite(nodes), nodes, 0.0)
    diff = grid[:, None, None] - nodes[None, :, :]
    kernel = np.exp(-0.5 * (diff / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return (kernel * weights[None]).sum(axis=(1, 2)) / nodes.shape[0]


def spectral_density(
    matvec,
    size,
    *,
    num_vectors=8,
    order=30,
    sigma=None,
    grid=None,
    num_points=512,
    seed=0,
):
    """Spectral density by stochastic Lanczos quadrature (SLQ).

    For `V` random unit Rademacher vectors `v`, an `m`-step Lanczos run gives the
    Gauss quadrature `v^T f(A) v ≈ sum_j w_j f(theta_j)` (nodes `theta_j`: Ritz
    values; weights `w_j`: squared first components of the eigenvectors of `T`).
    Since `E[v^T f(A) v] = tr f(A) / n`, averaging over `v` with a Gaussian `f`
    yields the smoothed density `phi(t) = 1/n sum_i N(t; lambda_i, sigma^2)`,
    a probability density on the real line (it integrates to 1).

    Args:
        matvec: callable `v -> A v` on vectors of shape `(n,)`.
        size: `n`.
        num_vectors: number `V` of random start vectors.
        order: Lanczos steps `m` per vector (capped at `n`).
        sigma: Gaussian width; default `0.01 * (max node - min node)` (or 1e-3
            if the spectrum is a single point).
        grid: optional evaluation grid `(g,)`; default `num_points` equispaced
            points on `[min node - 6 sigma, max node + 6 sigma]`.
        num_points: number of grid points when `grid` is `None`.
        seed: seed of the start vectors.

    Returns:
        A `DensityResult`; `num_matvecs <= V * m`.

    Example:
        >>> a = np.diag(np.r_[np.zeros(30), 5 * np.ones(10)])
        >>> res = spectral_density(lambda v: a @ v, 40, order=10)
        >>> round(res.mass(4.0, 6.0), 2)
        0.25
    """
    size = _check_common(matvec, size)
    num_vectors = val.check_int("num_vectors", num_vectors, minimum=1)
    order = val.check_int("order", order, minimum=1)
    num_points = val.check_int("num_points", num_points, minimum=2)
    if sigma is not None:
        sigma = val.check_float("sigma", sigma, positive=True)
    rng = np.random.default_rng(_check_seed(seed))
    m = min(order, size)
    nodes = np.full((num_vectors, m), np.nan)
    weights = np.zeros((num_vectors, m))
    products = 0
    for i in range(num_vectors):
        z = rng.integers(0, 2, size=size) * 2.0 - 1.0
        dec = lanczos_tridiagonal(
            matvec,
            size,
            order=m,
            seed=int(rng.integers(2**31)),
            start=z,
            keep_basis=False,
            restart_on_breakdown=False,
            warn_on_breakdown=False,
        )
        products += dec.num_matvecs
        theta, s = np.linalg.eigh(dec.tridiagonal())
        nodes[i, : theta.size] = theta
        weights[i, : theta.size] = s[0, :] ** 2
    finite = nodes[np.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(1.0, abs(hi))
    if grid is None:
        grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, num_points)
    else:
        grid = np.asarray(grid, dtype=np.float64).reshape(-1)
        if grid.size < 2 or not np.all(np.isfinite(grid)):
            raise val.invalid("grid", "a finite 1-D array of >= 2 points", grid)
    density = gaussian_density(nodes, weights, grid, sigma)
    return DensityResult(
        grid=grid,
        density=density,
        nodes=nodes,
        weights=weights,
        sigma=float(sigma),
        num_matvecs=products,
    )
