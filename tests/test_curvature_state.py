"""Probes leave the model and its optimizer untouched."""

import keras
import numpy as np
import tensorflow as tf

from keras_dynloss.curvature import HessianOperator
from keras_dynloss.curvature import hessian_density
from keras_dynloss.curvature import hessian_eigenvalues
from keras_dynloss.curvature import hessian_trace
from keras_dynloss.curvature import ntk_eigenvalues


def _state(model):
    return [np.array(v.numpy()) for v in model.variables] + [
        np.array(v.numpy()) for v in model.optimizer.variables
    ]


def test_probes_do_not_move_batchnorm_stats_or_optimizer():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4)).astype("float32") * 3 + 1, rng.integers(0, 3, 16)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # non-trivial optimizer state
    bn = model.layers[1]
    before = _state(model)
    iterations = int(model.optimizer.iterations.numpy())
    assert iterations == 2
    for training in (False, True):
        hessian_eigenvalues(model, loss, (x, y), k=2, order=10, training=training)
        hessian_eigenvalues(model, loss, (x, y), hvp_mode="reverse_over_reverse", order=5, training=training)
        hessian_trace(model, loss, (x, y), num_samples=3, training=training)
        hessian_density(model, loss, (x, y), num_vectors=1, order=5, training=training)
        ntk_eigenvalues(model, x, training=training)
        ntk_eigenvalues(model, x, algorithm="lanczos", order=5, training=training)
        HessianOperator(model, loss, tf.data.Dataset.from_tensor_slices((x, y)).batch(5), training=training).gradient()
    after = _state(model)
    assert int(model.optimizer.iterations.numpy()) == iterations
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # Sanity: a training-mode call *would* have moved the statistics.
    moving_mean = bn.moving_mean.numpy().copy()
    model(x, training=True)
    assert not np.allclose(bn.moving_mean.numpy(), moving_mean)


def test_training_flag_changes_the_operator():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.BatchNormalization(), keras.layers.Dense(3)]
    )
    x = np.random.default_rng(1).standard_normal((16, 4)).astype("float32") * 2 + 3
    y = np.arange(16) % 3
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    a = hessian_eigenvalues(model, loss, (x, y), order=20).eigenvalues
    b = hessian_eigenvalues(model, loss, (x, y), order=20, training=True).eigenvalues
    # Batch statistics (training=True) vs moving statistics (default) differ here.
    assert abs(a[0] - b[0]) > 1e-2 * abs(a[0])
