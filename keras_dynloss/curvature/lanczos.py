"""Lanczos on a symmetric `v -> A v` in `krylov_dtype()`: `lanczos_loop` in graphs, `lanczos`
from Python. Products use `ops.einsum` (on PyTorch Keras's `matmul` returns float32)."""

import collections
import warnings

import keras
import numpy as np
from keras import ops

from keras_dynloss import _checks, backend
from keras_dynloss.curvature.results import EigenResult, LanczosDecomposition

#: A run of `lanczos_loop`: `alphas`, `betas` (m,) (`betas[j]` the residual norm after step
#: `j`, 0 at a breakdown), `basis` (m, n) (rows beyond `steps` zero), `steps`, `breakdowns`.
LanczosRun = collections.namedtuple("LanczosRun", "alphas betas basis steps breakdowns")
_State = collections.namedtuple("_State", "steps q basis alphas betas breakdowns done")
_WHICH = ("largest", "smallest", "magnitude")


def krylov_dtype():
    """The dtype of the Krylov arithmetic: "float64"; "float32" on JAX without x64."""
    if backend.name() == "jax":
        import jax
        if not jax.config.jax_enable_x64:
            return "float32"
    return "float64"


def _norm(x):
    return ops.sqrt(ops.sum(x * x))


def _orthogonalise(w, basis):
    """`w - Q^T Q w`, twice ("twice is enough"); rows of `basis` not written yet are zero."""
    for _ in range(2):
        w = w - ops.einsum("mn,m->n", basis, ops.einsum("mn,n->m", basis, w))
    return w


def _start(start, order):
    dtype = krylov_dtype()
    start = ops.cast(start, dtype)
    zeros = ops.zeros((order,), dtype)
    return _State(steps=ops.convert_to_tensor(0, "int32"), q=start / _norm(start),
                  basis=ops.zeros((order, ops.shape(start)[0]), dtype), alphas=zeros,
                  betas=zeros, breakdowns=ops.convert_to_tensor(0, "int32"),
                  done=ops.convert_to_tensor(False))


def _continues(state, order):
    return ops.logical_and(state.steps < order, ops.logical_not(state.done))


def _tridiagonal_eigh(alphas, betas, steps):
    """Eigenpairs `(theta (m,), s (m, m))` of `T_steps`, largest first (rows `>= steps` sunk)."""
    m = alphas.shape[0]
    index = ops.arange(m)
    low = -2.0 * (ops.max(ops.abs(alphas)) + 2.0 * ops.max(ops.abs(betas))) - 1.0
    diagonal = ops.where(index < steps, alphas, low)
    off = ops.where(index[:-1] < steps - 1, betas[:-1], ops.zeros_like(betas[:-1]))
    theta, s = ops.eigh(ops.diag(diagonal) + ops.diag(off, 1) + ops.diag(off, -1))
    return ops.flip(theta, 0), ops.flip(s, 1)


def lanczos_step(matvec, state, *, order, tol=None, k=1, min_steps=1, restart=True, seed=0,
                 branch=ops.cond):
    """Step `j` (arguments as in `lanczos_loop`; `branch`: `ops.cond` or a Python `if`). A
    breakdown (`beta_j <= eps^(3/4) max|T|`) sets `beta_j = 0` and, before the last step, is
    counted and restarts (seed `fold_in(seed, j)`) or stops without `restart`."""
    j, q, basis, alphas, betas, breakdowns, _ = state
    dtype = keras.backend.standardize_dtype(q.dtype)
    basis = ops.slice_update(basis, (j, 0 * j), q[None])
    w = ops.cast(matvec(q), dtype)
    alpha = ops.sum(q * w)
    w = _orthogonalise(w, basis)
    beta = _norm(w)
    alphas = ops.slice_update(alphas, (j,), alpha[None])
    scale = ops.max(ops.concatenate([ops.abs(alphas), betas, beta[None]]))
    broke = beta <= float(np.finfo(dtype).eps) ** 0.75 * scale
    beta = ops.where(broke, ops.zeros_like(beta), beta)
    betas = ops.slice_update(betas, (j,), beta[None])
    more = j + 1 < order
    q = w / ops.where(broke, ops.ones_like(beta), beta)
    if restart:
        def fresh():
            r = backend.get().uniform(ops.shape(q), backend.fold_in(seed, j), dtype)
            r = _orthogonalise(r, basis)
            return r / _norm(r)

        q = branch(ops.logical_and(broke, more), fresh, lambda: q)
    done = ops.logical_and(broke, not restart)
    if tol is not None:
        theta, s = _tridiagonal_eigh(alphas, betas, j + 1)
        residuals = ops.abs(beta * ops.take(s, j, axis=0)[:k])
        met = ops.all(residuals <= tol * ops.abs(theta[:k]))
        done = ops.logical_or(done, ops.logical_and(j + 1 >= max(k, min_steps), met))
    breakdowns = breakdowns + ops.cast(ops.logical_and(broke, more), "int32")
    return _State(j + 1, q, basis, alphas, betas, breakdowns, done)


