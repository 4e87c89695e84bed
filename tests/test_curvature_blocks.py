"""Per-layer / per-variable curvature (`variables=`, `per_layer=True`) against
blocks of the explicit dense Hessian."""

import keras
import numpy as np
import pytest

from keras_dynloss.curvature import CurvatureProbe
from keras_dynloss.curvature import HessianOperator
from keras_dynloss.curvature import hessian_eigenvalues
from keras_dynloss.curvature import ntk_gram
from conftest import explicit_hessian

F64 = "float64"
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=F64)


def _model():
    keras.utils.set_random_seed(4)
    return keras.Sequential([
        keras.Input((3,), dtype=F64),
        keras.layers.Dense(4, activation="tanh", dtype=F64, name="hidden"),
        keras.layers.BatchNormalization(dtype=F64, name="norm"),
        keras.layers.Dense(3, dtype=F64, name="head"),
    ])


def _data(n=10):
    rng = np.random.default_rng(5)
    return rng.standard_normal((n, 3)), rng.integers(0, 3, n)


def _block(model, variables):
    """Indices of `variables` in the flat order of all trainable variables."""
    idx, start = [], 0
    wanted = {id(v) for v in variables}
    for v in model.trainable_variables:
        size = int(np.prod(v.shape))
        if id(v) in wanted:
            idx.extend(range(start, start + size))
        start += size
    return np.array(idx)


@pytest.mark.parametrize("pick", ["layer", "variable", "two_layers"])
def test_operator_is_the_dense_sub_hessian(pick):
    model = _model()
    x, y = _data()
    hidden, head = model.get_layer("hidden"), model.get_layer("head")
    chosen = {"layer": [head], "variable": [hidden.kernel], "two_layers": [head, hidden]}[pick]
    variables = [v for item in chosen for v in getattr(item, "trainable_variables", [item])]
    idx = _block(model, variables)
    full = explicit_hessian(model, LOSS, x, y)
    op = HessianOperator(model, LOSS, (x, y), variables=chosen)
    assert op.size == idx.size < full.shape[0]
    np.testing.assert_allclose(op.dense(), full[np.ix_(idx, idx)], rtol=1e-10, atol=1e-12)
    sub = np.linalg.eigvalsh(full[np.ix_(idx, idx)])
    res = hessian_eigenvalues(model, LOSS, (x, y), variables=chosen, order=idx.size)
    assert res.eigenvalues[0] == pytest.approx(sub[-1], rel=1e-9)
    # The block's top eigenvalue is not the full one (the test can tell them apart).
    assert abs(sub[-1] - np.linalg.eigvalsh(full)[-1]) > 1e-3


def test_ntk_of_a_layer():
    model = _model()
    x, _ = _data(n=5)
    head = model.get_layer("head")
    import tensorflow as tf
    rows = []
    for i in range(5):
        for c in range(3):
            with tf.GradientTape() as tape:
                out = model(x[i:i + 1], training=False)[0, c]
            rows.append(np.concatenate([g.numpy().ravel() for g in tape.gradient(out, head.trainable_variables)]))
    jac = np.array(rows).reshape(5, 3, -1)
    expected = np.einsum("ikp,jkp->ij", jac, jac)
    np.testing.assert_allclose(ntk_gram(model, x, variables=[head]), expected, rtol=1e-10, atol=1e-12)


def test_per_layer_probe_logs_each_block():
    model = _model()
    x, y = _data()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    model.fit(x, y, epochs=2, batch_size=5, verbose=0)
    probe = CurvatureProbe((x, y), per_layer=True, lanczos_order=30, tol=1e-8)
    values = probe.probe(model)
    full = explicit_hessian(model, LOSS, x, y)
    for name in ("hidden", "norm", "head"):
        idx = _block(model, model.get_layer(name).trainable_variables)
        exact = np.linalg.eigvalsh(full[np.ix_(idx, idx)])[-1]
        assert values[f"hessian_max_eig/{name}"] == pytest.approx(exact, rel=1e-7)
        assert values[f"hessian_max_eig_residual/{name}"] <= 1e-8 * abs(exact)
    assert values["hessian_max_eig"] == pytest.approx(np.linalg.eigvalsh(full)[-1], rel=1e-7)


def test_variables_must_belong_to_the_model():
    model, other = _model(), _model()
    x, y = _data()
    with pytest.raises(ValueError, match="argument `variables`: expected trainable variables"):
        HessianOperator(model, LOSS, (x, y), variables=[other.get_layer("head")])
    with pytest.raises(ValueError, match="argument `variables`"):
        HessianOperator(model, LOSS, (x, y), variables=[])
    with pytest.raises(ValueError, match="argument `variables`"):
        HessianOperator(model, LOSS, (x, y), variables=[model.get_layer("norm").moving_mean])
