"""Hessian-vector products against explicit Hessians."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import HessianOperator
from keras_dynloss.curvature import NotTwiceDifferentiableError
from conftest import columns_in_one_loop
from conftest import explicit_hessian

F64 = "float64"


def mlp(dtype=F64, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((3,), dtype=dtype),
            keras.layers.Dense(5, activation="tanh", dtype=dtype),
            keras.layers.BatchNormalization(dtype=dtype),
            keras.layers.Dropout(0.5, dtype=dtype),
            keras.layers.Dense(3, dtype=dtype),
        ]
    )


def cnn(dtype=F64, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6, 6, 1), dtype=dtype),
            keras.layers.Conv2D(2, 3, activation="tanh", dtype=dtype),
            keras.layers.BatchNormalization(dtype=dtype),
            keras.layers.MaxPooling2D(2, dtype=dtype),
            keras.layers.Dropout(0.3, dtype=dtype),
            keras.layers.Flatten(dtype=dtype),
            keras.layers.Dense(3, dtype=dtype),
        ]
    )


def _warm_bn(model, x):
    # Non-trivial moving statistics so that inference mode differs from identity.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.1))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1.7))


def _data(shape, n=12, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)), rng.integers(0, 3, n)


def _problem(builder, shape):
    """A float64 model with warm BatchNorm statistics, data, a loss and the dense Hessian."""
    model = builder()
    x, y = _data(shape)
    _warm_bn(model, x)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)
    return model, x, y, loss, explicit_hessian(model, loss, x, y)


@pytest.mark.parametrize("builder, shape", [(mlp, (3,)), (cnn, (6, 6, 1))])
@pytest.mark.parametrize("mode", ["forward_over_reverse", "reverse_over_reverse"])
def test_hvp_equals_explicit_hessian_float64(builder, shape, mode):
    model, x, y, loss, h_ref = _problem(builder, shape)
    op = HessianOperator(model, loss, (x, y), mode=mode)
    assert op.size == h_ref.shape[0]
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = rng.standard_normal(op.size)
        np.testing.assert_allclose(op(v), h_ref @ v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(op.dense(), h_ref, rtol=1e-10, atol=1e-12)
    assert np.abs(h_ref).max() > 1e-3  # a non-trivial Hessian


def test_hvp_on_quadratic_loss_equals_q_v():
    keras.utils.set_random_seed(0)
    k = 2
    model = keras.Sequential([keras.Input((4,), dtype=F64), keras.layers.Dense(k, use_bias=False, dtype=F64)])
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((9, 4)), rng.standard_normal((9, k))
    # L = mean_{i,c} (x_i W - y_i)_c^2  =>  H = 2/(N K) (X^T X) kron I_K  (kernel is (4, K), row-major)
    q = 2.0 / (9 * k) * np.kron(x.T @ x, np.eye(k))
    op = HessianOperator(model, keras.losses.MeanSquaredError(dtype=F64), (x, y))
    for _ in range(3):
        v = rng.standard_normal(op.size)
        np.testing.assert_allclose(op(v), q @ v, rtol=1e-12, atol=1e-13)


def test_forward_over_reverse_equals_reverse_over_reverse_float32():
    model = cnn(dtype="float32")
    x, y = _data((6, 6, 1))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    fwd = HessianOperator(model, loss, (x, y), mode="forward_over_reverse")
    rev = HessianOperator(model, loss, (x, y), mode="reverse_over_reverse")
    v = np.random.default_rng(0).standard_normal(fwd.size).astype(np.float32)
    a, b = fwd(v), rev(v)
    assert a.dtype == np.float32 and a.shape == (fwd.size,)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_dataset_average_weighted_by_batch_size():
    model = mlp()
    x, y = _data((3,), n=11)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)
    full = HessianOperator(model, loss, (x, y))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # batches 4, 4, 3
    batched = HessianOperator(model, loss, ds)
    v = np.random.default_rng(1).standard_normal(full.size)
    np.testing.assert_allclose(batched(v), full(v), rtol=1e-10, atol=1e-12)
    g_full, l_full = full.gradient()
    g_ds, l_ds = batched.gradient()
    np.testing.assert_allclose(g_ds, g_full, rtol=1e-10, atol=1e-12)
    assert l_ds == pytest.approx(l_full, rel=1e-12)


def test_sample_weights_and_regularization_enter_the_hessian():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((3,), dtype=F64), keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.5), dtype=F64)]
    )
    x, y = _data((3,), n=6)
    sw = np.linspace(0.5, 2.0, 6)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)
    op = HessianOperator(model, loss, (x, y, sw))
    op_noreg = HessianOperator(model, loss, (x, y, sw), include_regularization=False)
    v = np.random.default_rng(0).standard_normal(op.size)
    # The L2 term 0.5 * ||W||^2 adds exactly 1.0 * v on the kernel block (first 9 entries).
    diff = op(v) - op_noreg(v)
    np.testing.assert_allclose(diff[:9], v[:9], rtol=1e-10)
    np.testing.assert_allclose(diff[9:], 0.0, atol=1e-12)
    unweighted = HessianOperator(model, loss, (x, y), include_regularization=False)
    assert not np.allclose(unweighted(v), op_noreg(v))


def test_tensor_in_tensor_out():
    model = mlp(dtype="float32")
    x, y = _data((3,))
    op = HessianOperator(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True), (x, y))
    v64 = tf.constant(np.random.default_rng(0).standard_normal(op.size))
    out = op(v64)
    assert tf.is_tensor(out) and out.dtype == tf.float64 and out.shape == (op.size,)
    np.testing.assert_allclose(out.numpy(), op(v64.numpy()), rtol=1e-6)
    assert op.num_matvecs == 2


def test_layer_without_second_derivative_is_named():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Conv2D(2, 3, padding="same", name="conv"),
            keras.layers.Resizing(6, 6, interpolation="bicubic", name="bicubic_resize"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    x = np.random.default_rng(0).standard_normal((3, 4, 4, 1)).astype("float32")
    y = np.array([0, 1, 1])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for mode in ("forward_over_reverse", "reverse_over_reverse"):
        op = HessianOperator(model, loss, (x, y), mode=mode)
        # The first derivative exists: only the second one is missing.
        assert np.isfinite(op.gradient()[0]).all()
        with pytest.raises(NotTwiceDifferentiableError, match="Layer 'bicubic_resize' \\(Resizing\\)") as info:
            op(np.ones(op.size))
        assert info.value.layer_name == "bicubic_resize"
        assert "Invalid value for argument `model`" in str(info.value)
        assert "ResizeBicubicGrad" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="forward"), "`mode`"),
        (dict(training=1), "`training`"),
        (dict(loss="mse"), "`loss`"),
        (dict(data=np.zeros((3, 3))), "`data`"),
        (dict(data=(np.zeros((3, 3)),)), "`data`"),
    ],
)
def test_rejected_inputs(kwargs, match):
    model = mlp(dtype="float32")
    x, y = _data((3,))
    args = dict(model=model, loss=keras.losses.MeanSquaredError(), data=(x, y))
    args.update(kwargs)
    with pytest.raises(ValueError, match="Invalid value for argument " + match):
        HessianOperator(args.pop("model"), args.pop("loss"), args.pop("data"), **args)


def test_rejected_model_and_vector():
    with pytest.raises(ValueError, match="argument `model`.*built"):
        HessianOperator(keras.Sequential([keras.layers.Dense(2)]), keras.losses.MeanSquaredError(), (np.zeros((2, 2)), np.zeros((2, 2))))
    with pytest.raises(ValueError, match="argument `model`"):
        HessianOperator("model", keras.losses.MeanSquaredError(), (np.zeros((2, 2)), np.zeros((2, 2))))
    model = mlp(dtype="float32")
    op = HessianOperator(model, keras.losses.MeanSquaredError(), _data((3,)))
    with pytest.raises(ValueError, match="argument `v`"):
        op(np.zeros(op.size + 1))


# XLA on CPU has no float64 MaxPoolGradGrad kernel: the CNN runs in graph mode only.
@pytest.mark.parametrize("builder, shape, jit", [(mlp, (3,), False), (mlp, (3,), True), (cnn, (6, 6, 1), False)])
def test_one_linearization_serves_every_product(builder, shape, jit):
    # The first pass is recorded once, outside the loop; each product in the
    # loop is a backward pass through it: the whole dense Hessian comes out.
    from keras_dynloss.curvature.flat import FlatParameters
    from keras_dynloss.curvature.operators import linearized_curvature_fn

    model, x, y, loss, h_ref = _problem(builder, shape)
    flat = FlatParameters(model)
    lin = linearized_curvature_fn(flat, loss)
    xt, yt = tf.constant(x), tf.constant(y)
    dense = columns_in_one_loop(lambda: lin(flat.read(), xt, yt, None), flat.size, tf.float64, jit)
    np.testing.assert_allclose(dense, h_ref, rtol=1e-10, atol=1e-12)
