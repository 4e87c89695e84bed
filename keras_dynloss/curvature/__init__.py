"""Curvature probes: Hessian, Gauss-Newton and empirical-NTK spectra of Keras models.

Operators (`HessianOperator`, `NTKOperator`) are callables `v -> A v` on the
flat vector of the chosen trainable parameters (all by default, or a list of
variables/layers); algorithms (`lanczos`, `power_iteration`,
`hutchinson_trace`, `spectral_density`) take only such a callable and a size.
Entry points combine the two, and `CurvatureProbe` runs them during training.
"""

from keras_dynloss.curvature.algorithms import DensityResult
from keras_dynloss.curvature.algorithms import EigenResult
from keras_dynloss.curvature.algorithms import LanczosDecomposition
from keras_dynloss.curvature.algorithms import TraceResult
from keras_dynloss.curvature.algorithms import hutchinson_trace
from keras_dynloss.curvature.algorithms import lanczos
from keras_dynloss.curvature.algorithms import lanczos_tridiagonal
from keras_dynloss.curvature.algorithms import power_iteration
from keras_dynloss.curvature.algorithms import spectral_density
from keras_dynloss.curvature.api import hessian_density
from keras_dynloss.curvature.api import hessian_eigenvalues
from keras_dynloss.curvature.api import hessian_trace
from keras_dynloss.curvature.callback import CurvatureProbe
from keras_dynloss.curvature.in_step import InStepProbe
from keras_dynloss.curvature.ntk_api import ntk_eigenvalues
from keras_dynloss.curvature.ntk_api import ntk_gram
from keras_dynloss.curvature.operators import HessianOperator
from keras_dynloss.curvature.operators import NTKOperator
from keras_dynloss.curvature.operators import NotTwiceDifferentiableError

__all__ = [
    "CurvatureProbe",
    "DensityResult",
    "EigenResult",
    "HessianOperator",
    "InStepProbe",
    "LanczosDecomposition",
    "NTKOperator",
    "NotTwiceDifferentiableError",
    "TraceResult",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "hutchinson_trace",
    "lanczos",
    "lanczos_tridiagonal",
    "ntk_eigenvalues",
    "ntk_gram",
    "power_iteration",
    "spectral_density",
]
