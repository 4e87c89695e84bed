"""Result types of the spectral algorithms: small frozen dataclasses that say how
far to trust a value (products used, residuals, standard errors, convergence)."""

import dataclasses
from typing import Optional

import numpy as np


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
