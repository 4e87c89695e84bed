"""Matrix-free spectral algorithms for symmetric operators.

Every function here takes only a matrix-vector product `matvec: v -> A v` and the
size `n` of the (implicit) symmetric matrix `A`; none of them knows about Keras.
They can therefore be checked on plain NumPy matrices, and applied unchanged to a
Hessian or Gauss-Newton matrix (`HessianOperator`) or an NTK (`NTKOperator`).

All vectors handed to `matvec` are float64 NumPy arrays of shape `(n,)`;
`matvec` may compute in lower precision (e.g. a float32 model) and return any
array-like of shape `(n,)`. Lanczos and Hutchinson are the TensorFlow loops of
`krylov` (the same code `CurvatureProbe` compiles), run eagerly here.

Each algorithm returns a small frozen dataclass that says how far to trust it
(number of products used, residuals or standard error, convergence flag).

Modules: `lanczos` (factorisation, top-k), `power` (power iteration), `trace`
(Hutchinson), `density` (stochastic Lanczos quadrature), `results`.
"""

from keras_dynloss.curvature.density import gaussian_density
from keras_dynloss.curvature.density import spectral_density
from keras_dynloss.curvature.lanczos import lanczos
from keras_dynloss.curvature.lanczos import lanczos_tridiagonal
from keras_dynloss.curvature.lanczos import ritz_pairs
from keras_dynloss.curvature.power import power_iteration
from keras_dynloss.curvature.results import DensityResult
from keras_dynloss.curvature.results import EigenResult
from keras_dynloss.curvature.results import LanczosDecomposition
from keras_dynloss.curvature.results import TraceResult
from keras_dynloss.curvature.trace import hutchinson_trace

__all__ = [
    "DensityResult",
    "EigenResult",
    "LanczosDecomposition",
    "TraceResult",
    "gaussian_density",
    "hutchinson_trace",
    "lanczos",
    "lanczos_tridiagonal",
    "power_iteration",
    "ritz_pairs",
    "spectral_density",
]
