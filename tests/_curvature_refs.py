"""Independent references for the curvature tests.

A sigmoid MLP written directly on `keras.ops` from its own slicing of theta (Dense kernels
(in, out) row-major, then biases), softmax cross-entropy written out, and dense
Hessians / Jacobians from each framework's own autodiff (`tf.GradientTape.jacobian`,
`jax.hessian` / `jax.jacrev`, `torch.func.hessian` / `torch.func.jacrev`).
"""

import keras
import numpy as np
from keras import ops

BACKEND = keras.backend.backend()
SIZES = (3, 5, 3)  # inputs, hidden, outputs
# Tolerances of float64 comparisons. Keras's PyTorch backend promotes float64 to float32
# in `ops.matmul` (its dtype lattice maps 64-bit floats to 32 bits off TensorFlow), so a
# float64 model there is float32 inside its Dense layers.
TOL = dict(rtol=2e-5, atol=1e-7) if BACKEND == "torch" else dict(rtol=1e-9, atol=1e-11)


def mlp(dtype="float64", seed=0, regularizer=None):
    """Dense(5, sigmoid) -> Dense(3) on 3 inputs, seeded, in `dtype` (sigmoid: Keras's JAX
    `tanh` rounds float64 to float32)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((SIZES[0],), dtype=dtype),
        keras.layers.Dense(SIZES[1], activation="sigmoid", dtype=dtype, name="hidden"),
        keras.layers.Dense(SIZES[2], dtype=dtype, name="head", kernel_regularizer=regularizer),
    ])


def data(n=8, seed=1, dtype="float64"):
    """Inputs (n, 3), integer labels (n,) and their one-hot (n, 3)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, SIZES[0])).astype(dtype)
    y = rng.integers(0, SIZES[2], n)
    return x, y, np.eye(SIZES[2], dtype=dtype)[y]


def theta_of(model):
    return np.concatenate([np.ravel(w) for w in model.get_weights()]).astype(np.float64)


def logits(theta, x):
    """The MLP's outputs from theta (n,) on x, written independently of Keras layers."""
    i, h, k = SIZES
    w1 = ops.reshape(theta[:i * h], (i, h))
    b1 = theta[i * h:i * h + h]
    start = i * h + h
    w2 = ops.reshape(theta[start:start + h * k], (h, k))
    b2 = theta[start + h * k:]
    return ops.matmul(ops.sigmoid(ops.matmul(x, w1) + b1), w2) + b2


def crossentropy(z, onehot, weights=None):
    """Mean over the batch of `w_i (logsumexp(z_i) - z_i . y_i)` (Keras's reduction)."""
    per_sample = ops.logsumexp(z, axis=1) - ops.sum(z * onehot, axis=1)
    if weights is not None:
        per_sample = per_sample * weights
    return ops.sum(per_sample) / ops.cast(ops.shape(per_sample)[0], per_sample.dtype)


def crossentropy_loss(y, z, sample_weight=None):
    """`crossentropy` as a loss `(y_true, y_pred[, sample_weight])` (float64 on every
    backend, unlike Keras's losses under PyTorch, whose mean rounds to float32)."""
    return crossentropy(z, y, sample_weight)


def softmax_output_hessian(z):
    """The (n, K, K) blocks `diag(p_i) - p_i p_i^T` of the cross-entropy in the logits."""
    z = np.asarray(z, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return np.stack([np.diag(q) - np.outer(q, q) for q in p])


def dense_hessian(fn, theta):
    """`d^2 fn / d theta^2` (n, n): the framework's Jacobian of its own gradient."""
    if BACKEND == "jax":
        import jax
        return dense_jacobian(jax.grad(fn), theta)
    if BACKEND == "torch":
        import torch
        return dense_jacobian(torch.func.grad(fn), theta)
    import tensorflow as tf

    def grad(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            value = fn(t)
        return tape.gradient(value, t)
    return dense_jacobian(grad, theta)


def dense_jacobian(fn, theta):
    """`d fn / d theta`, shape `fn(theta).shape + theta.shape`, by the framework's autodiff."""
    theta = ops.convert_to_tensor(theta)
    if BACKEND == "jax":
        import jax
        return np.asarray(jax.jacrev(fn)(theta), np.float64)
    if BACKEND == "torch":
        import torch
        return torch.func.jacrev(fn)(theta).detach().cpu().numpy().astype(np.float64)
    import tensorflow as tf
    with tf.GradientTape() as tape:
        tape.watch(theta)
        out = fn(theta)
    return tape.jacobian(out, theta).numpy().astype(np.float64)


def to_numpy(t):
    return np.asarray(ops.convert_to_numpy(t), np.float64)


def loss_of_theta(x, onehot, sw=None):
    """`theta -> crossentropy(logits(theta, x), onehot, sw)`."""
    x, onehot = ops.convert_to_tensor(x), ops.convert_to_tensor(onehot)
    sw = None if sw is None else ops.convert_to_tensor(sw)
    return lambda theta: crossentropy(logits(theta, x), onehot, sw)


def hessian(model, x, onehot, sw=None):
    """The dense Hessian (n, n) of the MLP's cross-entropy at the model's weights."""
    return dense_hessian(loss_of_theta(x, onehot, sw), theta_of(model))


def jacobian(model, x):
    """J[i, c, :] = d f_c(x_i) / d theta, (N, K, n), at the model's weights."""
    return dense_jacobian(lambda t: logits(t, ops.convert_to_tensor(x)), theta_of(model))


def gauss_newton(model, x, sw=None):
    """`sum_i w_i J_i^T H_out,i J_i / N` from the explicit Jacobian and softmax Hessian."""
    h_out = softmax_output_hessian(logits(theta_of(model), x))
    weights = np.ones(len(x)) if sw is None else sw
    return sum(w * j.T @ h @ j for w, j, h in zip(weights, jacobian(model, x), h_out)) / len(x)
