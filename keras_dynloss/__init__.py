"""keras_dynloss: dynamical loss functions for Keras 3 (TensorFlow, JAX, PyTorch): Ruiz-Garcia
et al., ICML 2021 (arXiv 2102.03793); dynamical MSE from arXiv 2410.10690."""

import gc
import importlib
import json
import os
import sys

_COMMAND_LINE = (os.path.basename(sys.argv[0] if sys.argv else "").startswith("keras-dynloss")
                 or list(getattr(sys, "orig_argv", []))[1:3] == ["-m", "keras_dynloss"])
# The command line hides TensorFlow's INFO and WARNING logs unless the user chose a level, and
# the optional packages Keras loads integrations of and it never uses (`bench/import_time.py`).
if _COMMAND_LINE and "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"


def _keras_backend():
    """The backend Keras will load: `KERAS_BACKEND`, else its `keras.json`'s, else TensorFlow."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return os.environ.get("KERAS_BACKEND") or json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return os.environ.get("KERAS_BACKEND", "tensorflow")


_HIDDEN = [name for name in ("jax", "sklearn", "IPython", "scipy", "matplotlib")
           if _COMMAND_LINE and "keras" not in sys.modules and name not in sys.modules
           and _keras_backend() == "tensorflow"]
sys.modules.update(dict.fromkeys(_HIDDEN))  # `import jax` raises ImportError meanwhile
_GC = gc.isenabled()
gc.disable()  # no collections while TensorFlow and Keras load: none of it is garbage
try:
    from keras_dynloss import datasets
    from keras_dynloss.callbacks import DynamicalLossScheduler
    from keras_dynloss.loss_functions import (
        dynamical_componentwise_mean_squared_error, dynamical_crossentropy,
        dynamical_mean_squared_error)
    from keras_dynloss.losses import (
        Dynamical, DynamicalComponentwiseMeanSquaredError, DynamicalLoss,
        DynamicalMeanSquaredError, dynamical)
    from keras_dynloss.schedules import ClassWeightSchedule
finally:
    for _name in _HIDDEN:
        sys.modules.pop(_name, None)
    if _COMMAND_LINE:
        gc.freeze()  # what is loaded stays: no later collection need walk it
    if _GC:
        gc.enable()

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
