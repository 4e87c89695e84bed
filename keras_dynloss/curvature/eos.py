"""Edge of stability of the optimizer in use: `eos_ratio = lambda / threshold`, 1 at the edge
of stability (Cohen et al., 2021 and 2022), with `eta` the learning rate of the next update:

| optimizer | curvature | `eos_ratio` |
|---|---|---|
| `SGD(eta, momentum=mu)` | `lambda_max(H)` | `lambda eta / (2 + 2 mu)` |
| `SGD(eta, momentum=mu, nesterov=True)` | `lambda_max(H)` | `lambda eta (1+2mu) / (2+2mu)` |
| `Adam` / `AdamW(eta, beta_1)` | `lambda_max(P^-1 H)` | `lambda eta (1-b1) / (2+2b1)` |

NaN at `eta = 0` and before Adam's first update; AdamW's weight decay does not enter.

Example:
    >>> ratio(keras.optimizers.SGD(0.1, momentum=0.9), 30.0)   # 30 * 0.1 / 3.8
    0.789...
"""

import math

import keras
import numpy as np
from keras import ops


def unwrap(optimizer):
    """The optimizer that applies the updates (a `LossScaleOptimizer` looked through)."""
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer


def kind(optimizer):
    """`"sgd"`, `"adam"` (Adam and AdamW) or None (no threshold known)."""
    optimizer = unwrap(optimizer)  # AdamW subclasses Adam
    return ("sgd" if isinstance(optimizer, keras.optimizers.SGD) else
            "adam" if isinstance(optimizer, keras.optimizers.Adam) else None)


def learning_rate(optimizer):
    """The learning rate of the next update (a schedule's at `optimizer.iterations`), a tensor."""
    return ops.convert_to_tensor(unwrap(optimizer).learning_rate)


def ratio(optimizer, curvature, rate=None):
    """`eos_ratio` (the module's table) for `curvature` at `rate` (default: the current one)."""
    optimizer = unwrap(optimizer)
    eta = float(np.asarray(ops.convert_to_numpy(learning_rate(optimizer) if rate is None
                                                 else rate)))
    if eta == 0.0 or not math.isfinite(curvature):
        return float("nan")
    if kind(optimizer) == "sgd":
        mu = float(optimizer.momentum or 0.0)
        return curvature * eta * (1.0 + 2.0 * mu if optimizer.nesterov else 1.0) / (2.0 + 2.0 * mu)
    beta_1 = float(optimizer.beta_1)
    return curvature * eta * (1.0 - beta_1) / (2.0 + 2.0 * beta_1)


def inverse_sqrt_preconditioner(optimizer, moments, step, dtype):
    """`P^-1/2` (n,) in `dtype` after `step` >= 1 updates, `P = sqrt(v / c) + eps / sqrt(c)`,
    `c = 1 - beta_2^step`, `v` Adam's second `moments` (`_compat.adam_second_moments`)."""
    t = ops.cast(ops.maximum(step, 1), dtype)
    correction = 1.0 - ops.power(ops.convert_to_tensor(float(optimizer.beta_2), dtype), t)
    v = ops.concatenate([ops.reshape(ops.cast(m, dtype), (-1,)) for m in moments])
    p = ops.sqrt(v / correction) + float(optimizer.epsilon) / ops.sqrt(correction)
    return 1.0 / ops.sqrt(p)
