"""The one Lanczos: a TensorFlow loop on a matvec.

For a Gram operator `A = M M^T` (the NTK) it can stop on the Gram pair
(`gram_norm=`, `gram_ritz`): half a product more, one polynomial degree on.

It takes only a product `matvec: v -> A v` on float64 tensors of shape `(n,)`
(any TensorFlow-traceable function, or eager code) and run as a
`tf.while_loop`: inside a `tf.function` (the `CurvatureProbe`) the graph holds
one loop body whatever the order, so trace time does not grow with it; called
eagerly (the host API in `algorithms`, where `matvec` may be NumPy code) the
same loop runs step by step in Python.

Lanczos keeps its basis `Q` (up to `m` rows of shape `(n,)`, float64) in a
`tf.TensorArray`: a row is written once, never updated. It reorthogonalises
fully, twice per step ("twice is enough"): a small basis (`m n <=
DENSE_BASIS_SIZE`, 8 MiB) is stacked into one matrix and projected out with
two matrix products (classical Gram-Schmidt), a larger one is read row by row
in place (modified Gram-Schmidt). On the spiral MLP (n = 603, XLA) the
stacked reads cut a probe's non-product time per Lanczos step from ~0.05 to
~0.005 ms (0.81 -> 0.54 ms a probe, `bench/curvature_fig4_in_step.py`).
Memory besides the product itself for a large basis: at most
`(m + 4) n` float64 numbers in graph mode (TensorFlow's allocator peak for
`m = 10`, `n = 2e6`: 13.6 n), 17.8 n under XLA (`bench/curvature_scale.py`).
The earlier `(m, n)` tensor loop variable was copied by every row update:
30-32 n in graph mode, 24 n under XLA.
"""

import collections

import numpy as np
import tensorflow as tf

from keras_dynloss import _compat
from keras_dynloss.curvature import counter_random
from keras_dynloss.curvature import gram_ritz
from keras_dynloss.curvature import tridiagonal_top

_EPS = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)

#: Result of `lanczos_loop` (tensors). `alphas`, `betas`: `(m,)`; only the first
#: `steps` entries are filled. `betas[j]` is the norm of the residual after step
#: `j` (the off-diagonal `T[j, j+1]` for `j < steps - 1`, the final residual
#: norm for `j = steps - 1`; 0 at a breakdown). `basis`: a `tf.TensorArray` of
#: `m` rows `(n,)`, `q_0 .. q_{steps-1}` written (read it with `basis_rows`,
#: `combine`, `ritz`). `steps`, `breakdowns`: int32 scalars. `eigh`: with a
#: `tol`, the `_padded_eigh` of the last step's `T` the stopping rule computed
#: (reused by `ritz`; under XLA with `k = 1` and no `gram_norm`, the top pair
#: alone, `tridiagonal_top.top_pair`), else `None`.
#: `gram`: with `gram_norm`, `(stopped, value, residual, coefficients (m,))`:
#: whether the run stopped on the Gram pair (see `lanczos_loop`), that pair's
#: value and relative residual, and its vector's coefficients on rows
#: `0 .. steps` (one more row than `steps`); else `None`.
LanczosRun = collections.namedtuple("LanczosRun", "alphas betas basis steps breakdowns eigh gram",
                                    defaults=(None, None))


#: Most basis numbers (`rows x n`) read as one stacked `(rows, n)` matrix (a
#: copy of at most 8 MiB); a larger basis is read row by row, in place. On a
#: small model a loop iteration per row costs more than its arithmetic (spiral
#: MLP, n = 603, XLA: 2-3x the cost of a step's projections).
DENSE_BASIS_SIZE = 2 ** 20


def _is_dense(rows, n):
    return n is not None and rows * n <= DENSE_BASIS_SIZE


def _orthogonalise(w, basis, rows, size):
    """`w` minus its projections on rows `0 .. rows-1` of `basis` (`size` rows
    in all), twice ("twice is enough"): classical Gram-Schmidt on the stacked
    basis when it is small (`DENSE_BASIS_SIZE`), else modified Gram-Schmidt
    reading each row in place."""
    if _is_dense(size, w.shape[0]):
        q = basis.stack()
        live = tf.range(size) < rows
        for _ in range(2):
            w = w - tf.linalg.matvec(q, tf.where(live, tf.linalg.matvec(q, w), 0.0), transpose_a=True)
        return w

    def body(i, w):
        q = basis.read(i % rows)
        return i + 1, w - tf.tensordot(q, w, 1) * q

    return tf.while_loop(lambda i, _: i < 2 * rows, body, (tf.constant(0), w), parallel_iterations=1)[1]


