"""keras_dynloss: dynamical loss functions for Keras 3 (TensorFlow, JAX, PyTorch): Ruiz-Garcia
et al., ICML 2021 (arXiv 2102.03793); dynamical MSE from arXiv 2410.10690."""

import importlib
import os
import sys

# The command line (`python -m keras_dynloss`, `keras-dynloss`) hides TensorFlow's INFO and
# WARNING logs unless the user chose a level; the variable counts only before TensorFlow loads.
if "TF_CPP_MIN_LOG_LEVEL" not in os.environ and (
        os.path.basename(sys.argv[0] if sys.argv else "").startswith("keras-dynloss")
        or list(getattr(sys, "orig_argv", []))[1:3] == ["-m", "keras_dynloss"]):
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

from keras_dynloss import datasets  # noqa: E402
from keras_dynloss.callbacks import DynamicalLossScheduler  # noqa: E402
from keras_dynloss.loss_functions import (  # noqa: E402
    dynamical_componentwise_mean_squared_error, dynamical_crossentropy,
    dynamical_mean_squared_error)
from keras_dynloss.losses import (  # noqa: E402
    Dynamical, DynamicalComponentwiseMeanSquaredError, DynamicalLoss, DynamicalMeanSquaredError,
    dynamical)
from keras_dynloss.schedules import ClassWeightSchedule  # noqa: E402

__version__ = "0.2.0"


def __getattr__(name):
    """Imports `kd.curvature`, `kd.plot`, `kd.distribute` and the curvature names on first use."""
    if name in ("curvature", "plot", "distribute"):
        value = importlib.import_module(f"keras_dynloss.{name}")
    elif not name.startswith("__") and name in importlib.import_module(
            "keras_dynloss.curvature").__all__:
        value = getattr(importlib.import_module("keras_dynloss.curvature"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
