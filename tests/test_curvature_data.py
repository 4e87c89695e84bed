"""Curvature operators on `tf.data` datasets: bounded, read once, deterministic."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import HessianOperator
from keras_dynloss.curvature import hessian_eigenvalues
from keras_dynloss.curvature import hessian_trace
from conftest import explicit_hessian

F64 = "float64"
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((3,), dtype=F64), keras.layers.Dense(4, activation="tanh", dtype=F64),
         keras.layers.Dense(3, dtype=F64)]
    )


def _data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)), rng.integers(0, 3, n)


def test_repeated_dataset_is_refused_with_a_clear_error():
    model = _model()
    x, y = _data()
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()  # the README's own form
    with pytest.raises(ValueError, match="argument `data`: expected a finite tf.data.Dataset.*num_batches"):
        hessian_eigenvalues(model, LOSS, ds)
    with pytest.raises(ValueError, match="argument `data`: expected a finite"):
        hessian_trace(model, LOSS, ds, num_samples=2)


def test_unknown_cardinality_is_refused():
    model = _model()
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(4)
    with pytest.raises(ValueError, match="argument `data`: expected a tf.data.Dataset of known length"):
        HessianOperator(model, LOSS, ds)


def test_num_batches_bounds_a_repeated_dataset():
    model = _model()
    x, y = _data()
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    op = HessianOperator(model, LOSS, ds, num_batches=3)
    assert len(op.batches) == 3
    np.testing.assert_allclose(op.dense(), explicit_hessian(model, LOSS, x, y), rtol=1e-10, atol=1e-12)
    res = hessian_eigenvalues(model, LOSS, ds, num_batches=2, order=20)
    exact = np.linalg.eigvalsh(explicit_hessian(model, LOSS, x, y))[-1]
    assert res.eigenvalues[0] == pytest.approx(exact, rel=1e-8)


def test_reshuffled_augmented_dataset_gives_one_fixed_hessian():
    model = _model()
    x, y = _data(n=16)
    # Each pass reshuffles and draws new noise: without reading it once, every
    # product would see other samples and the "Hessian" would not be symmetric.
    ds = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(16, reshuffle_each_iteration=True)
        .map(lambda a, b: (a + tf.random.normal(tf.shape(a), dtype=a.dtype), b))
        .batch(4)
    )
    op = HessianOperator(model, LOSS, ds, num_batches=2)  # 8 of the 16 samples
    xs = np.concatenate([b[0].numpy() for b in op.batches])
    ys = np.concatenate([b[1].numpy() for b in op.batches])
    assert xs.shape == (8, 3)
    # Reference: the dense Hessian of exactly those samples (equal batches: plain mean).
    reference = explicit_hessian(model, LOSS, xs, ys)
    dense = op.dense()
    np.testing.assert_allclose(dense, reference, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dense, dense.T, atol=1e-12)
    # A second product with the same vector gives the same result.
    v = np.random.default_rng(2).standard_normal(op.size)
    np.testing.assert_array_equal(op(v), op(v))


def test_num_batches_rejected_for_a_single_batch():
    model = _model()
    with pytest.raises(ValueError, match="argument `num_batches`: expected None"):
        HessianOperator(model, LOSS, _data(), num_batches=2)
    ds = tf.data.Dataset.from_tensors(_data()).repeat()
    with pytest.raises(ValueError, match="argument `num_batches`"):
        HessianOperator(model, LOSS, ds, num_batches=0)
