"""Curvature operators `v -> A v` of a Keras model on the block (m,) of chosen parameters
(`flat`), one compiled call a product (`products`), and the one-call entry points."""

import keras
import numpy as np
from keras import ops

from keras_dynloss import _checks, backend
from keras_dynloss.curvature import products
from keras_dynloss.curvature.data import as_tensors, num_rows, read_batches
from keras_dynloss.curvature.errors import compile_guarded
from keras_dynloss.curvature.flat import FlatParameters
from keras_dynloss.curvature.lanczos import lanczos
from keras_dynloss.curvature.results import EigenResult
from keras_dynloss.curvature.trace import hutchinson_trace, spectral_density

#: `ntk_eigenvalues(algorithm="auto")` forms the Jacobian (`8 N K m` bytes) up to this size.
DENSE_NTK_MAX_BYTES = 2**28


def replicas(model):
    """The devices of a multi-replica MirroredStrategy holding `model` (TensorFlow), or None."""
    if backend.name() == "tensorflow":
        from keras_dynloss.curvature.distributed import replica_devices
        return replica_devices(model)
    return None


class _Operator:
    """`__call__` and `dense` over a `_product(v)` on tensors of `dtype`."""

    _argument = "v"

    def __call__(self, v):
        """`A v` for v (size,): a NumPy array (float64 unless float32) or a tensor, alike."""
        if not ops.is_tensor(v):
            v = np.asarray(v)
            v = v if v.dtype == np.float32 else v.astype(np.float64)
        if tuple(v.shape) != (self.size,):
            raise _checks.invalid(self._argument, f"a vector of shape ({self.size},)",
                                  f"<shape {tuple(v.shape)}>")
        self.num_matvecs += 1
        out = self._product(ops.cast(ops.convert_to_tensor(v), self.dtype))
        if ops.is_tensor(v):
            return ops.cast(out, v.dtype)
        return np.asarray(ops.convert_to_numpy(out), v.dtype)

    def dense(self):
        """The matrix (size, size) in float64, column by column (`size` products)."""
        return np.stack([self(e) for e in np.eye(self.size)], axis=1)


class HessianOperator(_Operator):
    """`v -> A v`: the Hessian `H = d^2 L / d theta^2` or the generalised Gauss-Newton
    `G = J^T H_out J (+ the Hessian of the added losses)` of `L = loss(y, f(x; theta)) (+ the
    model's added losses)`, `J = d f / d theta`, `H_out = d^2 loss / d f^2` (`products`).

    Args:
        model: a built `keras.Model`.
        loss: `loss(y, outputs[, sample_weight])`, e.g. a `keras.losses.Loss`.
        data: an `(x, y[, sample_weight])` batch or a `tf.data.Dataset` of them, read once.
        variables: None (every trainable variable) or variables and/or layers: the block.
        operator: `"hessian"` or `"gauss_newton"`.
        num_batches: read only the first batches of a dataset.
        training: run the model in training mode (Dropout, BatchNorm batch statistics).
        include_regularization: add the model's added losses (`model.losses`) to `L`.
        micro_batch_size: sub-batch size dividing every batch (`products`); None: whole.

    Attributes: `size` (m), `dtype`, `num_matvecs`, `batches` (read from `data`).

    Example:
        >>> op = HessianOperator(model, keras.losses.MeanSquaredError(), (x, y))
        >>> op(np.ones(op.size))     # float64 (m,)
    """

    def __init__(self, model, loss, data, *, variables=None, operator="hessian",
                 num_batches=None, training=False, include_regularization=True,
                 micro_batch_size=None):
        kwargs = dict(training=_checks.check_bool("training", training),
                      include_regularization=_checks.check_bool(
                          "include_regularization", include_regularization))
        self.flat = flat = FlatParameters(model, variables)
        _checks.check_callable("loss", loss)
        if (getattr(loss, "step", 0) is None and hasattr(loss, "at_step")
                and getattr(model, "optimizer", None) is not None):  # at the optimizer's step
            loss = loss.at_step(int(ops.convert_to_numpy(model.optimizer.iterations)))
        self.loss = loss
        self.batches = read_batches(data, num_batches)
        self._rows = [num_rows(x) for x, _, _ in self.batches]
        fn = products.curvature_fn(flat, loss, operator=operator,
                                   micro_batch_size=micro_batch_size, **kwargs)
        for x, _, _ in self.batches:  # micro_batch_size must divide every batch
            products.sub_batches(x, micro_batch_size)
        if replicas(model):
            from keras_dynloss.curvature.distributed import sharded_curvature_fn
            fn = sharded_curvature_fn(fn, replicas(model))
        x0 = self.batches[0][0]
        self._matvec = compile_guarded(flat, lambda t, s, v, x, y, sw: fn(t, s, x, y, sw)(v),
                                       x0, training=training)
        self._gradient = compile_guarded(flat, products.gradient_fn(flat, loss, **kwargs), x0,
                                         training=training)
        self.size, self.dtype, self.num_matvecs = flat.size, flat.dtype, 0

    def _mean(self, results):
        """`sum_b N_b r_b / sum_b N_b` over the batches' results (a lone one as it is)."""
        if len(results) == 1:
            return results[0]
        numpy = [np.asarray(ops.convert_to_numpy(r), np.float64) for r in results]
        return sum(n * r for n, r in zip(self._rows, numpy)) / sum(self._rows)

    def _product(self, v):
        theta, state = self.flat.read(), self.flat.non_trainable()
        return self._mean([self._matvec(theta, state, v, *batch) for batch in self.batches])

    def gradient(self):
        """`(grad L, L)`: a NumPy float64 array (m,) and a float."""
        theta, state = self.flat.read(), self.flat.non_trainable()
        results = [self._gradient(theta, state, *batch) for batch in self.batches]
        value, grad = [np.asarray(ops.convert_to_numpy(self._mean([r[i] for r in results])),
                                  np.float64) for i in (0, 1)]
        return grad, float(value)