def basis_rows(run):
    """The filled basis of a `LanczosRun` as one `(steps, n)` tensor (a copy)."""
    return run.basis.gather(tf.range(run.steps))


def combine(run, coefficients, rows=None):
    """`sum_i coefficients[i] q_i` over the filled rows (or the first `rows`):
    `(n, k)` for `coefficients` of shape `(m, k)`: one product with the stacked
    basis when it is small (`DENSE_BASIS_SIZE`), else accumulated row by row
    (no basis copy)."""
    coefficients = tf.convert_to_tensor(coefficients, tf.float64)
    rows = run.steps if rows is None else rows
    m = coefficients.shape[0]
    if _is_dense(m, run.basis.element_shape[0]):  # one product with the stacked rows
        live = tf.range(m) < rows
        return tf.matmul(run.basis.stack()[:m], tf.where(live[:, None], coefficients, 0.0), transpose_a=True)

    def term(i):
        return run.basis.read(i)[:, None] * coefficients[i][None, :]

    def body(i, total):
        return i + 1, total + term(i)

    return tf.while_loop(lambda i, _: i < rows, body, (tf.constant(1), term(0)), parallel_iterations=1)[1]


def tridiagonal(alphas, betas, steps):
    """Dense `T` of shape `(steps, steps)` from a `LanczosRun`'s coefficients."""
    a = alphas[:steps]
    b = betas[: steps - 1]
    return tf.linalg.diag(a) + tf.linalg.diag(b, k=1) + tf.linalg.diag(b, k=-1)


def _padded_eigh(alphas, betas, steps):
    """Eigenpairs of `T_steps`, returned on the static `(m, m)` shape.

    Rows `>= steps` are decoupled and given a diagonal below `-3 max|T|`, under
    every eigenvalue of `T_steps` (whose norm is at most `3 max|T|`): the top
    `steps` eigenvalues (descending) are those of `T_steps`, their eigenvectors
    zero beyond row `steps`. Static shapes keep the loop XLA-compilable.

    Under XLA, for `m > 12`, the decomposition runs on the leading `8 x 8`
    block while `steps <= 8` (a `tf.switch_case`): XLA's CPU `eigh` costs
    ~17 us at 8 x 8 but ~220 us at 20 x 20, and a warm-started probe stops
    after a few steps. The rest is the padding diagonal (identity
    eigenvectors). More sizes would cost more compile time (~0.25 s per
    `eigh` instance) than they save. Elsewhere LAPACK's `eigh` of the whole
    `(m, m)` matrix is cheaper than the branch.
    """
    m = alphas.shape[0]
    idx = tf.range(m)
    live = idx < steps
    scale = tf.reduce_max(tf.abs(tf.where(live, alphas, 0.0))) + tf.reduce_max(tf.abs(betas))
    low = -4.0 * scale - 1.0
    diag = tf.where(live, alphas, low)
    off = tf.where(idx[:-1] < steps - 1, betas[:-1], 0.0)
    sizes = [8, m] if m > 12 else [m]

    def block(b):
        def eigh():
            t = (tf.linalg.diag(diag[:b]) + tf.linalg.diag(off[:b - 1], k=1)
                 + tf.linalg.diag(off[:b - 1], k=-1))
            theta, s = tf.linalg.eigh(t)  # ascending; the padding rows come first
            theta = tf.concat([theta[::-1], tf.fill([m - b], low)], 0)
            s = tf.pad(s[:, ::-1], [[0, m - b], [0, m - b]]) + tf.pad(tf.eye(m - b, dtype=s.dtype), [[b, 0], [b, 0]])
            return theta, s
        return eigh

    if len(sizes) == 1 or not _compat.in_xla_context():
        return block(m)()
    branch = tf.reduce_sum(tf.cast(tf.constant(sizes[:-1]) < tf.cast(steps, tf.int32), tf.int32))
    return tf.switch_case(branch, [block(b) for b in sizes])


