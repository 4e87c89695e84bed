"""Entry points: Hessian spectra of a Keras model in one call (NTK: `ntk_api`).

Each function builds an operator (`HessianOperator`, `NTKOperator`) and hands it
to a matrix-free algorithm (`lanczos`, `power_iteration`, `hutchinson_trace`,
`spectral_density`). None of them changes the model or its optimizer.
"""

from keras_dynloss import _checks as val
from keras_dynloss.curvature import algorithms
from keras_dynloss.curvature import operators

_EIG_ALGORITHMS = ("lanczos", "power_iteration")


def _hessian(model, loss, data, hvp_mode, training, include_regularization, num_batches,
             variables, operator):
    return operators.HessianOperator(
        model,
        loss,
        data,
        variables=variables,
        operator=operator,
        num_batches=num_batches,
        mode=hvp_mode,
        training=training,
        include_regularization=include_regularization,
    )


def hessian_eigenvalues(
    model,
    loss,
    data,
    k=1,
    *,
    algorithm="lanczos",
    order=None,
    max_iter=200,
    tol=1e-4,
    which="largest",
    seed=0,
    variables=None,
    operator="hessian",
    num_batches=None,
    hvp_mode="reverse_over_reverse",
    training=False,
    include_regularization=True,
    return_eigenvectors=False,
):
    """Top-`k` eigenvalues of the loss Hessian w.r.t. all trainable parameters.

    `H = d^2 L / d theta^2`, shape `(n, n)`, `theta` the flat vector of the `n`
    trainable parameters, `L = loss(y, model(x))` on `data` (batch-size
    weighted mean over a dataset). Only Hessian-vector products are used.

    Args:
        model: a built `keras.Model`.
        loss: a Keras loss or any `loss(y_true, y_pred) -> scalar` (e.g.
            `DynamicalLoss(...).at_step(t)`).
        data: `(x, y)`, `(x, y, sample_weight)` or a `tf.data.Dataset`. A
            dataset is read once into memory (see `HessianOperator`): every
            product uses the same batches, so shuffling or random augmentation
            cannot change the operator between products. An infinite
            (`.repeat()`) or unknown-length dataset is refused unless
            `num_batches` bounds it.
        num_batches: use only the first `num_batches` batches of a dataset.
        variables: `None` (all trainable variables) or a list of trainable
            variables and/or layers: the spectrum of that diagonal block (e.g.
            one layer's sub-Hessian), the other parameters held fixed.
        operator: `"hessian"` (default) or `"gauss_newton"` (generalised
            Gauss-Newton `J^T H_out J`, positive semi-definite for convex
            losses; see `HessianOperator`).
        k: number of eigenvalues.
        algorithm: `"lanczos"` (default; full float64 reorthogonalisation) or
            `"power_iteration"` (with deflation; largest magnitude).
        order: Lanczos steps (default `min(n, max(2k + 10, 20))`).
        max_iter: power-iteration products per eigenvalue.
        tol: convergence tolerance (relative residual for Lanczos, relative
            change for power iteration).
        which: Lanczos selection, `"largest"`, `"smallest"` or `"magnitude"`.
        seed: seed of the random start vector(s).
        hvp_mode: `"reverse_over_reverse"` (default) or
            `"forward_over_reverse"`; see `HessianOperator`.
        training: evaluate the model in training mode (default `False`).
        include_regularization: include `model.losses` in `L`.
        return_eigenvectors: also return eigenvectors, shape `(n, k)`.

    Returns:
        An `EigenResult`: `.eigenvalues` (shape `(k,)`, largest first),
        `.residuals`, `.converged`, `.num_matvecs`.

    Example:
        >>> res = hessian_eigenvalues(model, keras.losses.MeanSquaredError(),
        ...                           (x, y), k=3)
        >>> res.eigenvalues      # array([l1, l2, l3]), l1 >= l2 >= l3
    """
    algorithm = val.check_choice("algorithm", algorithm, _EIG_ALGORITHMS)
    op = _hessian(
        model, loss, data, hvp_mode, training, include_regularization, num_batches, variables, operator
    )
    if algorithm == "lanczos":
        return algorithms.lanczos(
            op,
            op.size,
            k=k,
            order=order,
            which=which,
            tol=tol,
            seed=seed,
            return_eigenvectors=return_eigenvectors,
        )
    return algorithms.power_iteration(
        op,
        op.size,
        k=k,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        return_eigenvectors=return_eigenvectors,
    )


def hessian_trace(
    model,
    loss,
    data,
    *,
    num_samples=100,
    distribution="rademacher",
    seed=0,
    variables=None,
    operator="hessian",
    num_batches=None,
    hvp_mode="reverse_over_reverse",
    training=False,
    include_regularization=True,
):
    """Hutchinson estimate of `tr(H)` of the loss Hessian, with standard error.

    `tr(H) ≈ 1/s sum_i z_i^T H z_i`, `z_i` Rademacher vectors of shape `(n,)`.

    Args:
        model, loss, data: as in `hessian_eigenvalues`.
        num_samples: number of probe vectors (= Hessian-vector products).
        distribution: `"rademacher"` or `"gaussian"`.
        seed: seed of the probe vectors.
        variables, operator, num_batches, hvp_mode, training,
            include_regularization: as in `hessian_eigenvalues`.

    Returns:
        A `TraceResult` with `.trace` and `.stderr`.

    Example:
        >>> res = hessian_trace(model, loss, (x, y), num_samples=50)
        >>> res.trace, res.stderr
    """
    op = _hessian(
        model, loss, data, hvp_mode, training, include_regularization, num_batches, variables, operator
    )
    return algorithms.hutchinson_trace(
        op, op.size, num_samples=num_samples, distribution=distribution, seed=seed
    )


def hessian_density(
    model,
    loss,
    data,
    *,
    num_vectors=8,
    order=30,
    sigma=None,
    grid=None,
    num_points=512,
    seed=0,
    variables=None,
    operator="hessian",
    num_batches=None,
    hvp_mode="reverse_over_reverse",
    training=False,
    include_regularization=True,
):
    """Spectral density of the loss Hessian by stochastic Lanczos quadrature.

    `phi(t) = 1/n sum_i N(t; lambda_i(H), sigma^2)`, estimated from
    `num_vectors` Lanczos runs of `order` steps (see `spectral_density`).

    Args:
        model, loss, data: as in `hessian_eigenvalues`.
        num_vectors: random start vectors.
        order: Lanczos steps per vector.
        sigma: Gaussian width (default 1% of the spectral range found).
        grid: evaluation points `(g,)` (default `num_points` points spanning
            the spectrum).
        num_points: grid size when `grid` is `None`.
        seed: seed of the start vectors.
        variables, operator, num_batches, hvp_mode, training,
            include_regularization: as in `hessian_eigenvalues`.

    Returns:
        A `DensityResult` with `.grid`, `.density` (integrates to 1),
        `.nodes`, `.weights`, `.eigenvalues` (all nodes, largest first).

    Example:
        >>> res = hessian_density(model, loss, (x, y), order=40)
        >>> plt.semilogy(res.grid, res.density)
    """
    op = _hessian(
        model, loss, data, hvp_mode, training, include_regularization, num_batches, variables, operator
    )
    return algorithms.spectral_density(
        op,
        op.size,
        num_vectors=num_vectors,
        order=order,
        sigma=sigma,
        grid=grid,
        num_points=num_points,
        seed=seed,
    )