class NTKOperator(_Operator):
    """`u -> Theta u`: the empirical NTK of the model's outputs on a batch, matrix free.

    Traced (default): `Theta = sum_c J_c J_c^T`, (N, N); full: `Theta = J J^T`, (N*K, N*K),
    rows `i*K + c`; `J_c[i] = d f_c(x_i) / d theta` (the outputs flattened to K channels).

    Args:
        model: a built `keras.Model`.
        x: N inputs.
        trace_outputs: the traced kernel (N, N), else the full one (N*K, N*K).
        training: run the model in training mode.
        variables: None (every trainable variable) or variables and/or layers: the block.

    Attributes: `size` (N or N*K), `num_samples` (N), `num_outputs` (K), `dtype`,
    `num_matvecs`.

    Example:
        >>> NTKOperator(model, x[:64])(np.ones(64))
    """

    _argument = "u"

    def __init__(self, model, x, *, trace_outputs=True, training=False, variables=None):
        self.trace_outputs = trace = _checks.check_bool("trace_outputs", trace_outputs)
        self.training = training = _checks.check_bool("training", training)
        self.flat = flat = FlatParameters(model, variables)
        self.x = as_tensors(x)
        self.num_samples, self.num_outputs = num_rows(self.x), flat.num_outputs(self.x)
        self.size = self.num_samples * (1 if trace else self.num_outputs)
        if replicas(model):
            from keras_dynloss.curvature.distributed import sharded_ntk_fn
            fn = sharded_ntk_fn(flat, replicas(model), trace_outputs=trace, training=training)
        else:  # JAX: unrolled channels (XLA's CPU backend runs convolutions in loops slowly)
            fn = products.ntk_fn(flat, trace_outputs=trace, training=training,
                                 unroll_outputs=backend.name() == "jax")
        self._fn = compile_guarded(flat, lambda t, s, u, x: fn(t, s, x)(u), self.x,
                                   training=training)
        self.dtype, self.num_matvecs = flat.dtype, 0

    def _product(self, u):
        return self._fn(self.flat.read(), self.flat.non_trainable(), u, self.x)

    def gram(self, batch_size=None):
        """`Theta` (size, size) in float64 from the Jacobian, `batch_size` samples at a time."""
        step = _checks.check_int("batch_size", batch_size, minimum=1, allow_none=True)
        step = step or self.num_samples
        jacobian = compile_guarded(self.flat, products.jacobian_fn(
            self.flat, training=self.training), self.x, training=self.training)
        theta, state = self.flat.read(), self.flat.non_trainable()
        j = np.concatenate([ops.convert_to_numpy(jacobian(theta, state, keras.tree.map_structure(
            lambda a: a[i:i + step], self.x))) for i in range(0, self.num_samples, step)])
        j = j.astype(np.float64)
        if self.trace_outputs:
            return np.einsum("ikp,jkp->ij", j, j)
        j = j.reshape(-1, j.shape[-1])
        return j @ j.T