def ritz(run, k=1):
    """Top-`k` Ritz pairs of a `LanczosRun` (largest first).

    Returns:
        `(values (k,), residuals (k,), vectors (n, k))`, float64 tensors. The
        residual `||A u - theta u|| = beta_last |s_last|` for unit `u` costs no
        product. With fewer than `k` steps the missing entries are NaN / zero.
    """
    if run.gram is not None:
        if k != 1:
            raise ValueError(f"ritz: a run with `gram_norm` has one pair; received k={k}")
        return tf.cond(run.gram[0], lambda: _gram_ritz(run), lambda: _tridiagonal_ritz(run, 1))
    return _tridiagonal_ritz(run, k)


def _gram_ritz(run):
    _, value, residual, coefficients = run.gram
    vector = combine(run, coefficients[:, None], rows=run.steps + 1)
    return value[None], (residual * tf.abs(value))[None], vector


def _tridiagonal_ritz(run, k):
    m = run.alphas.shape[0]
    theta, s = run.eigh if run.eigh is not None else _padded_eigh(run.alphas, run.betas, run.steps)
    if k > m:  # more pairs asked than the basis holds: NaN beyond
        theta = tf.concat([theta, tf.zeros([k - m], tf.float64)], 0)
        s = tf.concat([s, tf.zeros([m, k - m], tf.float64)], 1)
    theta, s = theta[:k], s[:, :k]
    real = tf.range(k) < tf.minimum(run.steps, m)
    nan = tf.constant(np.nan, tf.float64)
    values = tf.where(real, theta, nan)
    residuals = tf.where(real, tf.abs(run.betas[run.steps - 1] * s[run.steps - 1]), nan)
    vectors = combine(run, tf.where(real[None, :], s, 0.0))
    return values, residuals, vectors


