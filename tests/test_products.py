"""Hessian, Gauss-Newton and NTK products (`curvature.products`) against dense references.

Every product matrix is built column by column inside one compiled call from a single
recording (as a probe runs Lanczos), and compared with the framework's own dense Hessian /
Jacobian of an independently written MLP and loss (`_curvature_refs`).
"""

import keras
import numpy as np
import pytest
from keras import ops

import _curvature_refs as ref
from keras_dynloss import backend
from keras_dynloss.curvature import products
from keras_dynloss.curvature.flat import FlatParameters

pytestmark = pytest.mark.multi_backend
LOSS = ref.crossentropy_loss


def columns(fn, flat, x, y=None, sw=None, size=None):
    """The matrix of the product `fn` records: every column from one recording, compiled
    (XLA on TensorFlow)."""
    size = size or flat.size

    def all_columns(theta, state, x, y, sw):
        product = fn(theta, state, x, y, sw)
        eye = ops.eye(size, dtype=theta.dtype)

        def column(i, out):
            return ops.slice_update(out, [0, i], ops.expand_dims(product(eye[i]), 1))
        return ops.fori_loop(0, size, column, ops.zeros((size, size), theta.dtype))

    compiled = backend.get().compile_function(all_columns, jit_compile=True)
    batch = [None if t is None else ops.convert_to_tensor(t) for t in (x, y, sw)]
    return ref.to_numpy(compiled(flat.read(), flat.non_trainable(), *batch))


