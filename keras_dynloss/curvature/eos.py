"""Edge of stability of the optimizer in use: thresholds and preconditioners.

Gradient descent on a quadratic with curvature `lambda` is stable while
`lambda < threshold`; `eos_ratio = lambda / threshold` is 1 at the edge of
stability (Cohen et al. 2021; for adaptive methods Cohen et al., "Adaptive
gradient methods at the edge of stability", 2022):

| optimizer | curvature | threshold |
|---|---|---|
| `SGD(lr=eta)` | `lambda_max(H)` | `2 / eta` |
| `SGD(eta, momentum=mu)` | `lambda_max(H)` | `(2 + 2 mu) / eta` |
| `SGD(eta, momentum=mu, nesterov=True)` | `lambda_max(H)` | `(2 + 2 mu) / (eta (1 + 2 mu))` |
| `Adam` / `AdamW(eta, beta_1)` | `lambda_max(P^-1 H)` | `(2 + 2 beta_1) / ((1 - beta_1) eta)` |

For Adam, `P = diag(sqrt(v_hat) + eps_hat)` is the preconditioner of the
optimizer's *next* update as Keras applies it, from its own second-moment slots
after `t = optimizer.iterations` updates: `v_hat = v / (1 - beta_2^t)` and
`eps_hat = eps / sqrt(1 - beta_2^t)` (Keras adds `eps` to `sqrt(v)`, not to
`sqrt(v_hat)`; the two agree up to that rescaling of `eps`). With amsgrad, `v`
is the running maximum. `lambda_max(P^-1 H)` is computed as the top eigenvalue of
the symmetric `P^-1/2 H P^-1/2` (same spectrum). AdamW's decoupled weight decay
does not enter. Before the first update (`t = 0`) `P` is undefined: NaN.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_dynloss import _compat


def unwrap(optimizer):
    """The optimizer that applies updates (a `LossScaleOptimizer` looked through)."""
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer


def kind(optimizer):
    """`"sgd"`, `"adam"` (Adam and AdamW) or `None` (no threshold known)."""
    optimizer = unwrap(optimizer)
    if isinstance(optimizer, keras.optimizers.SGD):
        return "sgd"
    if isinstance(optimizer, keras.optimizers.Adam):  # AdamW subclasses Adam
        return "adam"
    return None


def _value(x):
    """A hyperparameter as a Python float (no float32 round trip for numbers)."""
    if isinstance(x, (int, float)):
        return float(x)
    return float(np.asarray(x.numpy() if hasattr(x, "numpy") else x))


def threshold(optimizer):
    """The stability threshold of the next update, a Python float."""
    optimizer = unwrap(optimizer)
    lr = _value(optimizer.learning_rate)
    if kind(optimizer) == "sgd":
        mu = _value(optimizer.momentum or 0.0)
        if optimizer.nesterov:
            return (2.0 + 2.0 * mu) / (lr * (1.0 + 2.0 * mu))
        return (2.0 + 2.0 * mu) / lr
    beta_1 = _value(optimizer.beta_1)
    return (2.0 + 2.0 * beta_1) / ((1.0 - beta_1) * lr)


def inverse_sqrt_preconditioner_fn(optimizer, variables):
    """Builds `() -> P^-1/2` (float64 `(n,)`) for Adam, read in-graph from its slots.

    `variables` are the flat operator's variables (their order is the flat
    order). The optimizer must be built (it has slots for them).
    """
    optimizer = unwrap(optimizer)
    slots = _compat.adam_second_moments(optimizer, variables)
    beta_2 = _value(optimizer.beta_2)
    eps = _value(optimizer.epsilon)

    def fn():
        t = tf.cast(tf.convert_to_tensor(optimizer.iterations), tf.float64)
        correction = 1.0 - tf.pow(tf.constant(beta_2, tf.float64), t)
        v = tf.concat([tf.reshape(tf.cast(tf.convert_to_tensor(s.value), tf.float64), [-1]) for s in slots], 0)
        p = tf.sqrt(v / correction) + eps / tf.sqrt(correction)
        return tf.math.rsqrt(p)

    return fn