def lanczos_loop(matvec, start, order, *, tol=None, k=1, min_steps=1, restart=True, seed=0, gram_norm=None):
    """Runs up to `order` Lanczos steps of `matvec` from `start`.

    Builds `Q = [q_0 .. q_{m-1}]` and `T = Q^T A Q` tridiagonal with
    `A q_j = beta_{j-1} q_{j-1} + alpha_j q_j + beta_j q_{j+1}`, all in float64.
    A breakdown (`beta_j <= 1e3 n eps max|T|`: an invariant subspace) is
    counted; with `restart` the iteration continues from a random vector
    orthogonal to `Q` (`counter_random`, seeded by `seed` and `j`) with
    `beta_j = 0`, else it stops.

    Args:
        matvec: `v -> A v` on float64 tensors `(n,)`; `A` symmetric.
        start: float64 tensor `(n,)`, nonzero (normalised here).
        order: maximum number of steps `m` (a Python int; the basis is `(m, n)`).
        tol: `None` (run all `m` steps) or a relative residual: stop after the
            first step `j + 1 >= min_steps` at which each of the top-`k` Ritz
            pairs has `beta_j |s_{j,i}| <= tol |theta_i|`.
        k: number of top Ritz pairs the stopping rule watches.
        min_steps: never stop before this many steps.
        restart: continue after a breakdown (else stop there).
        seed: seed of the restart vectors: an int, or an int tensor of shape
            `()`, `(1,)` or `(2,)` (`counter_random`).
        gram_norm: for a Gram operator `A = M M^T` (with `tol`, `k = 1`):
            `q -> ||M^T q||^2` (half a product); the run may stop on the Gram
            pair (`gram_ritz.attempt`, `run.gram`), which `ritz` then returns.

    Returns:
        A `LanczosRun`.
    """
    start = tf.convert_to_tensor(start, tf.float64)
    n = tf.shape(start)[0]
    size = tf.cast(n, tf.float64)
    q0 = start / tf.norm(start)
    gram = gram_norm is not None
    if gram and (tol is None or k != 1):
        raise ValueError(f"lanczos_loop: `gram_norm` needs a `tol` and k=1; received tol={tol}, k={k}")
    # With `gram_norm` one more row: the Gram pair's vector uses q_{j+1}.
    basis0 = tf.TensorArray(tf.float64, size=order + gram, element_shape=start.shape, clear_after_read=False)
    zeros = tf.zeros([order], tf.float64)
    watch = tol is not None
    tol = tf.constant(0.0 if tol is None else tol, tf.float64)

    # Under XLA one pair watched: its own solver (`tridiagonal_top`), not `eigh`.
    top_only = k == 1 and not gram and _compat.in_xla_context()

    def converged(alphas, betas, j):
        theta, s = (tridiagonal_top.top_pair if top_only else _padded_eigh)(alphas, betas, j + 1)
        watched = tf.range(k) < j + 1
        relative = tf.abs(betas[j] * s[j, :k]) / tf.maximum(tf.abs(theta[:k]), _TINY)
        ok = relative <= tol
        return tf.reduce_all(tf.logical_or(ok, tf.logical_not(watched))), (theta, s), relative

    def no_gram():
        return tf.constant(False), tf.constant(np.nan, tf.float64), tf.constant(np.nan, tf.float64), zeros

    def body(j, q, q_prev, beta_prev, basis, alphas, betas, breaks, done, eigh, gram_state):
        basis = basis.write(j, q)
        w = tf.cast(matvec(q), tf.float64)
        alpha = tf.tensordot(q, w, 1)
        w = _orthogonalise(w - alpha * q - beta_prev * q_prev, basis, j + 1, order + gram)
        beta = tf.norm(w)
        scale = tf.reduce_max(tf.abs(tf.concat([alphas, betas, [alpha, beta]], 0)))
        broke = beta <= 1e3 * size * _EPS * tf.maximum(scale, _TINY)
        beta = tf.where(broke, tf.zeros_like(beta), beta)
        alphas = tf.tensor_scatter_nd_update(alphas, [[j]], [alpha])
        betas = tf.tensor_scatter_nd_update(betas, [[j]], [beta])
        last = j + 1 >= order

        def fresh():
            r = counter_random.uniform_like(q0, counter_random.fold_in(seed, j))
            r = _orthogonalise(r, basis, j + 1, order + gram)
            return r / tf.maximum(tf.norm(r), _TINY)

        restarting = tf.logical_and(broke, tf.logical_not(last))
        if restart:
            q_next = tf.cond(restarting, fresh, lambda: w / tf.maximum(beta, _TINY))
            stop = tf.constant(False)
        else:
            q_next = w / tf.maximum(beta, _TINY)
            stop = broke
        if watch:  # every step, so that `ritz` reuses the last one
            ok, eigh, relative = converged(alphas, betas, j)
            stop = tf.logical_or(stop, tf.logical_and(j + 1 >= min_steps, tf.logical_and(ok, tf.logical_not(last))))
        if gram:
            attempt = tf.logical_not(tf.reduce_any([ok, last, broke, j + 1 < min_steps]))
            gram_state = tf.cond(attempt, lambda: gram_ritz.attempt(alphas, betas, j, eigh, q_next, relative[0],
                                                                    gram_norm, tol), no_gram)
            stop = tf.logical_or(stop, gram_state[0])
        breaks = breaks + tf.cast(restarting, tf.int32)
        return j + 1, q_next, q, beta, basis, alphas, betas, breaks, stop, eigh, gram_state

    m = order if watch else 1  # no decomposition carried without a tolerance
    pairs = 1 if top_only else m
    eigh0 = (tf.zeros([pairs], tf.float64), tf.zeros([m, pairs], tf.float64))
    state = (tf.constant(0), q0, tf.zeros_like(q0), tf.constant(0.0, tf.float64), basis0, zeros, zeros,
             tf.constant(0), tf.constant(False), eigh0, no_gram())
    j, q, _, _, basis, alphas, betas, breaks, _, eigh, gram_state = tf.while_loop(
        lambda j, *rest: tf.logical_and(j < order, tf.logical_not(rest[-3])), body, state,
        parallel_iterations=1,
    )
    if gram:  # row `steps` holds q_{steps} for the Gram pair's vector (size order + 1)
        basis = basis.write(j, q)
    return LanczosRun(alphas=alphas, betas=betas, basis=basis, steps=j, breakdowns=breaks,
                      eigh=eigh if watch else None, gram=gram_state if gram else None)
