"""The spiral runners' objectives (`--loss`): at A = 1 each is Keras's own loss."""

import keras
import numpy as np
import pytest

from keras_dynloss.experiments._losses import cell_label, spiral_loss

pytestmark = pytest.mark.multi_backend


def _data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, 8).astype("int32"), rng.normal(size=(8, 3))


@pytest.mark.parametrize("name, reference", [
    ("ce", lambda y, f: keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, dtype="float64")(y, f)),
    ("mse", lambda y, f: keras.losses.MeanSquaredError(dtype="float64")(np.eye(3)[y], f)),
    ("dmse", lambda y, f: keras.losses.MeanSquaredError(dtype="float64")(np.eye(3)[y], f)),
    ("dmse-componentwise",
     lambda y, f: keras.losses.MeanSquaredError(dtype="float64")(np.eye(3)[y], f)),
])
def test_amplitude_one_is_the_static_loss(name, reference, float64):
    y, f = _data()
    loss = spiral_loss(name, 3, amplitude=1, period=10, dtype="float64")
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(loss(y, f))),
                               float(keras.ops.convert_to_numpy(reference(y, f))), rtol=1e-12)


def test_labels():
    assert cell_label("ce", 1.0) == "cross-entropy" and cell_label("ce", 70.0) == "DCE A=70"
    assert cell_label("dmse", 70.0) == "DMSE (per sample) A=70"


def test_rejects_bad_names_and_an_mse_amplitude():
    with pytest.raises(ValueError, match="Invalid value for argument `loss`"):
        spiral_loss("hinge", 3, amplitude=1, period=10)
    with pytest.raises(ValueError, match="Invalid value for argument `amplitude`"):
        spiral_loss("mse", 3, amplitude=70, period=10)
