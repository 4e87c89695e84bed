"""model.save -> load_model: each loss comes back with its dtype, its schedule and
the step, checked against NumPy re-derivations (never against itself)."""

import keras
import numpy as np
import pytest

from conftest import numpy_crossentropy, numpy_gamma, tiny_mlp
import keras_dynloss as kd

C, A, T, STEPS = 3, 12.5, 5, 7
GROUPS = [[0, 2], [1]]
SCHEDULE = dict(amplitude=A, period=T, shape="sine", normalize=False, class_order=GROUPS)


def _numpy_per_sample(cls, y, f, gamma):
    f = np.asarray(f, np.float64)
    if cls is kd.DynamicalLoss:
        return gamma[y] * numpy_crossentropy(y, f)
    one_hot = np.eye(C)[y]
    if cls is kd.DynamicalMeanSquaredError:
        return gamma[y] * np.mean((one_hot - f) ** 2, -1)
    return np.mean(gamma * (one_hot - f) ** 2, -1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls, extra", [
    (kd.DynamicalLoss, dict(from_logits=True)),
    (kd.DynamicalMeanSquaredError, {}),
    (kd.DynamicalComponentwiseMeanSquaredError, {}),
])
def test_save_load_keeps_dtype_schedule_and_step(spiral, tmp_path, cls, extra, dtype):
    x, y = spiral
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=cls(C, reduction="sum", name="mine", dtype=dtype, **SCHEDULE, **extra))
    model.fit(x, y, batch_size=len(x), epochs=STEPS, verbose=0,
              callbacks=[kd.DynamicalLossScheduler()])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")

    loss = loaded.loss
    assert type(loss) is cls and loss.name == "mine" and loss.reduction == "sum"
    assert loss.dtype == dtype and loss.step is None  # configuration only, never state
    assert int(loaded.optimizer.iterations.numpy()) == STEPS
    tol = 1e-15 if dtype == "float64" else 1e-6
    for t in (0, 2, STEPS, 13, 2 * T * len(GROUPS) + 3):  # Γ at the saved step and around
        want = numpy_gamma(t, C, A, T, "sine", normalize=False, groups=GROUPS)
        got = loss.weights_at(t)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)

    logits = loaded.predict(x, verbose=0)
    value = loss.bind(loaded)(y, logits)  # Γ at the restored step
    assert value.dtype == dtype
    gamma = numpy_gamma(STEPS, C, A, T, "sine", normalize=False, groups=GROUPS)
    want = np.sum(_numpy_per_sample(cls, y, logits, gamma))
    np.testing.assert_allclose(float(value), want, rtol=1e-12 if dtype == "float64" else 2e-6)
    if "from_logits" in extra:  # a probabilities loss would give another value
        assert loss.from_logits


def test_random_order_and_seed_survive_save(spiral, tmp_path):
    """Plumbing: the random order is kept; checked as a permutation per cycle and
    against the same seed's Γ before saving (no NumPy model of the hash)."""
    x, y = spiral
    model = tiny_mlp()
    loss = kd.DynamicalLoss(C, amplitude=A, period=2, class_order="random", seed=5,
                            from_logits=True)
    model.compile(optimizer="sgd", loss=loss)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0,
              callbacks=[kd.DynamicalLossScheduler()])
    model.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras").loss
    steps = np.arange(1, 6 * C * 2, 2)  # mid-period steps
    peaks = back.weights_at(steps).argmax(-1).reshape(-1, C)
    assert all(sorted(cycle) == list(range(C)) for cycle in peaks)
    np.testing.assert_array_equal(back.weights_at(steps), loss.weights_at(steps))
    other = kd.DynamicalLoss(C, amplitude=A, period=2, class_order="random", seed=6)
    assert not np.array_equal(other.weights_at(steps), back.weights_at(steps))
