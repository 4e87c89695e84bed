"""`HessianOperator` and the Hessian entry points against dense references: data handling
(batches, datasets read once), dtypes, model state, mixed precision and rejected inputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import _curvature_refs as ref
from keras_dynloss.curvature.operators import HessianOperator
from keras_dynloss.curvature.operators import hessian_density
from keras_dynloss.curvature.operators import hessian_eigenvalues
from keras_dynloss.curvature.operators import hessian_trace

multi_backend = pytest.mark.multi_backend
LOSS = ref.crossentropy_loss


def counting_dataset(x, onehot, batch_size, reads):
    """A tf.data pipeline over (x, onehot) that counts the samples it yields."""
    def generate():
        for i in range(len(x)):
            reads.append(i)
            yield x[i], onehot[i]
    spec = (tf.TensorSpec(x.shape[1:], tf.as_dtype(x.dtype)),
            tf.TensorSpec(onehot.shape[1:], tf.float64))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec)
    return dataset.apply(tf.data.experimental.assert_cardinality(len(x))).batch(batch_size)


@multi_backend
@pytest.mark.parametrize("weighted", [False, True])
def test_dense_equals_dense_hessian(float64, weighted):
    model = ref.mlp()
    x, _, onehot = ref.data()
    sw = np.linspace(0.5, 2.0, len(x)) if weighted else None
    op = HessianOperator(model, LOSS, (x, onehot) if sw is None else (x, onehot, sw))
    dense = op.dense()
    assert dense.dtype == np.float64 and op.size == 38 and op.num_matvecs == 38
    np.testing.assert_allclose(dense, ref.hessian(model, x, onehot, sw), **ref.TOL)


@multi_backend
def test_numpy_in_numpy_out_tensor_in_tensor_out():
    model = ref.mlp(dtype="float32")
    x, _, onehot = ref.data(dtype="float32")
    op = HessianOperator(model, keras.losses.CategoricalCrossentropy(from_logits=True), (x, onehot))
    assert op.dtype == "float32"
    v = np.random.default_rng(0).standard_normal(op.size)
    expected = ref.hessian(model, x.astype(np.float64), onehot.astype(np.float64)) @ v
    for given in (v, v.astype(np.float32)):
        out = op(given)
        assert isinstance(out, np.ndarray) and out.dtype == given.dtype and out.shape == (op.size,)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
    out = op(ops.convert_to_tensor(v.astype(np.float32)))
    assert ops.is_tensor(out) and keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, rtol=1e-4, atol=1e-6)
    assert op.num_matvecs == 3


@multi_backend
def test_dataset_is_the_weighted_mean_of_its_batches_read_once(float64):
    model = ref.mlp()
    x, _, onehot = ref.data(n=11)
    reads = []
    op = HessianOperator(model, LOSS, counting_dataset(x, onehot, 4, reads))  # batches 4, 4, 3
    assert [len(ops.convert_to_numpy(b[0])) for b in op.batches] == [4, 4, 3]
    np.testing.assert_allclose(op.dense(), ref.hessian(model, x, onehot), **ref.TOL)
    assert len(reads) == 11  # 38 products, one read
    loss, theta = ref.loss_of_theta(x, onehot), ref.theta_of(model)
    grad, value = op.gradient()
    np.testing.assert_allclose(grad, ref.dense_jacobian(loss, theta), **ref.TOL)
    expected = float(ref.to_numpy(loss(ops.convert_to_tensor(theta))))
    assert value == pytest.approx(expected, rel=ref.TOL["rtol"])


@multi_backend
def test_a_shuffling_dataset_gives_one_fixed_operator(float64):
    model = ref.mlp()
    x, _, onehot = ref.data(n=12)
    dataset = tf.data.Dataset.from_tensor_slices((x, onehot)).shuffle(12, seed=None).batch(5)
    op = HessianOperator(model, LOSS, dataset, num_batches=1)
    drawn_x, drawn_y = [ops.convert_to_numpy(t) for t in op.batches[0][:2]]
    assert drawn_x.shape == (5, 3)
    v = np.random.default_rng(2).standard_normal(op.size)
    first = op(v)
    np.testing.assert_array_equal(op(v), first)
    np.testing.assert_allclose(first, ref.hessian(model, drawn_x, drawn_y) @ v, **ref.TOL)


@multi_backend
def test_an_infinite_dataset_needs_num_batches(float64):
    model = ref.mlp()
    x, _, onehot = ref.data(n=12)
    dataset = tf.data.Dataset.from_tensor_slices((x, onehot)).batch(4).repeat()
    with pytest.raises(ValueError, match="argument `data`: expected a finite"):
        HessianOperator(model, LOSS, dataset)
    with pytest.raises(ValueError, match="argument `data`: expected a finite"):
        HessianOperator(model, LOSS, dataset.filter(lambda a, b: True))
    op = HessianOperator(model, LOSS, dataset, num_batches=2)
    v = np.random.default_rng(3).standard_normal(op.size)
    np.testing.assert_allclose(op(v), ref.hessian(model, x[:8], onehot[:8]) @ v, **ref.TOL)


@multi_backend
def test_micro_batches_give_the_whole_batch_operator(float64):
    model = ref.mlp()
    x, _, onehot = ref.data(n=12)
    op = HessianOperator(model, LOSS, (x, onehot), operator="hessian", micro_batch_size=3)
    v = np.random.default_rng(4).standard_normal(op.size)
    np.testing.assert_allclose(op(v), ref.hessian(model, x, onehot) @ v, **ref.TOL)


def _bn_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
        keras.layers.Activation("sigmoid"), keras.layers.Dropout(0.3), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    x, _, onehot = ref.data(n=8, dtype="float32")
    model.fit(x, onehot, epochs=1, batch_size=8, verbose=0)  # non-trivial statistics and slots
    return model, x, onehot


@multi_backend
def test_nothing_changes_the_model_its_statistics_or_its_optimizer():
    model, x, onehot = _bn_model()
    before = [ops.convert_to_numpy(v).copy() for v in model.variables + model.optimizer.variables]
    size = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    v = np.random.default_rng(5).standard_normal(size)
    results = {}
    for training in (False, True):
        op = HessianOperator(model, model.loss, (x, onehot), training=training)
        results[training] = op(v)
        op.gradient()
    hessian_eigenvalues(model, model.loss, (x, onehot), order=5)
    after = [ops.convert_to_numpy(v) for v in model.variables + model.optimizer.variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # Batch statistics (and dropout) make the training-mode operator another one.
    assert not np.allclose(results[True], results[False], rtol=1e-3)


@multi_backend
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_products_equal_the_float32_models(policy):
    x, _, onehot = ref.data(n=16, dtype="float32")
    reference = ref.mlp(dtype="float32")
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    v = np.random.default_rng(6).standard_normal(38).astype(np.float32)
    expected = HessianOperator(reference, loss, (x, onehot))(v)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = ref.mlp(dtype=None)
        model.set_weights(reference.get_weights())
        assert model.layers[0].compute_dtype != "float32"
        op = HessianOperator(model, loss, (x, onehot))
        got = op(v)
        assert op.dtype == "float32" and model.layers[0].dtype_policy.name == policy  # restored
    finally:
        keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@multi_backend
def test_entry_point_eigenvalues_and_blocks(float64):
    model = ref.mlp()
    x, _, onehot = ref.data()
    dense = ref.hessian(model, x, onehot)
    exact = np.linalg.eigvalsh(dense)
    res = hessian_eigenvalues(model, LOSS, (x, onehot), k=2, order=38, tol=1e-8,
                              return_eigenvectors=True)
    np.testing.assert_allclose(res.eigenvalues, exact[::-1][:2], rtol=1e-7, atol=1e-9)
    assert res.eigenvectors.shape == (38, 2)
    top = res.eigenvectors[:, 0]
    np.testing.assert_allclose(dense @ top, exact[-1] * top, atol=1e-6)
    low = hessian_eigenvalues(model, LOSS, (x, onehot), order=38, which="smallest")
    assert low.eigenvalues[0] == pytest.approx(exact[0], rel=1e-6)
    head = hessian_eigenvalues(model, LOSS, (x, onehot), order=18,
                               variables=[model.get_layer("head")])
    assert head.eigenvalues[0] == pytest.approx(np.linalg.eigvalsh(dense[20:, 20:])[-1], rel=1e-6)


@multi_backend
def test_entry_point_trace_and_density(float64):
    model = ref.mlp()
    x, _, onehot = ref.data()
    exact = np.linalg.eigvalsh(ref.hessian(model, x, onehot))
    trace = hessian_trace(model, LOSS, (x, onehot), num_samples=200, seed=3)
    assert trace.num_samples == 200 and trace.stderr > 0
    assert abs(trace.trace - exact.sum()) <= 3 * trace.stderr
    density = hessian_density(model, LOSS, (x, onehot), num_vectors=2, order=38)
    assert density.eigenvalues[0] == pytest.approx(exact[-1], rel=1e-6)
    assert density.eigenvalues[-1] == pytest.approx(exact[0], rel=1e-6)
    assert density.mass(exact[0] - 1e-6, exact[-1] + 1e-6) == pytest.approx(1.0)


def test_a_reloaded_dynamical_loss_is_taken_at_the_optimizer_step(tmp_path):
    from keras_dynloss.losses import DynamicalLoss

    model = ref.mlp(dtype="float32")
    x, y, _ = ref.data(n=12, dtype="float32")
    loss = DynamicalLoss(3, amplitude=20, period=40, from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    model.optimizer.iterations.assign(13)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert reloaded.loss.step is None
    got = hessian_eigenvalues(reloaded, reloaded.loss, (x, y), order=20).eigenvalues[0]
    at = {t: hessian_eigenvalues(model, loss.at_step(t), (x, y), order=20).eigenvalues[0]
          for t in (0, 13)}
    assert got == pytest.approx(at[13], rel=1e-5)
    assert abs(at[13] - at[0]) > 1e-3 * abs(at[0])


@multi_backend
@pytest.mark.parametrize("kwargs, match", [
    (dict(operator="fisher"), "`operator`"),
    (dict(training=1), "`training`"),
    (dict(include_regularization="yes"), "`include_regularization`"),
    (dict(loss="mse"), "`loss`"),
    (dict(data=np.zeros((8, 3))), "`data`"),
    (dict(data=(np.zeros((8, 3)),)), "`data`"),
    (dict(data=(np.zeros((0, 3)), np.zeros((0, 3)))), "`data`: expected a non-empty batch"),
    (dict(num_batches=2), "`num_batches`"),
    (dict(micro_batch_size=3), "`micro_batch_size`"),
    (dict(variables=[keras.layers.Dense(2)]), "`variables`"),
    (dict(model="model"), "`model`"),
    (dict(model=keras.Sequential([keras.layers.Dense(2)])), "`model`"),
])
def test_rejected_inputs_name_the_argument(kwargs, match):
    x, _, onehot = ref.data(dtype="float32")
    args = dict(model=ref.mlp(dtype="float32"), loss=LOSS, data=(x, onehot))
    args.update(kwargs)
    with pytest.raises(ValueError, match="Invalid value for argument " + match):
        HessianOperator(args.pop("model"), args.pop("loss"), args.pop("data"), **args)


@multi_backend
def test_rejected_vector_names_v():
    x, _, onehot = ref.data(dtype="float32")
    op = HessianOperator(ref.mlp(dtype="float32"), LOSS, (x, onehot))
    with pytest.raises(ValueError, match="argument `v`: expected a vector of shape \\(38,\\)"):
        op(np.zeros(37))
