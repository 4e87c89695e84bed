"""The objectives of the spiral runners (``--loss``) against Keras / NumPy references."""

import keras
import numpy as np
import pytest

from keras_dynloss.experiments._losses import objective, spiral_loss


def _data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, 8).astype("int32"), rng.normal(size=(8, 3))


def test_mse_is_keras_mse_on_one_hot_targets():
    y, f = _data()
    loss = spiral_loss("mse", 3, amplitude=1, period=10, dtype="float64").bind(5)
    ref = keras.losses.MeanSquaredError(dtype="float64")(np.eye(3)[y], f)
    np.testing.assert_allclose(float(loss(y, f)), float(ref), rtol=1e-12)


@pytest.mark.parametrize("name", ["dmse", "dmse-componentwise", "ce"])
def test_objective_follows_the_named_loss(name):
    y, f = _data()
    loss = spiral_loss(name, 3, amplitude=70, period=10, dtype="float64")
    gamma = np.array([70.0, 1.0, 1.0]) * 3 / 72  # step 5 = peak of period 0: class 0, sum C
    onehot = np.eye(3)[y]
    if name == "ce":
        logp = f - np.log(np.exp(f).sum(1, keepdims=True))
        ref = -gamma[y] * logp[np.arange(8), y]
    elif name == "dmse":
        ref = gamma[y] * ((onehot - f) ** 2).mean(1)
    else:
        ref = (gamma * (onehot - f) ** 2).mean(1)
    np.testing.assert_allclose(np.asarray(objective(loss, y, f, gamma)), ref, rtol=1e-10)
    np.testing.assert_allclose(float(loss.bind(5)(y, f)), ref.mean(), rtol=1e-10)


def test_spiral_loss_rejects_bad_names_and_mse_amplitude():
    with pytest.raises(ValueError, match="Invalid value for argument `loss`"):
        spiral_loss("hinge", 3, amplitude=1, period=10)
    with pytest.raises(ValueError, match="Invalid value for argument `amplitude`"):
        spiral_loss("mse", 3, amplitude=70, period=10)
