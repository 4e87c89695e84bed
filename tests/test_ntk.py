"""Empirical NTK (`ntk_gram`, `NTKOperator`, `ntk_eigenvalues`) against the explicit
Jacobian of an independently written MLP (`_curvature_refs`)."""

import keras
import numpy as np
import pytest
from keras import ops

import _curvature_refs as ref
from keras_dynloss.curvature.operators import NTKOperator
from keras_dynloss.curvature.operators import ntk_eigenvalues
from keras_dynloss.curvature.operators import ntk_gram


def kernels(jac):
    """The traced (N, N) and full (N*K, N*K) kernels of a Jacobian (N, K, n)."""
    flat = jac.reshape(-1, jac.shape[-1])
    return np.einsum("ikp,jkp->ij", jac, jac), flat @ flat.T


@pytest.mark.multi_backend
@pytest.mark.parametrize("batch_size", [None, 4])
def test_gram_matrices_equal_explicit_jacobian(float64, batch_size):
    model = ref.mlp()
    x, _, _ = ref.data(n=7)
    traced, full = kernels(ref.jacobian(model, x))
    got_traced = ntk_gram(model, x, batch_size=batch_size)
    got_full = ntk_gram(model, x, trace_outputs=False, batch_size=batch_size)
    assert got_traced.dtype == np.float64
    assert got_traced.shape == (7, 7) and got_full.shape == (21, 21)
    np.testing.assert_allclose(got_traced, traced, **ref.TOL)
    np.testing.assert_allclose(got_full, full, **ref.TOL)
    assert np.linalg.eigvalsh(got_traced)[0] > -1e-8


@pytest.mark.multi_backend
@pytest.mark.parametrize("trace_outputs", [True, False])
def test_operator_products_equal_explicit_kernel(float64, trace_outputs):
    model = ref.mlp()
    x, _, _ = ref.data(n=6)
    expected = kernels(ref.jacobian(model, x))[0 if trace_outputs else 1]
    op = NTKOperator(model, x, trace_outputs=trace_outputs)
    assert (op.num_samples, op.num_outputs, op.size) == (6, 3, len(expected))
    np.testing.assert_allclose(op.dense(), expected, **ref.TOL)
    u = ops.convert_to_tensor(np.random.default_rng(0).standard_normal(op.size))
    out = op(u)
    assert ops.is_tensor(out)
    np.testing.assert_allclose(ref.to_numpy(out), expected @ ref.to_numpy(u), **ref.TOL)


@pytest.mark.multi_backend
def test_operator_of_a_block(float64):
    model = ref.mlp()
    x, _, _ = ref.data(n=5)
    jac = ref.jacobian(model, x)[:, :, :20]  # the hidden layer's parameters
    op = NTKOperator(model, x, variables=[model.get_layer("hidden")])
    np.testing.assert_allclose(op.dense(), kernels(jac)[0], **ref.TOL)


@pytest.mark.multi_backend
@pytest.mark.parametrize("trace_outputs", [True, False])
def test_eigenvalues_dense_and_lanczos(float64, trace_outputs):
    model = ref.mlp()
    x, _, _ = ref.data(n=8)
    exact = np.linalg.eigvalsh(kernels(ref.jacobian(model, x))[0 if trace_outputs else 1])[::-1]
    dense = ntk_eigenvalues(model, x, k=2, trace_outputs=trace_outputs)
    assert dense.method == "dense"
    np.testing.assert_allclose(dense.eigenvalues, exact[:2], **ref.TOL)
    size = 8 if trace_outputs else 24
    lanczos = ntk_eigenvalues(model, x, k=2, trace_outputs=trace_outputs, algorithm="lanczos",
                              order=size)
    assert lanczos.method != "dense"
    np.testing.assert_allclose(lanczos.eigenvalues, exact[:2], rtol=1e-6)


def test_several_outputs_are_channels_side_by_side():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="tanh")(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(2)(hidden), keras.layers.Dense(3)(hidden)])
    x = np.random.default_rng(1).standard_normal((5, 3)).astype("float32")
    import tensorflow as tf

    with tf.GradientTape() as tape:
        out = tf.concat(model(x), axis=1)  # (5, 5)
    jac = tape.jacobian(out, model.trainable_variables)
    jac = np.concatenate([tf.reshape(j, (5, 5, -1)).numpy() for j in jac], axis=2)
    jac = jac.astype(np.float64)
    op = NTKOperator(model, x, trace_outputs=False)
    assert op.num_outputs == 5
    np.testing.assert_allclose(ntk_gram(model, x, trace_outputs=False), kernels(jac)[1],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(op.dense(), kernels(jac)[1], rtol=1e-4, atol=1e-5)


@pytest.mark.multi_backend
@pytest.mark.parametrize("call, match", [
    (lambda m, x: NTKOperator(m, x, trace_outputs="yes"), "`trace_outputs`"),
    (lambda m, x: ntk_gram(m, x, batch_size=0), "`batch_size`"),
    (lambda m, x: ntk_eigenvalues(m, x, algorithm="power"), "`algorithm`"),
    (lambda m, x: ntk_eigenvalues(m, x, k=9), "`k`"),
    (lambda m, x: NTKOperator(m, x)(np.ones(7)), "`u`: expected a vector of shape \\(8,\\)"),
])
def test_rejected_inputs_name_the_argument(call, match):
    x, _, _ = ref.data(n=8, dtype="float32")
    with pytest.raises(ValueError, match="Invalid value for argument " + match):
        call(ref.mlp(dtype="float32"), x)