def lanczos_loop(matvec, start, order, *, tol=None, k=1, min_steps=1, restart=True, seed=0):
    """Up to `order` Lanczos steps of `matvec` from `start`, as one `ops.while_loop`.

    Args:
        matvec: `v -> A v` on tensors `(n,)` of `krylov_dtype()`, traceable (graph code);
            `A` symmetric.
        start: tensor `(n,)`, nonzero (normalised here).
        order: the most steps `m` (a Python int; the basis is `(m, n)`).
        tol: `None` (run `order` steps, or to a breakdown without `restart`) or a relative
            residual: stop once each of the top-`k` Ritz pairs has `beta_j |s_i[j]| <= tol
            |theta_i|` (so does a breakdown: the Ritz pairs are then exact).
        k: the number of top Ritz pairs the tolerance watches, `<= order`.
        min_steps: never stop on the tolerance before `max(k, min_steps)` steps.
        restart: after a breakdown, go on from a random vector orthogonal to the basis.
        seed: seed of the restart vectors, an int or an int32 tensor `(2,)`.

    Returns:
        A `LanczosRun`.

    Example:
        >>> a = ops.convert_to_tensor(np.diag([3.0, 2.0, 1.0]))
        >>> run = lanczos_loop(lambda v: ops.einsum("ij,j->i", a, v), ops.ones((3,)), 3)
        >>> ops.convert_to_numpy(ritz(run)[0])
        array([3.])
    """
    _checks.check_int("k", k, minimum=1, maximum=order)

    def body(*state):
        return tuple(lanczos_step(matvec, _State(*state), order=order, tol=tol, k=k,
                                  min_steps=min_steps, restart=restart, seed=seed))

    state = _State(*ops.while_loop(lambda *state: _continues(_State(*state), order), body,
                                   tuple(_start(start, order))))
    return LanczosRun(state.alphas, state.betas, state.basis, state.steps, state.breakdowns)


def ritz(run, k=1):
    """`(values (k,), residuals (k,), vectors (n, k))`, the top-`k` Ritz pairs of a `LanczosRun`
    (NaN and zero beyond its steps): for `T_steps s_i = theta_i s_i`, `u_i = Q^T s_i` has
    residual `||A u_i - theta_i u_i|| = beta_{steps-1} |s_i[steps-1]|`."""
    _checks.check_int("k", k, minimum=1, maximum=run.alphas.shape[0])
    theta, s = _tridiagonal_eigh(run.alphas, run.betas, run.steps)
    real = ops.arange(k) < run.steps
    s = ops.where(real[None, :], s[:, :k], ops.zeros_like(s[:, :k]))
    last = run.steps - 1
    residuals = ops.abs(ops.take(run.betas, last) * ops.take(s, last, axis=0))
    nan = ops.full((k,), np.nan, run.alphas.dtype)
    return (ops.where(real, theta[:k], nan), ops.where(real, residuals, nan),
            ops.einsum("mn,mk->nk", run.basis, s))


def _check_operator(matvec, size, seed):
    _checks.check_callable("matvec", matvec)
    return _checks.check_int("size", size, minimum=1), _checks.check_int("seed", seed, minimum=0)


def _host_matvec(matvec, size):
    """`matvec` on NumPy float64 vectors, as a function of Krylov tensors."""
    def apply(q):
        out = matvec(np.asarray(ops.convert_to_numpy(q), np.float64))
        out = np.asarray(ops.convert_to_numpy(out) if ops.is_tensor(out) else out, np.float64)
        if out.size != size:
            raise _checks.invalid("matvec", f"a function returning {size} numbers", matvec)
        return ops.convert_to_tensor(out.reshape(size), krylov_dtype())

    return apply


