"""Entry points for the empirical NTK: its Gram matrix and its top eigenvalues.

`ntk_gram` forms `Theta` from the explicit Jacobian; `ntk_eigenvalues` does so
when that Jacobian is small (under `DENSE_NTK_MAX_BYTES`) and otherwise runs
Lanczos on the matrix-free `NTKOperator`. Neither changes the model.
"""

import numpy as np

from keras_dynloss import _checks as val
from keras_dynloss.curvature import algorithms
from keras_dynloss.curvature import operators

#: `ntk_eigenvalues(algorithm="auto")` forms the Jacobian (dense, exact) only
#: when it takes at most this many bytes (`N * K * n * 8`, float64); above it,
#: it runs matrix-free Lanczos (VJP + transpose products, memory ~`(order + 4) * N`
#: plus one backward pass).
DENSE_NTK_MAX_BYTES = 2**28


def ntk_gram(model, x, *, trace_outputs=True, training=False, batch_size=None, variables=None):
    """Empirical NTK Gram matrix of the model outputs on `N` samples.

    With `J[i, c, :] = d f_c(x_i) / d theta` (outputs `f`, e.g. logits, with `K`
    channels; `theta` the `n` chosen trainable parameters, all by default):

    * `trace_outputs=True` (default): `Theta[i, j] = sum_c J[i, c] . J[j, c]`,
      shape `(N, N)` — the trace over the output axis of the per-pair `K x K`
      kernel (as `neural_tangents.empirical_ntk_fn(trace_axes=(-1,))`);
    * `trace_outputs=False`: `Theta[i*K + c, j*K + d] = J[i, c] . J[j, d]`,
      shape `(N*K, N*K)`, i.e. `J J^T` with `J` reshaped to `(N*K, n)`.

    Outputs with more than one trailing axis (or several outputs) are flattened
    and concatenated into the `K` channels. Symmetric positive semi-definite.
    Forms `J` explicitly: memory `N * K * n` float64 numbers.

    Args:
        model: a built `keras.Model`.
        x: inputs, `N` samples.
        trace_outputs: see above.
        training: run the model in training mode (default `False`).
        batch_size: samples per Jacobian chunk (default all).
        variables: `None` (all trainable variables) or variables/layers: the
            NTK of those parameters only.

    Returns:
        float64 NumPy array `(N, N)` or `(N*K, N*K)`.
    """
    if not isinstance(trace_outputs, bool):
        raise val.invalid("trace_outputs", "a bool", trace_outputs)
    jac = operators.ntk_jacobian(model, x, training=training, batch_size=batch_size, variables=variables)
    if trace_outputs:
        return np.einsum("ikp,jkp->ij", jac, jac)
    flat = jac.reshape(jac.shape[0] * jac.shape[1], -1)
    return flat @ flat.T


def ntk_eigenvalues(
    model,
    x,
    k=1,
    *,
    trace_outputs=True,
    algorithm="auto",
    order=None,
    seed=0,
    training=False,
    batch_size=None,
    variables=None,
):
    """Top-`k` eigenvalues of the empirical NTK Gram matrix (see `ntk_gram`).

    Args:
        model: a built `keras.Model`.
        x: inputs, `N` samples.
        k: number of eigenvalues.
        trace_outputs: traced `(N, N)` kernel (default) or full `(N*K, N*K)`.
        algorithm: `"auto"` (default: `"dense"` when the Jacobian takes at most
            `DENSE_NTK_MAX_BYTES` = 256 MiB as float64, i.e.
            `N * K * n <= 2**25`, else `"lanczos"`), `"dense"` (explicit
            Jacobian + `numpy.linalg.eigvalsh`, exact; memory `N*K*n`) or
            `"lanczos"` (matrix free, VJP + transpose products, `order` of them;
            `residuals` say how far to trust the values).
        order: Lanczos steps (default `min(size, max(2k + 10, 20))`).
        seed: Lanczos start vector seed.
        training: run the model in training mode (default `False`).
        batch_size: Jacobian chunk size for `"dense"`.
        variables: `None` (all trainable variables) or variables/layers.

    Returns:
        An `EigenResult`, `.eigenvalues` of shape `(k,)`, largest first;
        `.method` says which algorithm ran.

    Example:
        >>> ntk_eigenvalues(model, x[:100], k=2).eigenvalues
    """
    algorithm = val.check_choice("algorithm", algorithm, ("auto", "dense", "lanczos"))
    val.check_int("k", k, minimum=1)
    if algorithm != "dense":
        op = operators.NTKOperator(
            model, x, trace_outputs=trace_outputs, training=training, variables=variables
        )
        jacobian_bytes = 8 * op.num_samples * op.num_outputs * op.flat.size
        if algorithm == "lanczos" or jacobian_bytes > DENSE_NTK_MAX_BYTES:
            return algorithms.lanczos(op, op.size, k=k, order=order, seed=seed)
    gram = ntk_gram(
        model, x, trace_outputs=trace_outputs, training=training, batch_size=batch_size,
        variables=variables,
    )
    k = val.check_int("k", k, minimum=1, maximum=gram.shape[0])
    values = np.linalg.eigvalsh(gram)[::-1][:k]
    return algorithms.EigenResult(
        eigenvalues=values.copy(),
        eigenvectors=None,
        residuals=np.zeros(k),
        converged=True,
        num_matvecs=0,
        method="dense",
    )
