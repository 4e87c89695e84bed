"""keras_dynloss: dynamical loss functions for Keras 3 (TensorFlow, JAX, PyTorch).

Ruiz-Garcia, Zhang, Schoenholz & Liu, "Tilting the playing field: Dynamical loss
functions for machine learning" (ICML 2021, arXiv 2102.03793); dynamical MSE from
Lavin Pallero & Ruiz-Garcia (arXiv 2410.10690).
"""

import importlib

from keras_dynloss import datasets
from keras_dynloss.callbacks import DynamicalLossScheduler
from keras_dynloss.loss_functions import (
    dynamical_componentwise_mean_squared_error,
    dynamical_crossentropy,
    dynamical_mean_squared_error,
)
from keras_dynloss.losses import (
    Dynamical,
    DynamicalComponentwiseMeanSquaredError,
    DynamicalLoss,
    DynamicalMeanSquaredError,
    dynamical,
)
from keras_dynloss.schedules import ClassWeightSchedule

__version__ = "0.2.0"

_LAZY = {"curvature": "keras_dynloss.curvature", "plot": "keras_dynloss.plot",
         "distribute": "keras_dynloss.distribute"}


def __getattr__(name):
    """`kd.curvature`, `kd.plot`, `kd.distribute` and the curvature names (`kd.CurvatureProbe`,
    `kd.hessian_eigenvalues`, ...) are imported on first use."""
    if name in _LAZY:
        value = importlib.import_module(_LAZY[name])
    elif not name.startswith("__"):
        curvature = importlib.import_module("keras_dynloss.curvature")
        if name not in curvature.__all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(curvature, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
