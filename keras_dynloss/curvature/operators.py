"""Curvature operators of a Keras model (one import point).

An operator is a callable `v -> A v` on the flat vector of the chosen trainable
parameters of a model (size `n`; all trainable variables by default, in the
order of `model.trainable_variables`, each flattened row-major). It accepts
float32 or float64 NumPy arrays or tensors of shape `(n,)` and returns the same
kind and dtype; the products are computed in the model's parameter dtype
inside a compiled `tf.function` (float32 under mixed precision).

The code lives in one module per job:

* `flat`: flat parameter vectors, the stateless forward pass, the loss;
* `data`: batches and datasets (read once, bounded);
* `hessian`: Hessian and generalised Gauss-Newton products (`HessianOperator`);
* `ntk`: empirical NTK products and Jacobians (`NTKOperator`);
* `errors`: layers that cannot be differentiated twice.

Operators never change the model or its optimizer.
"""

from keras_dynloss.curvature.errors import NotTwiceDifferentiableError
from keras_dynloss.curvature.errors import output_probes
from keras_dynloss.curvature.errors import run_guarded
from keras_dynloss.curvature.flat import FlatParameters
from keras_dynloss.curvature.flat import flat_outputs
from keras_dynloss.curvature.flat import loss_value
from keras_dynloss.curvature.flat import model_outputs
from keras_dynloss.curvature.hessian import HVP_MODES
from keras_dynloss.curvature.hessian import OPERATORS
from keras_dynloss.curvature.hessian import HessianOperator
from keras_dynloss.curvature.hessian import curvature_fn
from keras_dynloss.curvature.hessian import ggn_fn
from keras_dynloss.curvature.hessian import grad_fn
from keras_dynloss.curvature.hessian import hvp_fn
from keras_dynloss.curvature.hessian import linearized_curvature_fn
from keras_dynloss.curvature.micro_batches import micro_batched_curvature_fn
from keras_dynloss.curvature.micro_batches import micro_batched_ntk_fn
from keras_dynloss.curvature.ntk import NTKOperator
from keras_dynloss.curvature.ntk import ntk_jacobian
from keras_dynloss.curvature.ntk import ntk_linearized_fn
from keras_dynloss.curvature.ntk import ntk_matvec_fn
from keras_dynloss.curvature.ntk import num_samples_and_outputs

__all__ = [
    "FlatParameters",
    "HVP_MODES",
    "HessianOperator",
    "NTKOperator",
    "NotTwiceDifferentiableError",
    "OPERATORS",
    "curvature_fn",
    "flat_outputs",
    "ggn_fn",
    "grad_fn",
    "hvp_fn",
    "linearized_curvature_fn",
    "loss_value",
    "micro_batched_curvature_fn",
    "micro_batched_ntk_fn",
    "model_outputs",
    "ntk_jacobian",
    "ntk_linearized_fn",
    "ntk_matvec_fn",
    "num_samples_and_outputs",
    "output_probes",
    "run_guarded",
]
