"""Matrix-free spectral algorithms for symmetric operators.

Every function here takes only a matrix-vector product `matvec: v -> A v` and the
size `n` of the (implicit) symmetric matrix `A`; none of them knows about Keras.
They can therefore be checked on plain NumPy matrices, and applied unchanged to a
Hessian (`HessianOperator`) or an NTK (`NTKOperator`).

All vectors handled by the algorithms are float64 NumPy arrays of shape `(n,)`;
`matvec` may compute in lower precision (e.g. a float32 model) and return any
array-like of shape `(n,)`. Lanczos bases are kept and reorthogonalised in
float64.

Each algorithm returns a small frozen dataclass that says how far to trust it
(number of products used, residuals or standard error, convergence flag).
"""

import dataclasses
import warnings
from typing import Optional

import numpy as np

from keras_dynloss import _checks as val

_WHICH = ("largest", "smallest", "magnitude")


# --------------------------------------------------------------------------- #
# Result types
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True, eq=False)
class LanczosDecomposition:
    """A Lanczos factorisation `A Q ≈ Q T` of a symmetric operator.

    Attributes:
        alphas: float64 array `(m,)`, diagonal of the tridiagonal matrix `T`.
        betas: float64 array `(m - 1,)`, off-diagonal of `T`. A zero marks a
            breakdown after which the iteration was restarted with a fresh vector
            orthogonal to the basis (T is then block diagonal).
        basis: float64 array `(n, m)` with orthonormal columns `Q`, or `None` if
            not kept.
        residual_norm: `beta_m = ||A q_m - alpha_m q_m - beta_{m-1} q_{m-1}||`
            after the last step; the Ritz residuals are `beta_m * |s_{m,i}|`.
        num_matvecs: number of products with `A` used (`m`).
        breakdowns: number of breakdowns (invariant subspaces) met.
    """

    alphas: np.ndarray
    betas: np.ndarray
    basis: Optional[np.ndarray]
    residual_norm: float
    num_matvecs: int
    breakdowns: int

    @property
    def order(self):
        """Number of Lanczos steps `m` (size of `T`)."""
        return int(self.alphas.shape[0])

    def tridiagonal(self):
        """Returns the dense float64 tridiagonal matrix `T`, shape `(m, m)`."""
        return (
            np.diag(self.alphas)
            + np.diag(self.betas, 1)
            + np.diag(self.betas, -1)
        )


@dataclasses.dataclass(frozen=True, eq=False)
class EigenResult:
    """Leading eigenpairs of a symmetric operator.

    Attributes:
        eigenvalues: float64 array `(k,)`, largest first.
        eigenvectors: float64 array `(n, k)` (column `i` belongs to
            `eigenvalues[i]`), or `None` if not requested.
        residuals: float64 array `(k,)`, `||A u_i - lambda_i u_i||` for unit `u_i`
            (for Lanczos the standard bound `beta_m |s_{m,i}|`, no extra product).
            The eigenvalue error is at most the residual, and typically of order
            `residual**2 / gap`.
        converged: `True` when every residual is `<= tol * max(|lambda_i|, tiny)`.
        num_matvecs: number of products with `A` used.
        method: `"lanczos"`, `"power_iteration"` or `"dense"`.
    """

    eigenvalues: np.ndarray
    eigenvectors: Optional[np.ndarray]
    residuals: np.ndarray
    converged: bool
    num_matvecs: int
    method: str

    @property
    def max_eigenvalue(self):
        return float(self.eigenvalues[0])


