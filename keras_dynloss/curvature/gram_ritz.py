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
masked out).
"""

import numpy as np
import tensorflow as tf

_POWER_STEPS = 40
_TINY = float(np.finfo(np.float64).tiny)


def _tridiagonal(alphas, betas, diagonal, off_diagonal):
    """Static `(m, m)` tridiagonal with the masked-in `alphas` and `betas`."""
    off = tf.where(off_diagonal, betas[:-1], 0.0)
    return tf.linalg.diag(tf.where(diagonal, alphas, 0.0)) + tf.linalg.diag(off, k=1) + tf.linalg.diag(off, k=-1)


def gram_pair(alphas, betas, j, eigh):
    """The top Gram pair after step `j` (0-based: rows `0 .. j` filled).

    With `T_j = S L S^T` (the stopping rule's decomposition) and
    `c = S L^-1/2 z`, `H c = theta G c` becomes `(L + beta_j^2 w w^T) z = theta z`,
    `w = L^-1/2 S^T e_j`: a diagonal plus rank one, solved by power iteration
    (no dense solve or second `eigh`; cheap to compile under XLA).

    Args:
        alphas, betas: `(m,)` Lanczos coefficients (`betas[j]` the last
            residual norm); needs `j + 1 < m`.
        j: int32 scalar.
        eigh: `(theta (m,), s (m, m))` of the padded `T` (`krylov._padded_eigh`:
            descending, the `j + 1` pairs of `T_j` first).

    Returns:
        `(theta, coefficients, d_known, d_last)`: the value (NaN unless `T_j`
        is positive definite), `Tbar_j c` (the sample-space vector's
        coefficients on rows `0 .. j+1`, unnormalised), and
        `residual2(alpha_next) = d_known + alpha_next * d_last` (the squared
        residual norm, linear in `alpha_{j+1}`).
    """
    values, s = eigh
    m = alphas.shape[0]
    idx = tf.range(m)
    live = idx <= j
    definite = tf.reduce_all(tf.logical_or(tf.logical_not(live), values > 0))
    root = tf.sqrt(tf.abs(tf.where(live, values, 1.0)))  # L^1/2 on the live pairs
    lam = tf.where(live, values, 0.0)
    beta = betas[j]
    w = tf.where(live, s[j] / root, 0.0)

    def power(i, z):
        z = lam * z + beta**2 * w * tf.tensordot(w, z, 1)
        return i + 1, z / tf.maximum(tf.norm(z), _TINY)

    z = tf.while_loop(lambda i, _: i < _POWER_STEPS, power, (0, tf.one_hot(0, m, dtype=tf.float64)),
                      parallel_iterations=1)[1]
    theta = tf.tensordot(z, lam * z, 1) + (beta * tf.tensordot(w, z, 1)) ** 2
    theta = tf.where(definite, theta, np.nan)
    c = tf.linalg.matvec(s, tf.where(live, z / root, 0.0))  # c^T T_j c = z^T z = 1
    e_next = tf.cast(tf.equal(idx, j + 1), tf.float64)
    tbar_c = tf.linalg.matvec(_tridiagonal(alphas, betas, live, idx[:-1] < j), c) + beta * c[j] * e_next
    d = tbar_c - theta * c
    # T_{j+1} without its last diagonal entry (alpha_{j+1}): rows 0 .. j+1.
    known = _tridiagonal(alphas, betas, live, idx[:-1] <= j)
    return theta, tbar_c, tf.tensordot(d, tf.linalg.matvec(known, d), 1), d[j + 1] ** 2


def attempt(alphas, betas, j, eigh, q_next, ritz_residual, gram_norm, tol):
    """`(passed, value, relative residual, coefficients (m,))` of the Gram pair
    after step `j`; `gram_norm(q_next)` (half a product) runs only when the
    pair is expected to pass: the Ritz pair's relative residual
    `ritz_residual` is within 10 `tol` (the Gram pair is one polynomial degree
    ahead, about 10x smaller on NTK spectra), and the residual passes with
    `alpha_{j+1}` guessed as the smallest `alpha` so far (`q_{j+1}` is
    orthogonal to the top direction; after one step that guess is `theta`
    itself). Otherwise the residual is `inf`."""
    theta, coefficients, known, last = gram_pair(alphas, betas, j, eigh)
    scale = tf.maximum(theta, _TINY)

    def half():
        return tf.sqrt(tf.maximum(known + tf.cast(gram_norm(q_next), tf.float64) * last, 0.0)) / scale

    guess = tf.reduce_min(tf.where(tf.range(alphas.shape[0]) <= j, alphas, np.inf))
    hopeful = tf.reduce_all([theta > 0,  # False for NaN (T_j not positive definite)
                             tf.sqrt(tf.maximum(known + guess * last, 0.0)) <= tol * scale,
                             ritz_residual <= 10.0 * tol])
    residual = tf.cond(hopeful, half, lambda: tf.constant(np.inf, tf.float64))
    passed = tf.logical_and(hopeful, residual <= tol)
    return passed, theta, residual, coefficients / tf.maximum(tf.norm(coefficients), _TINY)
