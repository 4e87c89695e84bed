"""Curvature of a Keras model on every backend: operators `v -> A v` (loss Hessian,
Gauss-Newton, empirical NTK), algorithms on any such callable (Lanczos, Hutchinson, spectral
density), one-call entry points, and probes during training (`CurvatureProbe`, a callback;
`InStepProbe`, inside a compiled training step). Example:

    >>> hessian_eigenvalues(model, model.loss, (x, y), k=3).eigenvalues
"""

from keras_dynloss.curvature.errors import NotTwiceDifferentiableError
from keras_dynloss.curvature.in_step import InStepProbe
from keras_dynloss.curvature.lanczos import lanczos
from keras_dynloss.curvature.operators import HessianOperator
from keras_dynloss.curvature.operators import NTKOperator
from keras_dynloss.curvature.operators import hessian_density
from keras_dynloss.curvature.operators import hessian_eigenvalues
from keras_dynloss.curvature.operators import hessian_trace
from keras_dynloss.curvature.operators import ntk_eigenvalues
from keras_dynloss.curvature.operators import ntk_gram
from keras_dynloss.curvature.probe import CurvatureProbe
from keras_dynloss.curvature.results import DensityResult
from keras_dynloss.curvature.results import EigenResult
from keras_dynloss.curvature.results import LanczosDecomposition
from keras_dynloss.curvature.results import TraceResult
from keras_dynloss.curvature.trace import hutchinson_trace
from keras_dynloss.curvature.trace import spectral_density

__all__ = ["CurvatureProbe", "InStepProbe", "HessianOperator", "NTKOperator",
           "NotTwiceDifferentiableError", "hessian_eigenvalues", "hessian_trace",
           "hessian_density", "ntk_gram", "ntk_eigenvalues", "lanczos", "hutchinson_trace",
           "spectral_density", "EigenResult", "TraceResult", "DensityResult",
           "LanczosDecomposition"]
