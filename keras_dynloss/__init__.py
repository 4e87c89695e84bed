"""keras_dynloss: dynamical loss functions for Keras 3 / TensorFlow.

Ruiz-Garcia, Zhang, Schoenholz & Liu, "Tilting the playing field: Dynamical loss
functions for machine learning" (ICML 2021, arXiv 2102.03793); dynamical MSE from
Lavin Pallero & Ruiz-Garcia (arXiv 2410.10690).
"""

import importlib

from keras_dynloss._checks import check_keras_backend
from keras_dynloss._quiet_import import import_tensorflow

import_tensorflow()  # without TensorFlow's start-up log noise: see _quiet_import
check_keras_backend()  # TensorFlow only: fail here, clearly, not deep inside Keras

from keras_dynloss import datasets  # noqa: E402
from keras_dynloss.callbacks import DynamicalLossScheduler  # noqa: E402
from keras_dynloss.losses import (  # noqa: E402
    DynamicalComponentwiseMeanSquaredError,
    DynamicalLoss,
    DynamicalMeanSquaredError,
    dynamical_componentwise_mean_squared_error,
    dynamical_crossentropy,
    dynamical_mean_squared_error,
)
from keras_dynloss.schedules import ClassWeightSchedule

__version__ = "0.1.0"

_EAGER = [
    "ClassWeightSchedule",
    "DynamicalComponentwiseMeanSquaredError",
    "DynamicalLoss",
    "DynamicalLossScheduler",
    "DynamicalMeanSquaredError",
    "datasets",
    "dynamical_componentwise_mean_squared_error",
    "dynamical_crossentropy",
    "dynamical_mean_squared_error",
]


def __getattr__(name):
    """``kd.curvature``, ``kd.CurvatureProbe`` and the other names of
    ``keras_dynloss.curvature.__all__`` (and ``__all__``) import the curvature
    subpackage on first use: it is most of this package's own import time."""
    if name.startswith("__") and name != "__all__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    curvature = importlib.import_module("keras_dynloss.curvature")
    if name == "__all__":
        value = [*_EAGER, *curvature.__all__]
    elif name == "curvature":
        value = curvature
    elif name in curvature.__all__:
        value = getattr(curvature, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__getattr__("__all__")) | {"curvature"})
