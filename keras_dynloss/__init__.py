"""keras_dynloss: dynamical loss functions for Keras 3 / TensorFlow.

Ruiz-Garcia, Zhang, Schoenholz & Liu, "Tilting the playing field: Dynamical loss
functions for machine learning" (ICML 2021, arXiv 2102.03793); dynamical MSE from
Lavin Pallero & Ruiz-Garcia (arXiv 2410.10690).
"""

from keras_dynloss._checks import check_keras_backend

check_keras_backend()  # TensorFlow only: fail here, clearly, not deep inside Keras

from keras_dynloss import curvature, datasets  # noqa: E402
from keras_dynloss.callbacks import DynamicalLossScheduler
from keras_dynloss.curvature import (
    CurvatureProbe,
    DensityResult,
    EigenResult,
    HessianOperator,
    LanczosDecomposition,
    NotTwiceDifferentiableError,
    NTKOperator,
    TraceResult,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    hutchinson_trace,
    lanczos,
    lanczos_tridiagonal,
    ntk_eigenvalues,
    ntk_gram,
    power_iteration,
    spectral_density,
)
from keras_dynloss.losses import (
    DynamicalComponentwiseMeanSquaredError,
    DynamicalLoss,
    DynamicalMeanSquaredError,
    dynamical_componentwise_mean_squared_error,
    dynamical_crossentropy,
    dynamical_mean_squared_error,
)
from keras_dynloss.schedules import ClassWeightSchedule

__version__ = "0.1.0"

__all__ = [
    "ClassWeightSchedule",
    "DynamicalComponentwiseMeanSquaredError",
    "DynamicalLoss",
    "DynamicalLossScheduler",
    "DynamicalMeanSquaredError",
    "datasets",
    "dynamical_componentwise_mean_squared_error",
    "dynamical_crossentropy",
    "dynamical_mean_squared_error",
    *curvature.__all__,
]
