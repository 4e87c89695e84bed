"""Shared fixtures and the backend split of the suite.

`pytest` runs everything under Keras's TensorFlow backend. `KERAS_BACKEND=jax pytest` and
`KERAS_BACKEND=torch pytest` run the tests marked `multi_backend` (the others are
deselected: they exercise TensorFlow-only paths such as tf.distribute or XLA label checks).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


def pytest_configure(config):
    config.addinivalue_line("markers", "multi_backend: runs under every Keras backend")


def pytest_collection_modifyitems(config, items):
    if BACKEND == "tensorflow":
        return
    keep = [item for item in items if item.get_closest_marker("multi_backend")]
    dropped = [item for item in items if not item.get_closest_marker("multi_backend")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


@pytest.fixture
def float64():
    """Float64 arithmetic for the test: under JAX, `jax_enable_x64` while it runs."""
    if BACKEND != "jax":
        yield
        return
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def numpy_gamma(t, num_classes, amplitude, period, shape="triangular", normalize=True,
                static_after=None, start_after=None, groups=None):
    """Independent NumPy re-derivation of the paper's Γ(t) (cyclic order by default)."""
    t = int(t)
    if static_after is not None and t >= static_after:
        return np.ones(num_classes)
    if start_after is not None:
        if t < start_after:
            return np.ones(num_classes)
        t -= start_after
    k, phase = divmod(t, period)
    phase = phase / period
    h = {"triangular": 1 - abs(2 * phase - 1), "sine": np.sin(np.pi * phase), "square": 1.0}[shape]
    if groups is None:
        groups = [[i] for i in range(num_classes)]
    raw = np.ones(num_classes)
    raw[groups[k % len(groups)]] = 1 + (amplitude - 1) * h
    return num_classes * raw / raw.sum() if normalize else raw


def numpy_crossentropy(labels, logits):
    """Per-sample cross-entropy of integer labels and logits, in float64."""
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


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


def tiny_mlp(width=8, num_classes=3, seed=0, inputs=2, dtype=None):
    """Dense(width)-ReLU-Dense(num_classes), seeded."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((inputs,), dtype=dtype),
        keras.layers.Dense(width, activation="relu", dtype=dtype),
        keras.layers.Dense(num_classes, dtype=dtype),
    ])


def numpy_gd(weights, x, y, steps, lr, gamma_at, *, weight=None, dtype="float64"):
    """Full-batch gradient descent on Dense-ReLU-Dense with the Γ-weighted softmax
    cross-entropy `(1/N) Σ_μ w_μ Γ_{y_μ}(t) CE_μ`, back-propagated by hand in NumPy.

    Args:
        weights: [W1 (d, h), b1 (h,), W2 (h, C), b2 (C,)] (e.g. `model.get_weights()`).
        gamma_at: `t -> Γ(t)`, shape (C,).
        weight: per-sample weights w_μ (class weights, 0 for invalid samples), or None.
    Returns:
        The weights after `steps` updates, same layout.
    """
    w1, b1, w2, b2 = [np.array(w, dtype) for w in weights]
    x = np.asarray(x, dtype)
    y = np.asarray(y).astype(int)
    n = len(x)
    one_hot = np.eye(w2.shape[1], dtype=dtype)[y]
    sample = np.ones(n, dtype) if weight is None else np.asarray(weight, dtype)
    for t in range(steps):
        scale = np.asarray(gamma_at(t), dtype)[y] * sample / n
        pre = x @ w1 + b1
        h = np.maximum(pre, 0)
        z = h @ w2 + b2
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        dz = (p - one_hot) * scale[:, None]
        dh = (dz @ w2.T) * (pre > 0)
        w2, b2 = w2 - lr * h.T @ dz, b2 - lr * dz.sum(0)
        w1, b1 = w1 - lr * x.T @ dh, b1 - lr * dh.sum(0)
    return [w1, b1, w2, b2]
