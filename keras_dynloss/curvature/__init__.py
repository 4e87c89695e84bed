"""Hessian, Gauss-Newton and NTK spectra of a Keras model, and probes during training."""

from keras_dynloss.curvature.errors import NotTwiceDifferentiableError
from keras_dynloss.curvature.in_step import InStepProbe
from keras_dynloss.curvature.lanczos import lanczos
from keras_dynloss.curvature.operators import (HessianOperator, NTKOperator, hessian_density,
                                               hessian_eigenvalues, hessian_trace,
                                               ntk_eigenvalues, ntk_gram)
from keras_dynloss.curvature.probe import CurvatureProbe
from keras_dynloss.curvature.results import (DensityResult, EigenResult, LanczosDecomposition,
                                             TraceResult)
from keras_dynloss.curvature.trace import hutchinson_trace, spectral_density

__all__ = ["CurvatureProbe", "InStepProbe", "HessianOperator", "NTKOperator",
           "NotTwiceDifferentiableError", "hessian_eigenvalues", "hessian_trace",
           "hessian_density", "ntk_gram", "ntk_eigenvalues", "lanczos", "hutchinson_trace",
           "spectral_density", "EigenResult", "TraceResult", "DensityResult",
           "LanczosDecomposition"]
