"""Products over sub-batches (`micro_batch_size`) against dense references.

The Hessian reference is `tape.jacobian` of the gradient of the whole batch's
weighted loss plus the model's added losses; the Gauss-Newton one is the
explicit `J^T H_out J` of `test_curvature_ggn`; the NTK one `J J^T` from the
per-sample gradients of `test_curvature_ntk`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import CurvatureProbe
from keras_dynloss.curvature import micro_batches
from keras_dynloss.curvature.flat import FlatParameters
from keras_dynloss.curvature.operators import micro_batched_curvature_fn
from keras_dynloss.curvature.operators import micro_batched_ntk_fn
from conftest import columns_in_one_loop
from test_curvature_ggn import dense_ggn_crossentropy
from test_curvature_ntk import explicit_jacobian
from test_curvature_ntk import model_and_inputs

F64 = "float64"


def _model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((3,), dtype=F64),
        keras.layers.Dense(5, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.3), dtype=F64),
        keras.layers.BatchNormalization(dtype=F64),
        keras.layers.Dense(3, dtype=F64),
    ])
    bn = model.layers[1]
    bn.moving_mean.assign(np.full(5, 0.2))
    bn.moving_variance.assign(np.full(5, 1.6))
    return model


def _data(n):
    rng = np.random.default_rng(5)
    return rng.standard_normal((n, 3)) * 2, rng.integers(0, 3, n), np.linspace(0.5, 2.0, n)


def _dense_hessian(model, loss, x, y, sw):
    variables = model.trainable_variables
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            value = loss(y, model(x, training=False), sample_weight=sw) + tf.add_n(model.losses)
        flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(value, variables)], 0)
    n = int(flat.shape[0])
    jac = outer.jacobian(flat, variables)
    h = np.concatenate([tf.reshape(j, [n, -1]).numpy() for j in jac], axis=1)
    return 0.5 * (h + h.T)


@pytest.mark.parametrize("n, size, jit", [(11, 4, False), (12, 4, True), (12, 12, False)])
@pytest.mark.parametrize("mode", ["reverse_over_reverse", "forward_over_reverse"])
def test_sub_batch_products_equal_the_dense_hessian(n, size, jit, mode):
    model = _model()
    x, y, sw = (tf.constant(a) for a in _data(n))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)
    flat = FlatParameters(model)
    linearize = micro_batched_curvature_fn(flat, loss, size, mode=mode)
    got = columns_in_one_loop(lambda: linearize(flat.read(), x, y, sw), flat.size, tf.float64, jit)
    reference = _dense_hessian(model, loss, x, y, sw)
    assert np.abs(reference).max() > 1e-2
    np.testing.assert_allclose(got, reference, rtol=1e-10, atol=1e-12)


def test_sub_batch_gauss_newton_equals_dense_jt_h_j():
    model = keras.Sequential([keras.Input((3,), dtype=F64), keras.layers.Dense(4, activation="tanh", dtype=F64),
                              keras.layers.Dense(3, dtype=F64)])
    x, y, _ = _data(10)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)
    flat = FlatParameters(model)
    linearize = micro_batched_curvature_fn(flat, loss, 3, operator="gauss_newton")
    got = columns_in_one_loop(lambda: linearize(flat.read(), tf.constant(x), tf.constant(y), None), flat.size,
                              tf.float64, False)
    np.testing.assert_allclose(got, dense_ggn_crossentropy(model, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("jit, micro", [(False, 4), (True, 4), (True, "auto")])
def test_probe_with_micro_batches_equals_the_dense_top_eigenvalue(jit, micro, monkeypatch):
    monkeypatch.setattr(micro_batches, "AUTO_SPLIT_BYTES", 0)  # "auto" splits this small model too
    model = _model()
    x, y, sw = _data(12)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    probe = CurvatureProbe((x, y, sw), micro_batch_size=micro, lanczos_order=40, tol=1e-10, eos_ratio=False,
                           per_layer=True, ntk=True, ntk_order=12, jit_compile=jit)
    probe.probe(model, step=0)
    assert probe.build_for(model).micro_batch_size == (3 if micro == "auto" else micro)  # "auto": 4 equal parts
    reference = _dense_hessian(model, loss, tf.constant(x), tf.constant(y), tf.constant(sw))
    assert probe.history["hessian_max_eig"][-1] == pytest.approx(np.linalg.eigvalsh(reference)[-1], rel=1e-9)
    jac = explicit_jacobian(model, x)
    ntk = sum(jac[:, c] @ jac[:, c].T for c in range(jac.shape[1]))
    assert probe.history["ntk_max_eig"][-1] == pytest.approx(np.linalg.eigvalsh(ntk)[-1], rel=1e-9)
    sizes = [int(np.prod(v.shape)) for v in model.layers[0].trainable_variables]
    block = reference[:sum(sizes), :sum(sizes)]  # the first layer's diagonal block
    name = model.layers[0].name
    assert probe.history[f"hessian_max_eig/{name}"][-1] == pytest.approx(np.linalg.eigvalsh(block)[-1], rel=1e-9)


def _relu_mlp(inputs):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(7, activation="relu"), keras.layers.Dense(3)])


def test_forward_bytes_counts_the_activations_not_the_parameters():
    small = micro_batches.forward_bytes(FlatParameters(_relu_mlp(5)), tf.zeros([10, 5]))
    assert small >= 10 * (7 + 3) * 4  # at least the two layers' float32 outputs
    assert micro_batches.forward_bytes(FlatParameters(_relu_mlp(5)), tf.zeros([20, 5])) == 2 * small
    # 100 times the first layer's weights (and inputs), the same activations
    assert micro_batches.forward_bytes(FlatParameters(_relu_mlp(500)), tf.zeros([10, 500])) == small


@pytest.mark.parametrize("rows, expected", [(12, 3), (300, 75), (18, 3), (9, 3), (13, None), (3, None)])
def test_auto_sub_batches_are_a_quarter_or_the_next_equal_split(rows, expected, monkeypatch):
    monkeypatch.setattr(micro_batches, "AUTO_SPLIT_BYTES", 0)
    assert micro_batches.auto_batch_size(FlatParameters(_relu_mlp(5)), tf.zeros([rows, 5])) == expected


def test_auto_splits_only_above_the_threshold(monkeypatch):
    flat, x = FlatParameters(_relu_mlp(5)), tf.zeros([12, 5])
    assert micro_batches.auto_batch_size(flat, x) is None  # 1.6 kB of activations: never split
    size = micro_batches.forward_bytes(flat, x)
    monkeypatch.setattr(micro_batches, "AUTO_SPLIT_BYTES", size)
    assert micro_batches.auto_batch_size(flat, x) is None
    monkeypatch.setattr(micro_batches, "AUTO_SPLIT_BYTES", size - 1)
    assert micro_batches.auto_batch_size(flat, x) == 3
    # training mode: BatchNormalization would see each sub-batch's statistics
    assert micro_batches.auto_batch_size(flat, x, training=True) is None


def test_micro_batch_size_is_checked():
    for bad in (0, "Auto", 2.0):
        with pytest.raises(ValueError, match=r"micro_batch_size.*'auto', None or an int >= 1"):
            CurvatureProbe((np.zeros((4, 3)), np.zeros(4)), micro_batch_size=bad)
    model = _model()
    x, y, _ = _data(10)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    probe = CurvatureProbe((x, y), micro_batch_size=4, jit_compile=True, eos_ratio=False)
    with pytest.raises(ValueError, match=r"micro_batch_size.*divisor of the probe batch size \(10\) under XLA"):
        probe.probe(model, step=0)


@pytest.mark.parametrize("n, size, jit", [(7, 3, False), (6, 2, True)])
@pytest.mark.parametrize("trace_outputs", [True, False])
def test_sub_batch_ntk_products_equal_dense_j_jt(n, size, jit, trace_outputs):
    model, x = model_and_inputs(n=n)
    jac = explicit_jacobian(model, x)
    k = jac.shape[1]
    if trace_outputs:
        expected = sum(jac[:, c] @ jac[:, c].T for c in range(k))
    else:
        expected = jac.reshape(n * k, -1) @ jac.reshape(n * k, -1).T
    flat = FlatParameters(model)
    linearize = micro_batched_ntk_fn(flat, size, trace_outputs=trace_outputs, num_outputs=k)
    xt = tf.constant(x)
    got = columns_in_one_loop(lambda: linearize(flat.read(), xt), expected.shape[0], tf.float64, jit)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
