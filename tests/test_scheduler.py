"""What `DynamicalLossScheduler` logs, and where: per-epoch Γ statistics in every callback
order, Γ(t) in TensorBoard keyed by the optimizer step, warnings about monitoring `loss`."""

import csv
import glob
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from conftest import numpy_gamma, tiny_mlp
import keras_dynloss as kd

pytestmark = pytest.mark.multi_backend
C, A, T = 3, 70.0, 12


def _model():
    model = tiny_mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="ce")])
    return model


def _fit(model, x, y, callbacks, epochs=4, steps_per_epoch=T):
    return model.fit(np.concatenate([x] * steps_per_epoch), np.concatenate([y] * steps_per_epoch),
                     batch_size=len(x), epochs=epochs, shuffle=False, verbose=0,
                     callbacks=callbacks)


def _scalars(log_dir):
    """{tag: {step: value}} from the event files under `log_dir`."""
    import tensorflow as tf

    out = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor"):
                    number = tf.make_ndarray(value.tensor)
                    if number.dtype.kind != "f":  # e.g. Keras's model-config text
                        continue
                else:
                    number = value.simple_value
                out.setdefault(value.tag, {})[event.step] = float(number)
    return out


@pytest.mark.parametrize("csv_first", [False, True])
def test_epoch_statistics_show_the_peaks(spiral, tmp_path, csv_first):
    """One period per epoch: Γ at an epoch's last step is ≈ 1 (a log of it would be flat);
    the epoch's max and mean show the triangle. A CSVLogger listed first misses them, and a
    warning says so."""
    x, y = spiral
    log = tmp_path / "log.csv"
    scheduler, csv_logger = kd.DynamicalLossScheduler(), keras.callbacks.CSVLogger(str(log))
    order = [csv_logger, scheduler] if csv_first else [scheduler, csv_logger]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = _fit(_model(), x, y, order).history
    gamma = np.array([numpy_gamma(t, C, A, T) for t in range(4 * T)]).reshape(4, T, C)
    for i in range(C):
        np.testing.assert_allclose(history[f"gamma_{i}_max"], gamma[:, :, i].max(1), rtol=1e-5)
        np.testing.assert_allclose(history[f"gamma_{i}_mean"], gamma[:, :, i].mean(1), rtol=1e-5)
    assert max(history["gamma_0_max"]) > 2.8  # the peak 3·70/72, not the trough
    assert history["emphasized_class"] == [0, 1, 2, 0]
    assert all(type(v) is int for v in history["emphasized_class"])
    with open(log) as f:
        rows = list(csv.DictReader(f))
    said = [str(w.message) for w in caught if "CSVLogger is listed before" in str(w.message)]
    if csv_first:
        assert said and "gamma_1_max" not in rows[0]
    else:
        assert not said
        assert [float(r["gamma_1_max"]) for r in rows] == pytest.approx(history["gamma_1_max"])
        assert [r["emphasized_class"] for r in rows] == ["0", "1", "2", "0"]


def test_log_weights_off(spiral):
    x, y = spiral
    history = _fit(_model(), x, y, [kd.DynamicalLossScheduler(log_weights=False)], epochs=1)
    assert not [k for k in history.history if "gamma" in k or "emphasized" in k]


@pytest.mark.parametrize("tensorboard_first", [False, True])
def test_tensorboard_gets_gamma_per_step_in_either_order(spiral, tmp_path, tensorboard_first):
    x, y = spiral
    board = keras.callbacks.TensorBoard(str(tmp_path / "tb"))
    scheduler = kd.DynamicalLossScheduler(log_every_n_steps=2)
    order = [board, scheduler] if tensorboard_first else [scheduler, board]
    _fit(_model(), x, y, order, epochs=2)
    scalars = _scalars(str(tmp_path / "tb" / "train"))
    steps = sorted(scalars["gamma_0"])
    assert steps == list(range(0, 2 * T, 2))
    for t in steps:
        want = numpy_gamma(t, C, A, T)
        assert [scalars[f"gamma_{i}"][t] for i in range(C)] == pytest.approx(want, rel=1e-5)
        assert scalars["emphasized_class"][t] == (t // T) % C
    # Keras's own epoch scalars carry the statistics when the scheduler comes first
    assert ("epoch_gamma_0_max" in scalars) == (not tensorboard_first)


def test_log_dir_without_a_tensorboard_callback(spiral, tmp_path):
    x, y = spiral
    _fit(_model(), x, y, [kd.DynamicalLossScheduler(log_dir=str(tmp_path), log_every_n_steps=5)],
         epochs=1)
    scalars = _scalars(str(tmp_path / "train"))
    assert sorted(scalars["gamma_2"]) == [0, 5, 10]


def test_missing_tensorboard_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['tensorboard'] = None\n"
            "from keras_dynloss._tensorboard import ScalarWriter\n"
            f"ScalarWriter([{str(tmp_path)!r}])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and 'pip install "keras_dynloss[tensorboard]"' in out.stderr


@pytest.mark.parametrize("monitor", ["loss", "val_loss"])
def test_monitoring_the_dynamical_loss_warns(spiral, monitor):
    x, y = spiral
    early = keras.callbacks.EarlyStopping(monitor=monitor, patience=5)
    with pytest.warns(UserWarning, match=rf"EarlyStopping monitors '{monitor}'.*'val_ce'"):
        _fit(_model(), x, y, [kd.DynamicalLossScheduler(), early], epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _fit(_model(), x, y, [kd.DynamicalLossScheduler(),
                              keras.callbacks.EarlyStopping(monitor="ce")], epochs=1)


def test_config_round_trip_sets_the_period_from_epochs(spiral):
    x, y = spiral
    scheduler = kd.DynamicalLossScheduler(period_epochs=3, steps_per_epoch=7, log_every_n_steps=4)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(scheduler))
    assert isinstance(back, kd.DynamicalLossScheduler) and back.log_every_n_steps == 4
    model = _model()
    _fit(model, x, y, [back], epochs=1, steps_per_epoch=5)
    assert model.loss.schedule.period == 21  # 3 epochs of 7 steps, not fit's 5


def test_rejected_arguments():
    with pytest.raises(ValueError, match=r"`period_epochs`: expected an integer >= 1"):
        kd.DynamicalLossScheduler(period_epochs=0)
    with pytest.raises(ValueError, match=r"`loss`: expected a keras_dynloss dynamical loss"):
        kd.DynamicalLossScheduler(keras.losses.MeanSquaredError())
    with pytest.raises(ValueError, match=r"`log_every_n_steps`"):
        kd.DynamicalLossScheduler(log_every_n_steps=0)
    model = tiny_mlp()
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"found no dynamical loss"):
        model.fit(np.zeros((4, 2)), np.zeros((4, 3)), verbose=0,
                  callbacks=[kd.DynamicalLossScheduler()])
