"""A layer TensorFlow cannot differentiate twice is named, with the op that lacks a gradient."""

import keras
import numpy as np
import pytest

from keras_dynloss.curvature.errors import NotTwiceDifferentiableError
from keras_dynloss.curvature.operators import HessianOperator
from keras_dynloss.curvature.operators import NTKOperator


def bicubic_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((4, 4, 1)),
        keras.layers.Conv2D(2, 3, padding="same", name="conv"),
        keras.layers.Resizing(6, 6, interpolation="bicubic", name="bicubic_resize"),
        keras.layers.Flatten(),
        keras.layers.Dense(2, name="head"),
    ])


@pytest.mark.parametrize("operator", ["hessian", "gauss_newton"])
def test_hessian_products_name_the_layer_and_the_op(operator):
    model = bicubic_model()
    x = np.random.default_rng(0).standard_normal((3, 4, 4, 1)).astype("float32")
    op = HessianOperator(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                         (x, np.array([0, 1, 1])), operator=operator)
    assert np.isfinite(op.gradient()[0]).all()  # the first derivative exists
    match = r"argument `model`.*layer 'bicubic_resize' \(Resizing\).*ResizeBicubicGrad"
    with pytest.raises(NotTwiceDifferentiableError, match=match) as info:
        op(np.ones(op.size))
    assert isinstance(info.value, ValueError)
    assert (info.value.layer_name, info.value.op_type) == ("bicubic_resize", "ResizeBicubicGrad")


def test_ntk_products_name_the_layer():
    model = bicubic_model()
    x = np.random.default_rng(0).standard_normal((3, 4, 4, 1)).astype("float32")
    with pytest.raises(NotTwiceDifferentiableError, match="layer 'bicubic_resize' \\(Resizing\\)"):
        NTKOperator(model, x)(np.ones(3))
