"""Entry points `hessian_eigenvalues`, `hessian_trace`, `hessian_density` on real models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import hessian_density
from keras_dynloss.curvature import hessian_eigenvalues
from keras_dynloss.curvature import hessian_trace
from keras_dynloss.curvature.algorithms import gaussian_density
from conftest import explicit_hessian


def small_mlp():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]
    )


def small_cnn():
    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(3, 3, activation="tanh"),
            keras.layers.BatchNormalization(),
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(3),
        ]
    )


def _data(shape, n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype("float32"), rng.integers(0, 3, n)


CASES = [(small_mlp, (4,)), (small_cnn, (6, 6, 1))]
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module", params=CASES, ids=["mlp", "cnn"])
def problem(request):
    builder, shape = request.param
    model = builder()
    x, y = _data(shape)
    dense = explicit_hessian(model, LOSS, x, y)
    return model, (x, y), np.linalg.eigvalsh(dense)[::-1], dense


def test_lanczos_top_k_matches_dense_hessian(problem):
    model, data, exact, _ = problem
    res = hessian_eigenvalues(model, LOSS, data, k=3, order=min(40, exact.size), seed=0)
    assert res.eigenvalues.shape == (3,) and isinstance(res.eigenvalues, np.ndarray)
    assert np.all(np.diff(res.eigenvalues) <= 0)
    np.testing.assert_allclose(res.eigenvalues, exact[:3], rtol=1e-3)
    assert res.num_matvecs == min(40, exact.size)
    assert res.converged


def test_power_iteration_agrees(problem):
    model, data, exact, _ = problem
    assert exact[0] > abs(exact[-1])  # lambda_max dominates: power iteration applies
    res = hessian_eigenvalues(
        model, LOSS, data, k=1, algorithm="power_iteration", max_iter=2000, tol=1e-8
    )
    np.testing.assert_allclose(res.eigenvalues, exact[:1], rtol=1e-3)


def test_reverse_over_reverse_gives_same_eigenvalues(problem):
    model, data, exact, _ = problem
    res = hessian_eigenvalues(model, LOSS, data, k=2, order=min(40, exact.size), hvp_mode="reverse_over_reverse")
    np.testing.assert_allclose(res.eigenvalues, exact[:2], rtol=1e-3)


def test_hutchinson_within_three_standard_errors(problem):
    model, data, exact, dense = problem
    res = hessian_trace(model, LOSS, data, num_samples=60, seed=3)
    assert res.stderr > 0
    assert abs(res.trace - np.trace(dense)) <= 3 * res.stderr
    assert res.num_matvecs == 60


def test_density_integrates_to_one_and_follows_exact_spectrum(problem):
    model, data, exact, _ = problem
    sigma = 0.02 * (exact[0] - exact[-1])
    res = hessian_density(model, LOSS, data, num_vectors=8, order=min(30, exact.size), sigma=sigma, seed=0)
    assert np.trapezoid(res.density, res.grid) == pytest.approx(1.0, abs=2e-3)
    reference = gaussian_density(exact[None], np.full((1, exact.size), 1.0 / exact.size), res.grid, sigma)
    # Most of the mass agrees with the exact smoothed spectrum ...
    assert np.trapezoid(np.abs(reference - res.density), res.grid) < 0.35
    # ... and there is mass at lambda_max but none beyond it.
    assert res.eigenvalues[0] == pytest.approx(exact[0], rel=1e-3)
    beyond = res.grid > exact[0] + 4 * sigma
    assert np.trapezoid(res.density[beyond], res.grid[beyond]) < 1e-4


def test_dataset_input_matches_batch():
    model = small_mlp()
    x, y = _data((4,), n=30)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    a = hessian_eigenvalues(model, LOSS, (x, y), k=2, order=30)
    b = hessian_eigenvalues(model, LOSS, ds, k=2, order=30)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-4)


def test_dynamical_loss_at_step():
    import keras_dynloss as dynloss
    model = small_mlp()
    x, y = _data((4,))
    loss = dynloss.DynamicalLoss(3, amplitude=20.0, period=100, from_logits=True)
    gammas = {t: loss.weights_at(t) for t in (0, 40)}
    assert not np.allclose(gammas[0], gammas[40])
    for t, gamma in gammas.items():
        res = hessian_eigenvalues(model, loss.at_step(t), (x, y), k=2, order=40)
        # Reference: cross-entropy weighted per sample by Gamma_{y_i}(t).
        weighted = explicit_hessian(
            model, lambda yt, yp: LOSS(yt, yp, sample_weight=gamma[y]), x, y
        )
        np.testing.assert_allclose(res.eigenvalues, np.linalg.eigvalsh(weighted)[::-1][:2], rtol=1e-3)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, d: hessian_eigenvalues(m, LOSS, d, k=0), "`k`"),
        (lambda m, d: hessian_eigenvalues(m, LOSS, d, algorithm="arnoldi"), "`algorithm`"),
        (lambda m, d: hessian_eigenvalues(m, LOSS, d, hvp_mode="fwd"), "`mode`"),
        (lambda m, d: hessian_eigenvalues(m, LOSS, d, k=5, order=3), "`order`"),
        (lambda m, d: hessian_eigenvalues(m, LOSS, d, seed=-2), "`seed`"),
        (lambda m, d: hessian_eigenvalues(m, LOSS, [1, 2, 3, 4]), "`data`"),
        (lambda m, d: hessian_eigenvalues(m, None, d), "`loss`"),
        (lambda m, d: hessian_trace(m, LOSS, d, num_samples=1), "`num_samples`"),
        (lambda m, d: hessian_density(m, LOSS, d, order=0), "`order`"),
        (lambda m, d: hessian_density(m, LOSS, d, sigma=-1.0), "`sigma`"),
    ],
)
def test_rejected_inputs(call, match):
    model = small_mlp()
    with pytest.raises(ValueError, match="Invalid value for argument " + match):
        call(model, _data((4,), n=4))
