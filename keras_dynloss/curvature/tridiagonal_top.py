"""The top eigenpair of a small symmetric tridiagonal `T`, for XLA.

Lanczos's stopping rule needs, after every step `j`, the largest eigenvalue
`theta` of `T_j` (diagonal `a`, off-diagonal `b`) and the last component of
its unit eigenvector. Under XLA on a CPU, `tf.linalg.eigh` is a Jacobi loop
that computes all `m` pairs: 17-22 us a call at `m = 10` and ~0.15 s of
compile time inside a Lanczos loop. `top_pair` computes the one pair with two
scalar loops: 1-4 us a call; in `krylov.lanczos_loop` under XLA (n = 603,
order 10) 26-33 us less per step, 0.12-0.15 s less compile, ~0.06 s more trace
(`tests/test_curvature_tridiagonal_top.py` checks it against NumPy).

* `theta`: Laguerre's iteration on `p(lambda) = det(T - lambda I)` from
  Gershgorin's upper bound. Every root of `p` is real, so from above the
  spectrum it descends monotonically to the largest root, cubically for a
  simple one. With the pivots of `T - lambda I = L D L^T`,

      d_0 = a_0 - lambda,   d_i = a_i - lambda - b_{i-1}^2 / d_{i-1},

  `G = p'/p = sum_i d_i'/d_i` and `H = -G' = sum_i (d_i'/d_i)^2 - d_i''/d_i`;
  above the spectrum every `d_i < 0` (`T - lambda I` is negative definite),
  so no pivot vanishes. Step: `lambda -= n / (G + sqrt((n-1)(n H - G^2)))`.
* the eigenvector: the twisted factorisation of `T - sigma I`, `sigma =
  theta + 1e3 eps scale` (Dhillon & Parlett's `getvec`: top-down and
  bottom-up pivots, `x_r = 1` at the row `r` of the smallest twisted pivot,
  the other entries by two cumulative products). Its residual is the twisted
  pivot `gamma_r`; a zero `b_i` (a Lanczos restart) leaves `x` zero outside
  the block of `r`.

Rows `>= steps` of the static `(m,)` inputs are padding and ignored (their
eigenvector entries are zero).
"""

import numpy as np
import tensorflow as tf

_EPS = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)
#: Most Laguerre steps (cubic convergence needs ~3-6; a double root, linear).
MAX_STEPS = 60


def _laguerre(alphas, b2, steps, upper, scale):
    """Laguerre's iteration from `upper` down to the largest root of
    `det(T_steps - lambda I)`: one loop, a trip per row, the step applied at
    the end of each sweep over rows `0 .. steps-1`."""
    n = tf.cast(steps, tf.float64)
    zero = tf.zeros([], tf.float64)

    def trip(i, row, lam, d, t, u, g, h, step):
        # Row 0: d_0 = a_0 - lam, t = d'/d = -1/d, u = d''/d = 0. Row i > 0, with
        # q = b_{i-1}^2 / d_{i-1}: d_i = a_i - lam - q, d_i' = q t - 1,
        # d_i'' = q (u - 2 t^2) (t, u of row i-1). G = sum t, H = sum t^2 - u.
        first = tf.equal(row, 0)
        q = tf.where(first, zero, tf.gather(b2, tf.maximum(row - 1, 0)) / d)
        nd = tf.gather(alphas, row) - lam - q
        nt = tf.where(first, -1.0 / nd, (q * t - 1.0) / nd)
        nu = tf.where(first, zero, q * (u - 2.0 * t * t) / nd)
        g = tf.where(first, zero, g) + nt
        h = tf.where(first, zero, h) + nt * nt - nu
        end = tf.equal(row, steps - 1)
        disc = tf.sqrt(tf.maximum((n - 1.0) * (n * h - g**2), 0.0))
        new = n / (g + tf.where(g < 0, -disc, disc))
        new = tf.where(tf.math.is_finite(new), new, zero)  # lam is a root (a pivot is 0)
        return (i + tf.cast(end, tf.int32), tf.where(end, 0, row + 1), tf.where(end, lam - new, lam), nd, nt, nu,
                g, h, tf.where(end, new, step))

    def more(i, *state):
        return tf.logical_and(i < MAX_STEPS, tf.abs(state[-1]) > 4.0 * _EPS * scale)

    state = (tf.constant(0), tf.constant(0), upper, zero, zero, zero, zero, zero, scale)
    return tf.while_loop(more, trip, state, parallel_iterations=1)[2]