def hessian_eigenvalues(model, loss, data, k=1, *, order=None, tol=1e-4, which="largest",
                        seed=0, return_eigenvectors=False, **options):
    """`k` extreme eigenvalues of the loss Hessian (or Gauss-Newton matrix) by Lanczos.

    `model`, `loss`, `data` and the keyword `options` (`operator`, `training`, ...) are those
    of `HessianOperator`; the others those of `lanczos.lanczos`.

    Returns an `EigenResult`, eigenvalues (k,) largest first. Example:
        >>> hessian_eigenvalues(model, model.loss, (x, y), k=3).eigenvalues
    """
    op = HessianOperator(model, loss, data, **options)
    return lanczos(op, op.size, k=k, order=order, which=which, tol=tol, seed=seed,
                   return_eigenvectors=return_eigenvectors)


def hessian_trace(model, loss, data, *, num_samples=100, distribution="rademacher", seed=0,
                  **options):
    """Hutchinson's estimate of `tr(H) = E[z^T H z]` from `num_samples` products with
    `"rademacher"` or `"gaussian"` probes; the rest as in `hessian_eigenvalues`.

    Returns a `TraceResult` (`.trace`, `.stderr`). Example:
        >>> hessian_trace(model, loss, (x, y), num_samples=50).trace
    """
    op = HessianOperator(model, loss, data, **options)
    return hutchinson_trace(op, op.size, num_samples=num_samples, distribution=distribution,
                            seed=seed)


def hessian_density(model, loss, data, *, num_vectors=8, order=30, sigma=None, grid=None,
                    num_points=512, seed=0, **options):
    """Spectral density of the Hessian by stochastic Lanczos quadrature, `num_vectors` runs
    of `order` products (`trace.spectral_density`); the rest as in `hessian_eigenvalues`.

    Returns a `DensityResult` (`.grid`, `.density`, `.nodes`, `.weights`). Example:
        >>> res = hessian_density(model, loss, (x, y), order=40)
    """
    op = HessianOperator(model, loss, data, **options)
    return spectral_density(op, op.size, num_vectors=num_vectors, order=order, sigma=sigma,
                            grid=grid, num_points=num_points, seed=seed)


def ntk_gram(model, x, *, batch_size=None, **options):
    """The empirical NTK of `NTKOperator(model, x, **options)`: `NTKOperator.gram`. Example:
        >>> ntk_gram(model, x[:32]).shape
        (32, 32)
    """
    return NTKOperator(model, x, **options).gram(batch_size)


def ntk_eigenvalues(model, x, k=1, *, algorithm="auto", order=None, seed=0, batch_size=None,
                    **options):
    """`k` largest eigenvalues of the empirical NTK (`NTKOperator`).

    `model`, `x` and the keyword `options` (`trace_outputs`, `training`, `variables`) are
    those of `NTKOperator`. `algorithm`: `"dense"` (`ntk_gram` in chunks of `batch_size`,
    then `numpy.linalg.eigvalsh`: exact), `"lanczos"` (matrix free, `order` products, `seed`)
    or `"auto"` (dense when the Jacobian takes at most `DENSE_NTK_MAX_BYTES` as float64).

    Returns an `EigenResult` (`.method`: which ran). Example:
        >>> ntk_eigenvalues(model, x[:100], k=2).eigenvalues
    """
    algorithm = _checks.check_choice("algorithm", algorithm, ("auto", "dense", "lanczos"))
    op = NTKOperator(model, x, **options)
    k = _checks.check_int("k", k, minimum=1, maximum=op.size)
    jacobian_bytes = 8 * op.num_samples * op.num_outputs * op.flat.size
    if algorithm == "lanczos" or (algorithm == "auto" and jacobian_bytes > DENSE_NTK_MAX_BYTES):
        return lanczos(op, op.size, k=k, order=order, seed=seed)
    values = np.linalg.eigvalsh(op.gram(batch_size))[::-1][:k].copy()
    return EigenResult(values, None, np.zeros(k), True, 0, "dense")
