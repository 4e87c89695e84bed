"""model.save -> load_model: each loss comes back with its dtype, its schedule and the step,
checked against NumPy re-derivations; a reloaded model evaluates without the scheduler."""

import json
import pathlib
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from conftest import numpy_crossentropy, numpy_gamma, tiny_mlp
import keras_dynloss as kd

pytestmark = pytest.mark.multi_backend
C, A, T, STEPS = 3, 12.5, 5, 7
GROUPS = [[0, 2], [1]]
DATA = pathlib.Path(__file__).parent / "data"
SCHEDULE = dict(amplitude=A, period=T, shape="triangular", normalize=False, class_order=GROUPS,
                start_after=2)


def _np(x):
    return ops.convert_to_numpy(x)


def _per_sample(cls, y, f, gamma):
    f = np.asarray(f, np.float64)
    if cls is kd.DynamicalLoss:
        return gamma[y] * numpy_crossentropy(y, f)
    one_hot = np.eye(C)[y]
    if cls is kd.DynamicalMeanSquaredError:
        return gamma[y] * np.mean((one_hot - f) ** 2, -1)
    return np.mean(gamma * (one_hot - f) ** 2, -1)


def _gamma(t):
    return numpy_gamma(t, C, A, T, "triangular", normalize=False, groups=GROUPS, start_after=2)


@pytest.mark.parametrize("cls, extra", [(kd.DynamicalLoss, dict(from_logits=True)),
                                        (kd.DynamicalMeanSquaredError, {}),
                                        (kd.DynamicalComponentwiseMeanSquaredError, {})])
def test_save_load_keeps_dtype_schedule_and_step(spiral, tmp_path, cls, extra, float64):
    x, y = spiral
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=cls(C, reduction="sum", name="mine", dtype="float64", **SCHEDULE, **extra))
    model.fit(x, y, batch_size=len(x), epochs=STEPS, verbose=0,
              callbacks=[kd.DynamicalLossScheduler()])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    loss = loaded.loss
    assert type(loss) is cls and loss.name == "mine" and loss.reduction == "sum"
    assert loss.dtype == "float64" and loss.step is None  # configuration only, never state
    assert int(_np(loaded.optimizer.iterations)) == STEPS
    for t in (0, 2, STEPS, 13, 2 * T * len(GROUPS) + 3):
        got = loss.weights_at(t)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, _gamma(t), rtol=1e-12)
    logits = _np(loaded.predict(x, verbose=0))
    value = _np(loss.bind(loaded)(y, logits))
    want = np.sum(_per_sample(cls, y, logits, _gamma(STEPS)))
    np.testing.assert_allclose(float(value), want, rtol=1e-5)


def test_reloaded_model_evaluates_at_the_restored_step_without_the_scheduler(spiral, tmp_path):
    x, y = spiral
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=kd.DynamicalLoss(
        C, amplitude=A, period=T, from_logits=True),
        metrics=[keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="ce")])
    model.fit(x, y, batch_size=len(x), epochs=STEPS, verbose=0,
              callbacks=[kd.DynamicalLossScheduler()])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    logits = _np(loaded.predict(x, verbose=0))
    with pytest.warns(UserWarning, match=r"follows no training step.*step 0"):
        plain = loaded.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    # no scheduler: the documented default, step 0 (Γ(0) ≡ 1 for the triangle)
    assert plain["loss"] == pytest.approx(np.mean(numpy_crossentropy(y, logits)), rel=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        dynamic = loaded.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True,
                                  callbacks=[kd.DynamicalLossScheduler()])
    gamma = numpy_gamma(STEPS, C, A, T)
    assert dynamic["loss"] == pytest.approx(np.mean(gamma[y] * numpy_crossentropy(y, logits)),
                                            rel=1e-5)
    assert dynamic["ce"] == pytest.approx(plain["ce"], rel=1e-6)


def _first_positive(y):
    return ops.argmax(y, -1)


def test_dynamical_wrapper_round_trips(spiral, tmp_path):
    x, y = spiral
    keras.saving.register_keras_serializable("test_saving")(_first_positive)
    focal = kd.dynamical(keras.losses.CategoricalFocalCrossentropy(from_logits=True, gamma=1.5),
                         C, amplitude=9, period=4, classes=_first_positive, name="focal")
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=focal)
    one_hot = np.eye(C, dtype="float32")[y]
    model.fit(x, one_hot, batch_size=len(x), epochs=3, verbose=0,
              callbacks=[kd.DynamicalLossScheduler()])
    model.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras").loss
    assert isinstance(back, kd.Dynamical) and back.classes is _first_positive
    assert isinstance(back.loss, keras.losses.CategoricalFocalCrossentropy)
    assert back.loss.gamma == 1.5
    logits = np.random.RandomState(1).normal(size=(len(y), C)).astype("float32")
    np.testing.assert_allclose(float(back.at_step(3)(one_hot, logits)),
                               float(focal.at_step(3)(one_hot, logits)), rtol=1e-6)
    np.testing.assert_allclose(back.weights_at(np.arange(12)),
                               [numpy_gamma(t, C, 9, 4) for t in range(12)], rtol=1e-6)


def test_model_saved_by_version_0_1_loads():
    """A file written by keras_dynloss 0.1.0 (tests/data/make_saved_losses.py, with the Γ and
    loss values that release computed, random class order included) loads and agrees."""
    expected = json.loads((DATA / "saved_losses_v0_1.json").read_text())
    model = keras.models.load_model(DATA / "saved_losses_v0_1.keras")
    x, y = np.array(expected["x"], np.float32), np.array(expected["y"])
    steps = expected["steps"]
    assert int(_np(model.optimizer.iterations)) == 7
    outputs = model.predict(x, verbose=0)
    for key, want in expected["losses"].items():
        loss, cls = model.loss[key], getattr(kd, want["class"])
        assert type(loss) is cls and loss.name == f"dyn_{key}"
        assert keras.saving.get_registered_name(cls) == f"keras_dynloss>{want['class']}"
        np.testing.assert_allclose(loss.weights_at(np.array(steps)), want["gamma"], rtol=1e-6)
        value = float(_np(loss.at_step(7)(y, outputs[key])))
        np.testing.assert_allclose(value, want["value"], rtol=2e-6)