def lanczos_tridiagonal(matvec, size, *, order, seed=0, start=None, keep_basis=True,
                        restart_on_breakdown=True, warn_on_breakdown=True):
    """`order` Lanczos steps of any callable, driven from Python: `Q` (n, m) and `T = Q^T A Q`
    (at `m = n`, `A = Q T Q^T`). A breakdown is reported with `warnings.warn`.

    Args:
        matvec: `v -> A v` on NumPy float64 vectors `(n,)` (an array or tensor out).
        size: `n`.
        order: the number of steps `m`, `1 <= m <= n` (one product each).
        seed: seed of the random start vector and of the restarts, an int >= 0.
        start: optional start vector `(n,)`, nonzero (normalised here).
        keep_basis: return `Q`.
        restart_on_breakdown: after a breakdown, go on from a random vector orthogonal to
            `Q` (`T` becomes block diagonal); else stop there.
        warn_on_breakdown: warn (`RuntimeWarning`) on a breakdown.

    Returns:
        A `LanczosDecomposition`.

    Example:
        >>> a = np.diag([3.0, 2.0, 1.0])
        >>> dec = lanczos_tridiagonal(lambda v: a @ v, 3, order=3)
        >>> np.allclose(dec.basis @ dec.tridiagonal() @ dec.basis.T, a)
        True
    """
    size, seed = _check_operator(matvec, size, seed)
    order = _checks.check_int("order", order, minimum=1, maximum=size)
    if start is None:
        start = backend.get().normal((size,), backend.seed_pair(seed), krylov_dtype())
    else:
        start = np.asarray(start, np.float64)
        if start.shape != (size,) or not np.all(np.isfinite(start)) or not np.any(start):
            raise _checks.invalid("start", f"a finite nonzero vector of shape ({size},)", start)
    apply = _host_matvec(matvec, size)
    state = _start(start, order)
    while bool(ops.convert_to_numpy(_continues(state, order))):
        state = lanczos_step(apply, state, order=order, restart=restart_on_breakdown, seed=seed,
                             branch=lambda pred, yes, no: yes() if bool(pred) else no())
    steps, breakdowns = int(state.steps), int(state.breakdowns)
    if breakdowns and warn_on_breakdown:
        then = ("went on from a random vector orthogonal to the basis" if restart_on_breakdown
                else f"stopped after {steps} of {order} steps")
        warnings.warn(f"Lanczos breakdown: the Krylov space is invariant ({breakdowns} in "
                      f"{steps} steps); {then}.", RuntimeWarning, stacklevel=2)
    alphas, betas, basis = (np.asarray(ops.convert_to_numpy(x), np.float64)[:steps]
                            for x in (state.alphas, state.betas, state.basis))
    return LanczosDecomposition(alphas=alphas, betas=betas[:-1],
                                basis=basis.T.copy() if keep_basis else None,
                                residual_norm=float(betas[-1]), num_matvecs=steps,
                                breakdowns=breakdowns)


def lanczos(matvec, size, *, k=1, order=None, which="largest", tol=1e-4, seed=0, start=None,
            return_eigenvectors=False):
    """`k` extreme eigenvalues of a symmetric operator by Lanczos (`lanczos_tridiagonal`).

    Args:
        matvec: `v -> A v` on NumPy float64 vectors `(n,)`.
        size: `n`.
        k: the number of eigenvalues, `1 <= k <= n`.
        order: steps `m` (products), `k <= m <= n`; default `min(n, max(2k + 10, 20))`.
        which: `"largest"` (algebraic), `"smallest"` or `"magnitude"` (largest `|theta|`).
        tol: the relative residual under which the result counts as converged.
        seed: seed of the random start vector, an int >= 0.
        start: optional start vector `(n,)`.
        return_eigenvectors: also return the Ritz vectors `(n, k)`.

    Returns:
        An `EigenResult`, eigenvalues `(k,)` largest first, residuals as in `ritz`.

    Example:
        >>> a = np.diag(np.r_[np.linspace(0.0, 1.0, 48), 5.0, 10.0])
        >>> lanczos(lambda v: a @ v, 50, k=2).eigenvalues.round(6)
        array([10.,  5.])
    """
    size, seed = _check_operator(matvec, size, seed)
    k = _checks.check_int("k", k, minimum=1, maximum=size)
    order = min(size, max(2 * k + 10, 20)) if order is None else order
    order = _checks.check_int("order", order, minimum=k, maximum=size)
    which = _checks.check_choice("which", which, _WHICH)
    tol = _checks.check_float("tol", tol, nonnegative=True)
    dec = lanczos_tridiagonal(matvec, size, order=order, seed=seed, start=start,
                              keep_basis=return_eigenvectors)
    theta, s = np.linalg.eigh(dec.tridiagonal())
    key = {"largest": -theta, "smallest": theta, "magnitude": -np.abs(theta)}[which]
    pick = np.argsort(key, kind="stable")[:k]
    pick = pick[np.argsort(-theta[pick], kind="stable")]
    values, residuals = theta[pick], np.abs(dec.residual_norm * s[-1, pick])
    return EigenResult(eigenvalues=values,
                       eigenvectors=dec.basis @ s[:, pick] if return_eigenvectors else None,
                       residuals=residuals,
                       converged=bool(np.all(residuals <= tol * np.abs(values))),
                       num_matvecs=dec.num_matvecs, method="lanczos")
