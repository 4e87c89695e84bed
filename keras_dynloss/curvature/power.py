"""Power iteration with Hotelling deflation on a matrix-free symmetric operator."""

import numpy as np

from keras_dynloss import _checks as val
from keras_dynloss.curvature._host import _apply, _check_common, _check_seed, _random_unit
from keras_dynloss.curvature.results import EigenResult


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