@dataclasses.dataclass(frozen=True, eq=False)
class TraceResult:
    """Hutchinson estimate of `tr(A)`.

    Attributes:
        trace: the estimate `mean_i(z_i^T A z_i)`.
        stderr: its standard error `std_i(z_i^T A z_i) / sqrt(s)` (ddof=1).
        num_samples: number `s` of probe vectors.
        num_matvecs: number of products with `A` used (`s`).
        samples: float64 array `(s,)` of the individual `z_i^T A z_i`.
    """

    trace: float
    stderr: float
    num_samples: int
    num_matvecs: int
    samples: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class DensityResult:
    """Spectral density estimated by stochastic Lanczos quadrature (SLQ).

    The density is the Gaussian-smoothed empirical spectral measure

        phi(t) = 1/n sum_i N(t; lambda_i, sigma^2)
               ≈ 1/V sum_v sum_j w_{v,j} N(t; theta_{v,j}, sigma^2),

    where `theta_{v,j}` are the Ritz values (quadrature nodes) of the Lanczos
    run started at the `v`-th random unit vector and `w_{v,j}` the squared first
    components of the Ritz vectors (quadrature weights, summing to 1 per run).

    Attributes:
        grid: float64 array `(g,)`, points where the density is evaluated.
        density: float64 array `(g,)`, `phi(grid)`; integrates to ~1.
        nodes: float64 array `(V, m)`, Ritz values per run (padded with NaN when
            a run ended early at an invariant subspace).
        weights: float64 array `(V, m)`, quadrature weights (0 where padded).
        sigma: width of the Gaussian kernel.
        num_matvecs: number of products with `A` used.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    num_matvecs: int

    @property
    def eigenvalues(self):
        """Quadrature nodes of all runs, largest first, shape `(V * m',)`."""
        flat = self.nodes[np.isfinite(self.nodes)]
        return np.sort(flat)[::-1]

    def mass(self, low, high):
        """Quadrature mass (fraction of the spectrum) in `[low, high]`."""
        ok = np.isfinite(self.nodes)
        inside = ok & (self.nodes >= low) & (self.nodes <= high)
        return float(self.weights[inside].sum() / self.nodes.shape[0])


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
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


def _orthogonalise(w, basis_rows, count):
    """Classical Gram-Schmidt applied twice ("twice is enough"), in float64."""
    if count == 0:
        return w
    q = basis_rows[:count]
    for _ in range(2):
        w = w - q.T @ (q @ w)
    return w


# --------------------------------------------------------------------------- #
# Lanczos
# --------------------------------------------------------------------------- #
def lanczos_tridiagonal(
    matvec,
    size,
    *,
    order,
    seed=0,
    start=None,
    keep_basis=True,
    restart_on_breakdown=True,
    warn_on_breakdown=True,
):
    """Runs `order` Lanczos steps with full float64 reorthogonalisation.

    Builds an orthonormal basis `Q = [q_1 .. q_m]` (shape `(n, m)`) of the Krylov
    space `span{q_1, A q_1, ..., A^{m-1} q_1}` and the tridiagonal matrix
    `T = Q^T A Q` with `A q_j = beta_{j-1} q_{j-1} + alpha_j q_j + beta_j q_{j+1}`.
    At full order (`m = n`), `A = Q T Q^T` up to rounding.

    A breakdown (`beta_j ~ 0`, i.e. an invariant subspace) is reported with
    `warnings.warn`; by default the iteration then continues from a random vector
    orthogonal to the basis, with `beta_j = 0` (T becomes block diagonal).

    Args:
        matvec: callable `v -> A v` for float64 vectors of shape `(n,)`; `A` must
            be symmetric.
        size: `n`, the dimension of `A`.
        order: number of steps `m`, `1 <= m <= n` (one product each).
        seed: seed of the random start vector (and of restarts).
        start: optional start vector of shape `(n,)` (normalised here).
        keep_basis: return `Q` in the result.
        restart_on_breakdown: continue after a breakdown (else stop early).
        warn_on_breakdown: emit a warning on breakdown.

    Returns:
        A `LanczosDecomposition`.

    Example:
        >>> a = np.diag([3.0, 2.0, 1.0])
        >>> dec = lanczos_tridiagonal(lambda v: a @ v, 3, order=3)
        >>> np.allclose(dec.basis @ dec.tridiagonal() @ dec.basis.T, a)
        True
    """
    size = _check_common(matvec, size)
    order = val.check_int("order", order, minimum=1, maximum=size)
    rng = np.random.default_rng(_check_seed(seed))
    if start is None:
        q = _random_unit(rng, size)
    else:
        q = np.asarray(start, dtype=np.float64).reshape(-1)
        if q.shape != (size,) or not np.all(np.isfinite(q)):
            raise val.invalid("start", f"a finite vector of shape ({size},)", start)
        norm = np.linalg.norm(q)
        if norm == 0:
            raise val.invalid("start", "a nonzero vector", start)
        q = q / norm

    basis = np.zeros((order, size))
    alphas = np.zeros(order)
    betas = np.zeros(max(order - 1, 0))
    beta_prev = 0.0
    q_prev = np.zeros(size)
    scale = 0.0
    breakdowns = 0
    residual_norm = 0.0
    steps = 0
    eps = np.finfo(np.float64).eps
    for j in range(order):
        basis[j] = q
        w = _apply(matvec, q)
        steps += 1
        alpha = float(q @ w)
        w = w - alpha * q - beta_prev * q_prev
        w = _orthogonalise(w, basis, j + 1)
        alphas[j] = alpha
        beta = float(np.linalg.norm(w))
        scale = max(scale, abs(alpha), beta, beta_prev)
        if j == order - 1:
            residual_norm = beta
            break
        if beta <= 1e3 * size * eps * max(scale, np.finfo(np.float64).tiny):
            # Invariant subspace: the Ritz values found so far are exact.
            breakdowns += 1
            if warn_on_breakdown:
                warnings.warn(
                    f"Lanczos breakdown at step {j + 1} of {order}: the Krylov "
                    f"space is invariant (beta={beta:.3g}). "
                    + (
                        "Restarting with a random vector orthogonal to the basis."
                        if restart_on_breakdown
                        else "Stopping early; only "
                        f"{j + 1} Ritz values are available."
                    ),
                    RuntimeWarning,
                    stacklevel=2,
                )
            if not restart_on_breakdown:
                alphas = alphas[: j + 1]
                betas = betas[:j]
                basis = basis[: j + 1]
                residual_norm = 0.0
                break
            w = _orthogonalise(rng.standard_normal(size), basis, j + 1)
            q_prev, q = q, w / np.linalg.norm(w)
            betas[j] = 0.0
            beta_prev = 0.0
            continue
        betas[j] = beta
        q_prev, q = q, w / beta
        beta_prev = beta
    return LanczosDecomposition(
        alphas=alphas,
        betas=betas,
        basis=basis.T.copy() if keep_basis else None,
        residual_norm=float(residual_norm),
        num_matvecs=steps,
        breakdowns=breakdowns,
    )


def ritz_pairs(decomposition):
    """Ritz values (ascending) and Ritz vectors of `T`, plus residual bounds.

    Returns:
        `(theta, s, residuals)`: theta `(m,)`, s `(m, m)` eigenvectors of `T`,
        residuals `(m,)` equal to `beta_m * |s[m-1, i]|`.
    """
    theta, s = np.linalg.eigh(decomposition.tridiagonal())
    residuals = np.abs(decomposition.residual_norm * s[-1, :])
    return theta, s, residuals


def _select(theta, which, k):
    if which == "largest":
        idx = np.argsort(theta)[::-1][:k]
    elif which == "smallest":
        idx = np.argsort(theta)[:k]
    else:
        idx = np.argsort(np.abs(theta))[::-1][:k]
    # Report largest first regardless of the selection rule.
    return idx[np.argsort(theta[idx])[::-1]]


def lanczos(
    matvec,
    size,
    *,
    k=1,
    order=None,
    which="largest",
    tol=1e-4,
    seed=0,
    start=None,
    return_eigenvectors=False,
):
    """Top-`k` eigenvalues of a symmetric operator by Lanczos.

    Runs `m = order` Lanczos steps with full float64 reorthogonalisation
    (`lanczos_tridiagonal`) and returns the `k` extreme Ritz values of
    `T = Q^T A Q` (shape `(m, m)`). Ritz residuals `||A u - theta u||` are
    `beta_m |s_{m,i}|` and cost no extra product.

    Args:
        matvec: callable `v -> A v` on vectors of shape `(n,)`.
        size: `n`.
        k: number of eigenvalues, `1 <= k <= order`.
        order: Lanczos steps (products); default `min(n, max(2k + 10, 20))`.
        which: `"largest"` (algebraic, default), `"smallest"` or `"magnitude"`.
        tol: relative residual under which a Ritz pair counts as converged.
        seed: seed of the random start vector.
        start: optional start vector `(n,)`.
        return_eigenvectors: also return Ritz vectors `Q s_i`, shape `(n, k)`.

    Returns:
        An `EigenResult` with `eigenvalues` of shape `(k,)`, largest first.

    Example:
        >>> a = np.diag(np.arange(50.0))
        >>> lanczos(lambda v: a @ v, 50, k=2).eigenvalues
        array([49., 48.])
    """
    size = _check_common(matvec, size)
    k = val.check_int("k", k, minimum=1, maximum=size)
    if order is None:
        order = min(size, max(2 * k + 10, 20))
    order = val.check_int("order", order, minimum=k, maximum=size)
    which = val.check_choice("which", which, _WHICH)
    tol = val.check_float("tol", tol, nonnegative=True)
    dec = lanczos_tridiagonal(
        matvec,
        size,
        order=order,
        seed=seed,
        start=start,
        keep_basis=return_eigenvectors,
    )
    theta, s, residuals = ritz_pairs(dec)
    idx = _select(theta, which, k)
    values = theta[idx]
    res = residuals[idx]
    floor = np.finfo(np.float64).tiny
    converged = bool(np.all(res <= tol * np.maximum(np.abs(values), floor)))
    vectors = dec.basis @ s[:, idx] if return_eigenvectors else None
    return EigenResult(
        eigenvalues=values,
        eigenvectors=vectors,
        residuals=res,
        converged=converged,
        num_matvecs=dec.num_matvecs,
        method="lanczos",
    )


# --------------------------------------------------------------------------- #
# Power iteration
# --------------------------------------------------------------------------- #
def power_iteration(
    matvec,
    size,
    *,
    k=1,
    max_iter=200,
    tol=1e-6,
    seed=0,
    return_eigenvectors=False,
):
    """Largest-magnitude eigenvalues by power iteration with Hotelling deflation.

    For `i = 1..k`, iterates `u <- B_i u / ||B_i u||` on the deflated operator
    `B_i = A - sum_{j<i} lambda_j u_j u_j^T` and estimates `lambda_i = u^T B_i u`
    (Rayleigh quotient), stopping when `|lambda^(t) - lambda^(t-1)| <=
    tol * |lambda^(t)|` or after `max_iter` products. Converges geometrically
    with rate `|lambda_{i+1} / lambda_i|`; finds eigenvalues of largest
    *magnitude* (e.g. the Hessian's `lambda_max` when it dominates the negative
    ones).

    Args:
        matvec: callable `v -> A v` on vectors of shape `(n,)`.
        size: `n`.
        k: number of eigenpairs.
        max_iter: products allowed per eigenpair.
        tol: relative change of the Rayleigh quotient that stops an iteration.
        seed: seed of the random start vectors.
        return_eigenvectors: also return the unit eigenvectors `(n, k)`.

    Returns:
        An `EigenResult` (largest first); `residuals[i] = ||B_i u_i - lambda_i
        u_i||`, `converged` is `True` if every eigenpair met `tol`.

    Example:
        >>> a = np.diag([5.0, 1.0, 0.5])
        >>> round(power_iteration(lambda v: a @ v, 3).eigenvalues[0], 6)
        5.0
    """
    size = _check_common(matvec, size)
    k = val.check_int("k", k, minimum=1, maximum=size)
    max_iter = val.check_int("max_iter", max_iter, minimum=1)
    tol = val.check_float("tol", tol, nonnegative=True)
    rng = np.random.default_rng(_check_seed(seed))
    values, vectors, residuals = [], [], []
    all_converged = True
    products = 0

    def deflated(v):
        out = _apply(matvec, v)
        for lam, u in zip(values, vectors):
            out = out - lam * (u @ v) * u
        return out

    for _ in range(k):
        u = _random_unit(rng, size)
        lam_old = None
        converged = False
        lam, res = 0.0, np.inf
        for _ in range(max_iter):
            w = deflated(u)
            products += 1
            lam = float(u @ w)
            res = float(np.linalg.norm(w - lam * u))
            norm = np.linalg.norm(w)
            if lam_old is not None and abs(lam - lam_old) <= tol * abs(lam):
                converged = True
                break
            if norm == 0:  # u is in the null space of the deflated operator
                converged = True
                break
            lam_old = lam
            u = w / norm
        all_converged &= converged
        values.append(lam)
        vectors.append(u)
        residuals.append(res)

    values = np.asarray(values)
    order = np.argsort(values)[::-1]
    return EigenResult(
        eigenvalues=values[order],
        eigenvectors=np.stack(vectors, axis=1)[:, order]
        if return_eigenvectors
        else None,
        residuals=np.asarray(residuals)[order],
        converged=bool(all_converged),
        num_matvecs=products,
        method="power_iteration",
    )


# --------------------------------------------------------------------------- #
# Hutchinson trace
# --------------------------------------------------------------------------- #
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
    rng = np.random.default_rng(_check_seed(seed))
    samples = np.empty(num_samples)
    for i in range(num_samples):
        if distribution == "rademacher":
            z = rng.integers(0, 2, size=size) * 2.0 - 1.0
        else:
            z = rng.standard_normal(size)
        samples[i] = z @ _apply(matvec, z)
    return TraceResult(
        trace=float(samples.mean()),
        stderr=float(samples.std(ddof=1) / np.sqrt(num_samples)),
        num_samples=num_samples,
        num_matvecs=num_samples,
        samples=samples,
    )


# --------------------------------------------------------------------------- #
# Stochastic Lanczos quadrature
# --------------------------------------------------------------------------- #
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
