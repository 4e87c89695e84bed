"""In-graph (compiled) Lanczos used by `CurvatureProbe`.

`graph_lanczos` unrolls `order` Lanczos steps inside the calling `tf.function`,
with full reorthogonalisation in float64, so that one probe is one compiled
call. It returns only the tridiagonal coefficients; Ritz values are taken on
the host with `algorithms.ritz_pairs` (a tiny `(m, m)` eigenproblem).
"""

import numpy as np
import tensorflow as tf

from keras_dynloss.curvature import algorithms


def graph_lanczos(matvec, start, order):
    """Lanczos coefficients of `matvec` from `start`, inside a `tf.function`.

    Args:
        matvec: TF function `v -> A v` on float64 tensors of shape `(n,)`.
        start: float64 tensor `(n,)` (normalised here).
        order: static number of steps `m`.

    Returns:
        `(alphas, betas)`, float64 tensors of shape `(m,)` each; `betas[:-1]` is
        the off-diagonal of `T`, `betas[-1]` the final residual norm. A beta of
        (nearly) zero marks a breakdown: the next vector is then an
        orthogonalised rounding-noise vector (a restart), and T is block
        diagonal.
    """
    tiny = tf.constant(np.finfo(np.float64).tiny, tf.float64)
    q = start / tf.norm(start)
    basis = [q]
    q_prev = tf.zeros_like(q)
    beta_prev = tf.zeros([], tf.float64)
    alphas, betas = [], []
    for j in range(order):
        w = matvec(q)
        alpha = tf.tensordot(q, w, 1)
        w = w - alpha * q - beta_prev * q_prev
        stacked = tf.stack(basis)
        for _ in range(2):
            w = w - tf.linalg.matvec(stacked, tf.linalg.matvec(stacked, w), transpose_a=True)
        beta = tf.norm(w)
        alphas.append(alpha)
        betas.append(beta)
        if j < order - 1:
            q_prev, q = q, w / tf.maximum(beta, tiny)
            basis.append(q)
            beta_prev = beta
    return tf.stack(alphas), tf.stack(betas)


def decomposition_from_coefficients(alphas, betas, *, eps=np.finfo(np.float64).eps):
    """Wraps in-graph coefficients as an `algorithms.LanczosDecomposition`.

    `eps` is the machine epsilon of the operator's dtype: an off-diagonal beta
    below `100 * m * eps * max|T|` counts as a breakdown.
    """
    alphas = np.asarray(alphas, np.float64)
    betas = np.asarray(betas, np.float64)
    scale = max(np.abs(alphas).max(initial=0.0), np.abs(betas).max(initial=0.0))
    off = betas[:-1]
    breakdowns = int(np.sum(off <= 100 * alphas.size * eps * max(scale, 1e-300)))
    return algorithms.LanczosDecomposition(
        alphas=alphas,
        betas=off.copy(),
        basis=None,
        residual_norm=float(betas[-1]),
        num_matvecs=int(alphas.size),
        breakdowns=breakdowns,
    )
