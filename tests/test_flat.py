"""The flat parameter vector: layout, blocks, and the pure forward pass of it."""

import keras
import numpy as np
import pytest
from keras import ops

import _curvature_refs as ref
from keras_dynloss.curvature.flat import FlatParameters
from keras_dynloss.curvature.flat import as_matrix

pytestmark = pytest.mark.multi_backend


def test_theta_is_the_row_major_concatenation_and_blocks_pick_their_entries():
    model = ref.mlp(dtype="float32")
    hidden, head = model.get_layer("hidden"), model.get_layer("head")
    flat = FlatParameters(model, [head.bias, hidden.kernel])
    theta = ref.to_numpy(flat.read())
    np.testing.assert_array_equal(theta, ref.theta_of(model))
    assert (flat.num_parameters, flat.size) == (38, 18)
    assert [id(v) for v in flat.variables] == [id(hidden.kernel), id(head.bias)]  # model order
    block = ref.to_numpy(flat.select(flat.read()))
    np.testing.assert_array_equal(block, np.r_[theta[:15], theta[35:]])
    new_block = ops.convert_to_tensor(np.arange(18, dtype="float32"))
    values = [ref.to_numpy(v) for v in flat.values(flat.read(), new_block)]
    np.testing.assert_array_equal(values[0], np.arange(15).reshape(3, 5))
    np.testing.assert_array_equal(values[1], model.get_weights()[1])
    np.testing.assert_array_equal(values[3], [15, 16, 17])


def test_forward_is_the_model_at_theta_without_touching_it():
    model = ref.mlp(dtype="float32")
    x, _, _ = ref.data(n=4, dtype="float32")
    flat = FlatParameters(model)
    before = model.get_weights()
    theta = ops.convert_to_tensor(ref.theta_of(model).astype("float32") * 0.5)
    out = ref.to_numpy(flat.forward(theta, flat.non_trainable(), ops.convert_to_tensor(x)))
    expected = ref.to_numpy(ref.logits(theta, ops.convert_to_tensor(x)))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_several_outputs_become_one_matrix_and_back():
    a = ops.convert_to_tensor(np.arange(12.0).reshape(2, 3, 2))
    b = ops.convert_to_tensor(np.arange(4.0).reshape(2, 2))
    matrix, restore = as_matrix({"a": a, "b": b})
    assert tuple(matrix.shape) == (2, 8)
    np.testing.assert_array_equal(ref.to_numpy(matrix)[1], [6, 7, 8, 9, 10, 11, 2, 3])
    back = restore(matrix)
    np.testing.assert_array_equal(ref.to_numpy(back["a"]), ref.to_numpy(a))


@pytest.mark.parametrize("variables", [[keras.layers.Dense(2)], [], "head"])
def test_rejected_variables(variables):
    with pytest.raises(ValueError, match="Invalid value for argument `variables`"):
        FlatParameters(ref.mlp(dtype="float32"), variables)
