"""Results of the spectral algorithms: frozen dataclasses that say how far to trust them."""

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class EigenResult:
    """Extreme eigenpairs of a symmetric operator `A`.

    Attributes:
        eigenvalues: array `(k,)`, largest first.
        eigenvectors: array `(n, k)`, unit column `i` for `eigenvalues[i]`, or `None`.
        residuals: array `(k,)`, `||A u_i - lambda_i u_i||`; each eigenvalue is within its
            residual of an eigenvalue of `A`.
        converged: whether every `residuals[i] <= tol |eigenvalues[i]|`.
        num_matvecs: products with `A` used.
        method: the algorithm, e.g. `"lanczos"`.
    """

    eigenvalues: np.ndarray
    eigenvectors: Optional[np.ndarray]
    residuals: np.ndarray
    converged: bool
    num_matvecs: int
    method: str

    @property
    def max_eigenvalue(self):
        """The largest eigenvalue found, `eigenvalues[0]`."""
        return float(self.eigenvalues[0])


@dataclasses.dataclass(frozen=True, eq=False)
class TraceResult:
    """Hutchinson's estimate of `tr(A) = E[z^T A z]` (probes with `E[z z^T] = I`).

    Attributes:
        trace: the mean of the samples.
        stderr: its standard error, `std(samples, ddof=1) / sqrt(s)`.
        num_samples: number of probes `s`.
        num_matvecs: products with `A` used (`s`).
        samples: array `(s,)` of `z_i^T A z_i`.
    """

    trace: float
    stderr: float
    num_samples: int
    num_matvecs: int
    samples: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class DensityResult:
    """Spectral density `phi(t) ~ 1/V sum_v sum_j w_vj N(t; theta_vj, sigma^2)` of `A` (SLQ).

    Attributes:
        grid: array `(g,)` of evaluation points.
        density: array `(g,)`, `phi(grid)`; it integrates to 1.
        nodes: array `(V, m)`, the Ritz values `theta_vj`, NaN where a run stopped early.
        weights: array `(V, m)`, `w_vj` (summing to 1 per run), 0 where `nodes` is NaN.
        sigma: width of the Gaussian kernel.
        num_matvecs: products with `A` used.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    num_matvecs: int

    @property
    def eigenvalues(self):
        """The finite nodes of all runs, largest first, array `(<= V m,)`."""
        return np.sort(self.nodes[np.isfinite(self.nodes)])[::-1]

    def mass(self, low, high):
        """The estimated fraction of eigenvalues in `[low, high]` (mean weight of nodes there)."""
        inside = (self.nodes >= low) & (self.nodes <= high)  # False at NaN
        return float(self.weights[inside].sum() / self.nodes.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class LanczosDecomposition:
    """A Lanczos factorisation `A Q = Q T + r e_m^T` of a symmetric `A` (size `n`): `Q` (n, m)
    with orthonormal columns, `T = Q^T A Q` tridiagonal, `Q^T r = 0`.

    Attributes:
        alphas: array `(m,)`, the diagonal of `T`.
        betas: array `(m - 1,)`, its off-diagonal; 0 after a breakdown.
        basis: array `(n, m)`, `Q`, or `None` if not kept.
        residual_norm: `||r||`.
        num_matvecs: products with `A` used (`m`).
        breakdowns: invariant subspaces met before the last step.
    """

    alphas: np.ndarray
    betas: np.ndarray
    basis: Optional[np.ndarray]
    residual_norm: float
    num_matvecs: int
    breakdowns: int

    @property
    def order(self):
        """The number of steps `m`."""
        return int(self.alphas.shape[0])

    def tridiagonal(self):
        """The dense `T`, array `(m, m)`."""
        return np.diag(self.alphas) + np.diag(self.betas, 1) + np.diag(self.betas, -1)
