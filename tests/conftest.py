"""Shared fixtures: quiet TensorFlow, the spiral data, tiny models, a NumPy Γ(t)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def numpy_gamma(t, num_classes, amplitude, period, shape="triangular", normalize=True,
                static_after=None, groups=None):
    """Independent NumPy re-derivation of the paper's Γ(t) (cyclic order)."""
    t = int(t)
    if static_after is not None and t >= static_after:
        return np.ones(num_classes)
    k, phase = divmod(t, period)
    phase = phase / period
    h = {"triangular": 1 - abs(2 * phase - 1), "sine": np.sin(np.pi * phase), "square": 1.0}[shape]
    if groups is None:
        groups = [[i] for i in range(num_classes)]
    raw = np.ones(num_classes)
    raw[groups[k % len(groups)]] = 1 + (amplitude - 1) * h
    return num_classes * raw / raw.sum() if normalize else raw


def numpy_crossentropy(labels, logits):
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


def explicit_hessian(model, loss, x, y):
    """Dense Hessian via tape.jacobian of the gradient (independent of the HVP operators)."""
    import tensorflow as tf

    variables = model.trainable_variables
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            value = loss(y, model(x, training=False))
        grads = inner.gradient(value, variables)
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
    jac = outer.jacobian(flat, variables)
    n = int(flat.shape[0])
    h = np.concatenate([tf.reshape(j, [n, -1]).numpy() for j in jac], axis=1).astype(np.float64)
    return 0.5 * (h + h.T)


def columns_in_one_loop(linearized_matvec, size, dtype, jit):
    """Dense `A` (float64 NumPy): every column `A e_i` from one call of
    `linearized_matvec() -> matvec`, inside one compiled `tf.while_loop`."""
    import tensorflow as tf

    @tf.function(jit_compile=jit)
    def columns():
        matvec = linearized_matvec()
        eye = tf.eye(size, dtype=dtype)

        def body(i, cols):
            return i + 1, cols.write(i, matvec(eye[i]))

        _, cols = tf.while_loop(lambda i, _: i < size, body, (0, tf.TensorArray(dtype, size=size)))
        return cols.stack()

    return columns().numpy().T


@pytest.fixture(scope="session")
def spiral():
    """Small 3-arm spiral (30 points per arm), float32 x, int32 labels."""
    rng = np.random.RandomState(0)
    n, c = 30, 3
    xs, ys = [], []
    for j in range(c):
        r = np.linspace(0, 1, n)
        th = np.linspace(2 * np.pi * j / c, 2 * np.pi * j / c + 4 * np.pi, n) + 0.2 * rng.randn(n)
        xs.append(np.c_[r * np.cos(th), r * np.sin(th)])
        ys.append(np.full(n, j))
    return np.concatenate(xs).astype("float32"), np.concatenate(ys).astype("int32")


def tiny_mlp(width=8, num_classes=3, seed=0, inputs=2):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((inputs,)),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(num_classes),
    ])
