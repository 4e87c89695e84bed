"""The Gram pair: half a product more accuracy for a Lanczos run on `A = M M^T`.

For a Gram operator `A = M M^T` (the empirical NTK: `M = [J_1 .. J_K]`, shape
`(N, K n)` traced, `M = J` full) the matrices `A` and `M^T M` share their
nonzero eigenvalues. After `j` Lanczos steps on `A` (basis `Q_j`, `T_j`, last
residual norm `beta_j`, next vector `q_{j+1}`), the Rayleigh-Ritz pair of
`M^T M` on `span(M^T Q_j)` needs no product of `A`:

    G = T_j,   H = (A Q_j)^T (A Q_j) = T_j^2 + beta_j^2 e_j e_j^T,
    H c = theta G c  (top pair, c^T G c = 1),   y = M^T Q_j c,

and its residual needs only `alpha_{j+1} = ||M^T q_{j+1}||^2` (backward passes
without their transposes, about half a product):

    ||M^T M y - theta y||^2 = d^T T_{j+1} d,   d = Tbar_j c - theta [c; 0],

with `Tbar_j` the `(j+1, j)` tridiagonal of the recurrence. In sample space the
pair's vector is `u = M y / sqrt(theta) = Q_{j+1} Tbar_j c / ||Tbar_j c||` (a
polynomial of degree `j` in `A`, against `j - 1` for the Ritz vector of `T_j`),
and `||A u - theta u|| <= ||M^T M y - theta y|| sqrt(lambda_max / theta)`.

On the CNN of `bench/curvature_scale.py` (traced NTK, warm-started probes
25 steps apart) the Ritz residual after 2 products is 6.5e-4 to 3.1e-3 and
the Gram pair's after 2.5 is 3.5e-5 to 3.0e-4 (Ritz after 3: 2e-6 to 1.7e-5).

All matrices are padded to the static `(m, m)` shape (rows past `j + 1` are
decoupled: identity in `G`, zero in `H`, so their eigenvalues are 0).
"""

import numpy as np
import tensorflow as tf

_POWER_STEPS = 40
_TINY = float(np.finfo(np.float64).tiny)


def gram_pair(alphas, betas, j, start):
    """The top Gram pair after step `j` (0-based: rows `0 .. j` filled).

    Args:
        alphas, betas: `(m,)` Lanczos coefficients (`betas[j]` the last
            residual norm); needs `j + 1 < m`.
        j: int32 scalar.
        start: `(m,)` start of the power iteration on `G^-1 H` (the top Ritz
            vector of `T`).

    Returns:
        `(theta, coefficients, d_known, d_last)`: the value, `Tbar_j c` (the
        sample-space vector's coefficients on rows `0 .. j+1`, unnormalised),
        and `residual2(alpha_next) = d_known + alpha_next * d_last` (the
        squared residual norm, linear in `alpha_{j+1}`).
    """
    m = alphas.shape[0]
    idx = tf.range(m)
    live = idx <= j
    t0 = (tf.linalg.diag(tf.where(live, alphas, 0.0))
          + tf.linalg.diag(tf.where(idx[:-1] < j, betas[:-1], 0.0), k=1)
          + tf.linalg.diag(tf.where(idx[:-1] < j, betas[:-1], 0.0), k=-1))
    g = t0 + tf.linalg.diag(tf.cast(tf.logical_not(live), tf.float64))
    e_j = tf.cast(tf.equal(idx, j), tf.float64)
    beta = betas[j]
    h = tf.matmul(t0, t0) + beta**2 * e_j[:, None] * e_j[None, :]

    def power(_, c):
        c = tf.linalg.solve(g, tf.linalg.matvec(h, c)[:, None])[:, 0]
        return _ + 1, c / tf.maximum(tf.norm(c), 1e-300)

    c = tf.where(live, start, 0.0)
    c = tf.while_loop(lambda i, _: i < _POWER_STEPS, power, (0, c), parallel_iterations=1)[1]
    gc = tf.linalg.matvec(g, c)
    c = c / tf.sqrt(tf.maximum(tf.tensordot(c, gc, 1), 1e-300))
    theta = tf.tensordot(c, tf.linalg.matvec(h, c), 1)
    e_next = tf.cast(tf.equal(idx, j + 1), tf.float64)
    tbar_c = tf.linalg.matvec(t0, c) + beta * c[j] * e_next  # Tbar c on rows 0 .. j+1
    d = tbar_c - theta * c
    # T_{j+1} without its last diagonal entry: rows 0 .. j+1, coupling beta_j.
    known = (tf.linalg.diag(tf.where(live, alphas, 0.0))
             + tf.linalg.diag(tf.where(idx[:-1] <= j, betas[:-1], 0.0), k=1)
             + tf.linalg.diag(tf.where(idx[:-1] <= j, betas[:-1], 0.0), k=-1))
    return theta, tbar_c, tf.tensordot(d, tf.linalg.matvec(known, d), 1), d[j + 1] ** 2


def attempt(alphas, betas, j, top, q_next, ritz_residual, gram_norm, tol):
    """`(passed, value, relative residual, coefficients (m,))` of the Gram pair
    after step `j`; `gram_norm(q_next)` (half a product) runs only when the
    pair is expected to pass: the Ritz pair's relative residual
    `ritz_residual` is within 10 `tol` (the Gram pair is one polynomial degree
    ahead, about 10x smaller on NTK spectra), and the residual passes with
    `alpha_{j+1}` guessed as the smallest `alpha` so far (`q_{j+1}` is
    orthogonal to the top direction; after one step that guess is `theta`
    itself). Otherwise the residual is `inf`."""
    theta, coefficients, known, last = gram_pair(alphas, betas, j, top)
    scale = tf.maximum(theta, _TINY)

    def half():
        return tf.sqrt(tf.maximum(known + tf.cast(gram_norm(q_next), tf.float64) * last, 0.0)) / scale

    guess = tf.reduce_min(tf.where(tf.range(alphas.shape[0]) <= j, alphas, np.inf))
    hopeful = tf.reduce_all([theta > 0, tf.sqrt(tf.maximum(known + guess * last, 0.0)) <= tol * scale,
                             ritz_residual <= 10.0 * tol])
    residual = tf.cond(hopeful, half, lambda: tf.constant(np.inf, tf.float64))
    passed = tf.logical_and(hopeful, residual <= tol)
    return passed, theta, residual, coefficients / tf.maximum(tf.norm(coefficients), _TINY)