@pytest.mark.parametrize("micro_batch_size", [None, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_hessian_equals_dense_hessian(float64, micro_batch_size, weighted):
    model = ref.mlp()
    x, _, onehot = ref.data()
    sw = np.linspace(0.5, 2.0, len(x)) if weighted else None
    expected = ref.hessian(model, x, onehot, sw)
    flat = FlatParameters(model)
    fn = products.curvature_fn(flat, LOSS, micro_batch_size=micro_batch_size)
    np.testing.assert_allclose(columns(fn, flat, x, onehot, sw), expected, **ref.TOL)
    assert np.linalg.eigvalsh(expected)[0] < -1e-3  # indefinite: not a Gauss-Newton matrix


@pytest.mark.parametrize("micro_batch_size", [None, 2])
def test_gauss_newton_equals_jt_h_j(float64, micro_batch_size):
    model = ref.mlp()
    x, _, onehot = ref.data()
    sw = np.linspace(0.5, 2.0, len(x))
    expected = ref.gauss_newton(model, x, sw)
    flat = FlatParameters(model)
    fn = products.curvature_fn(flat, LOSS, operator="gauss_newton",
                               micro_batch_size=micro_batch_size)
    np.testing.assert_allclose(columns(fn, flat, x, onehot, sw), expected, **ref.TOL)
    assert np.linalg.eigvalsh(expected)[0] > -1e-10
    assert not np.allclose(expected, ref.hessian(model, x, onehot, sw), atol=1e-3)


@pytest.mark.parametrize("operator", ["hessian", "gauss_newton"])
def test_added_losses_enter_with_their_hessian(float64, operator):
    # 0.5 ||W_head||^2 adds the identity on the head kernel, entries 20..34 of theta.
    model = ref.mlp(regularizer=keras.regularizers.L2(0.5))
    x, _, onehot = ref.data()
    flat = FlatParameters(model)
    with_reg, without = [
        columns(products.curvature_fn(flat, LOSS, operator=operator, include_regularization=r),
                flat, x, onehot) for r in (True, False)]
    expected = np.zeros((flat.size, flat.size))
    expected[20:35, 20:35] = np.eye(15)
    np.testing.assert_allclose(with_reg - without, expected, atol=ref.TOL["atol"])
    plain = ref.hessian(model, x, onehot) if operator == "hessian" else ref.gauss_newton(model, x)
    np.testing.assert_allclose(without, plain, **ref.TOL)


def test_gradient_fn_equals_autodiff_of_the_reference_loss(float64):
    model = ref.mlp()
    x, _, onehot = ref.data()
    flat = FlatParameters(model)
    loss = ref.loss_of_theta(x, onehot)
    expected_value = float(ref.to_numpy(loss(ops.convert_to_tensor(ref.theta_of(model)))))
    expected_grad = ref.dense_jacobian(loss, ref.theta_of(model))
    args = flat.read(), flat.non_trainable(), *map(ops.convert_to_tensor, (x, onehot))
    value, grad = products.gradient_fn(flat, LOSS)(*args)
    assert float(ref.to_numpy(value)) == pytest.approx(expected_value, rel=ref.TOL["rtol"])
    np.testing.assert_allclose(ref.to_numpy(grad), expected_grad, **ref.TOL)


@pytest.mark.parametrize("pick", ["layer", "two_variables"])
def test_block_is_the_dense_sub_hessian(float64, pick):
    model = ref.mlp()
    x, _, onehot = ref.data()
    hidden, head = model.get_layer("hidden"), model.get_layer("head")
    variables, index = {
        "layer": ([head], np.arange(20, 38)),
        "two_variables": ([head.bias, hidden.kernel], np.r_[0:15, 35:38]),
    }[pick]
    flat = FlatParameters(model, variables)
    assert flat.size == len(index)
    expected = ref.hessian(model, x, onehot)[np.ix_(index, index)]
    got = columns(products.curvature_fn(flat, LOSS), flat, x, onehot)
    np.testing.assert_allclose(got, expected, **ref.TOL)
    # The same block from one recording of the whole model's Hessian.
    whole = products.curvature_fn(FlatParameters(model), LOSS)

    def from_whole(theta, state, x, y, sw):
        product = whole(theta, state, x, y, sw)
        return lambda v: flat.select(product(flat.embed(v)))
    np.testing.assert_allclose(columns(from_whole, flat, x, onehot), expected, **ref.TOL)


@pytest.mark.parametrize("micro_batch_size", [None, 2])
@pytest.mark.parametrize("trace_outputs", [True, False])
def test_ntk_products_equal_explicit_jacobian(float64, trace_outputs, micro_batch_size):
    model = ref.mlp()
    x, _, _ = ref.data(n=6)
    jac = ref.jacobian(model, x)  # (N, K, n)
    if trace_outputs:
        expected = np.einsum("ikp,jkp->ij", jac, jac)
    else:
        expected = jac.reshape(18, -1) @ jac.reshape(18, -1).T
    flat = FlatParameters(model)
    for unroll in (False, True) if micro_batch_size is None else (False,):
        fn = products.ntk_fn(flat, trace_outputs=trace_outputs, micro_batch_size=micro_batch_size,
                             unroll_outputs=unroll)
        np.testing.assert_allclose(columns(fn, flat, x, size=len(expected)), expected, **ref.TOL)


def test_ntk_of_a_block_uses_its_parameters_only(float64):
    model = ref.mlp()
    x, _, _ = ref.data(n=5)
    jac = ref.jacobian(model, x)[:, :, 20:]  # the head's parameters
    flat = FlatParameters(model, [model.get_layer("head")])
    np.testing.assert_allclose(columns(products.ntk_fn(flat), flat, x, size=5),
                               np.einsum("ikp,jkp->ij", jac, jac), **ref.TOL)


def test_jacobian_fn_equals_explicit_jacobian(float64):
    model = ref.mlp()
    x, _, _ = ref.data(n=4)
    flat = FlatParameters(model)
    jac = products.jacobian_fn(flat)(flat.read(), flat.non_trainable(), ops.convert_to_tensor(x))
    np.testing.assert_allclose(ref.to_numpy(jac), ref.jacobian(model, x), **ref.TOL)


def test_rejected_options_name_the_argument():
    model = ref.mlp(dtype="float32")
    x, _, onehot = ref.data(n=6, dtype="float32")
    flat = FlatParameters(model)
    fn = products.curvature_fn(flat, LOSS, micro_batch_size=4)
    with pytest.raises(ValueError, match="`micro_batch_size`: expected a divisor of the batch "
                                         "size 6"):
        fn(flat.read(), flat.non_trainable(), *map(ops.convert_to_tensor, (x, onehot)))
    with pytest.raises(ValueError, match="argument `micro_batch_size`"):
        products.ntk_fn(flat, micro_batch_size=0)
    with pytest.raises(ValueError, match="argument `operator`"):
        products.curvature_fn(flat, LOSS, operator="fisher")