def _twisted_vector(c, b):
    """A null vector of `T - sigma I` (diagonal `c`, off-diagonal `b`, `(m,)`,
    `b[m-1]` unused), `sigma` just above the top eigenvalue: the twisted
    factorisation's solve `x_r = 1` at the row `r` of smallest twisted pivot
    `gamma_r = D+_r + D-_r - c_r` (Dhillon & Parlett's `getvec`), with
    the top-down pivots `D+_i = c_i - b_{i-1}^2 / D+_{i-1}` and bottom-up ones
    `D-_i = c_i - b_i^2 / D-_{i+1}`. Above the spectrum every pivot is < 0.
    Normalised."""
    m = c.shape[0]
    one = tf.ones([], tf.float64)

    b2 = b**2
    rows = tf.range(m)

    def row(i, top, bottom):  # row i of D+, row m-1-i of D-
        j = m - 1 - i
        new_top = tf.gather(c, i) - tf.gather(b2, i - 1) / tf.gather(top, i - 1)
        new_bottom = tf.gather(c, j) - tf.gather(b2, j) / tf.gather(bottom, j + 1)
        return (i + 1, tf.where(tf.equal(rows, i), new_top, top),
                tf.where(tf.equal(rows, j), new_bottom, bottom))

    _, top, bottom = tf.while_loop(lambda i, *_: i < m, row, (tf.constant(1), c, c), parallel_iterations=1)
    r = tf.argmin(tf.abs(top + bottom - c), output_type=tf.int32)
    idx = tf.range(m - 1)
    up = tf.where(idx < r, -b[:-1] / top[:-1], one)  # x_i = -b_i / D+_i x_{i+1} for i < r
    down = tf.where(idx >= r, -b[:-1] / bottom[1:], one)  # x_{i+1} = -b_i / D-_{i+1} x_i for i >= r
    x = tf.concat([tf.math.cumprod(up, reverse=True), [one]], 0) * tf.concat([[one], tf.math.cumprod(down)], 0)
    return x / tf.norm(x)


def top_pair(alphas, betas, steps):
    """Largest eigenvalue of `T_steps` and its unit eigenvector.

    Args:
        alphas: float64 `(m,)`, the diagonal (entries `>= steps` ignored).
        betas: float64 `(m,)`, `betas[i] = T[i, i+1]` for `i < steps - 1`
            (entries from `steps - 1` on ignored).
        steps: int32 scalar, `1 <= steps <= m`.

    Returns:
        `(theta (1,), s (m, 1))`: the value and its eigenvector (zero on rows
        `>= steps`; sign arbitrary), the layout of the top column of
        `krylov._padded_eigh`.
    """
    alphas = tf.convert_to_tensor(alphas, tf.float64)
    betas = tf.convert_to_tensor(betas, tf.float64)
    m = alphas.shape[0]
    idx = tf.range(m)
    mask = idx < steps
    betas = tf.where(idx < steps - 1, betas, 0.0)
    absb = tf.abs(betas)
    radius = absb + tf.concat([tf.zeros([1], tf.float64), absb[:-1]], 0)
    scale = tf.maximum(tf.reduce_max(tf.abs(tf.where(mask, alphas, 0.0))) + tf.reduce_max(absb), _TINY)
    upper = tf.reduce_max(tf.where(mask, alphas + radius, -np.inf)) + _EPS * scale
    theta = _laguerre(alphas, betas**2, steps, upper, scale)
    # NaN in, NaN out (XLA's max drops NaN: `upper` would be finite).
    finite = tf.reduce_all(tf.math.is_finite(tf.where(mask, alphas, 0.0))) & tf.reduce_all(tf.math.is_finite(betas))
    theta = tf.where(finite, theta, np.nan)
    sigma = theta + 1e3 * _EPS * scale
    x = _twisted_vector(tf.where(mask, alphas - sigma, -scale), betas)
    x = tf.where(mask, x, 0.0)
    return theta[None], x[:, None]
