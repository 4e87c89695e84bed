"""Lanczos on a matrix-free symmetric operator: factorisation and top-k eigenpairs.

The iteration itself is `krylov.lanczos_loop` (a `tf.while_loop` with a
preallocated float64 basis and full reorthogonalisation, the same code the
`CurvatureProbe` compiles); here it runs eagerly on any `matvec`, NumPy
included, and the Ritz pairs are taken in NumPy.
"""

import warnings

import numpy as np
import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss.curvature import krylov
from keras_dynloss.curvature._host import _check_common, _check_seed, _random_unit, _tensor_matvec
from keras_dynloss.curvature.results import EigenResult, LanczosDecomposition

_WHICH = ("largest", "smallest", "magnitude")


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
    seed = _check_seed(seed)
    if start is None:
        q = _random_unit(np.random.default_rng(seed), size)
    else:
        q = np.asarray(start, dtype=np.float64).reshape(-1)
        if q.shape != (size,) or not np.all(np.isfinite(q)):
            raise val.invalid("start", f"a finite vector of shape ({size},)", start)
        if np.linalg.norm(q) == 0:
            raise val.invalid("start", "a nonzero vector", start)
    run = krylov.lanczos_loop(
        _tensor_matvec(matvec), tf.constant(q), order, restart=restart_on_breakdown, seed=seed
    )
    steps = int(run.steps)
    breakdowns = int(run.breakdowns)
    if breakdowns and warn_on_breakdown:
        warnings.warn(
            f"Lanczos breakdown ({breakdowns}x in {steps} steps of {order}): the "
            "Krylov space is invariant. "
            + (
                "Restarted with a random vector orthogonal to the basis."
                if restart_on_breakdown
                else f"Stopped early; only {steps} Ritz values are available."
            ),
            RuntimeWarning,
            stacklevel=2,
        )
    alphas = run.alphas.numpy()[:steps]
    betas = run.betas.numpy()[:steps]
    return LanczosDecomposition(
        alphas=alphas,
        betas=betas[:-1].copy(),
        basis=krylov.basis_rows(run).numpy().T.copy() if keep_basis else None,
        residual_norm=float(betas[-1]),
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
