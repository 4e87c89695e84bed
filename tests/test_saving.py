"""model.save -> load_model: each loss comes back with its dtype, its schedule and
the step, checked against NumPy re-derivations (never against itself)."""

import json
import pathlib

import keras
import numpy as np
import pytest

from conftest import numpy_crossentropy, numpy_gamma, tiny_mlp
import keras_dynloss as kd

C, A, T, STEPS = 3, 12.5, 5, 7
GROUPS = [[0, 2], [1]]
DATA = pathlib.Path(__file__).parent / "data"
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


def test_model_saved_by_version_0_1_loads():
    """A file written before losses.py was split (tests/data/make_saved_losses.py,
    with the Γ and loss values that code computed) loads: same classes under the
    same registered names, dtypes, step, Γ and loss values, and NumPy agrees."""
    expected = json.loads((DATA / "saved_losses_v0_1.json").read_text())
    model = keras.models.load_model(DATA / "saved_losses_v0_1.keras")
    x, y = np.array(expected["x"], np.float32), np.array(expected["y"])
    steps = expected["steps"]
    assert int(model.optimizer.iterations.numpy()) == 7
    outputs = model.predict(x, verbose=0)
    for key, want in expected["losses"].items():
        loss, cls = model.loss[key], getattr(kd, want["class"])
        assert type(loss) is cls and loss.name == f"dyn_{key}"
        assert keras.saving.get_registered_name(cls) == f"keras_dynloss>{want['class']}"
        np.testing.assert_allclose(loss.weights_at(np.array(steps)), want["gamma"], rtol=1e-6)
        per_sample = _numpy_per_sample(cls, y, outputs[key], np.array(want["gamma"][steps.index(7)]))
        reduce = np.sum if loss.reduction == "sum" else np.mean
        value = float(loss.bind(model)(y, outputs[key]))
        np.testing.assert_allclose(value, want["value"], rtol=1e-6)
        np.testing.assert_allclose(value, reduce(per_sample), rtol=2e-6)
    mse = model.loss["mse"]
    assert mse.dtype == "float64" and model.loss["cmse"].reduction == "sum"
    want = [numpy_gamma(t, C, 9, 5, "sine", normalize=False, groups=GROUPS) for t in steps]
    np.testing.assert_allclose(mse.weights_at(np.array(steps)), want, rtol=1e-15)
