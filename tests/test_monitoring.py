"""Monitoring: `val_loss` is Γ-weighted; a plain cross-entropy metric is what to monitor.

One `fit` with `EarlyStopping` and `ModelCheckpoint(save_best_only=True)` both on
`val_ce` (a `SparseCategoricalCrossentropy` metric). A recorder computes, at each
epoch end, the validation cross-entropy in NumPy from the model's logits; the
epoch where training stops and the epochs whose weights are saved must be those
the NumPy values dictate, and the recorded `val_loss` must be Γ(t)-weighted.
"""

import keras
import numpy as np
import tensorflow as tf

from conftest import numpy_crossentropy, numpy_gamma, tiny_mlp
import keras_dynloss as kd

C, A, T, STEPS_PER_EPOCH, LR, EPOCHS = 3, 30.0, 7, 5, 0.1, 30
PATIENCE, MIN_DELTA = 3, 0.01


def _blobs(points_per_class, seed):
    """Three overlapping Gaussian blobs (an easy task: plain CE falls steadily)."""
    rng = np.random.RandomState(seed)
    centers = np.array([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]])
    y = np.repeat(np.arange(C), points_per_class).astype("int32")
    return (centers[y] + 0.6 * rng.randn(len(y), 2)).astype("float32"), y


def _early_stopping_epoch(values, patience, min_delta):
    """The documented rule: stop at the first epoch > 0 after `patience` epochs
    without a value below (best - min_delta); None if it never stops."""
    best, since_best = np.inf, 0
    for epoch, value in enumerate(values):
        since_best += 1
        if value < best - min_delta:
            best, since_best = value, 0
        elif since_best >= patience and epoch > 0:
            return epoch
    return None


def _new_best_epochs(values):
    best, epochs = np.inf, []
    for epoch, value in enumerate(values):
        if value < best:
            best = value
            epochs.append(epoch)
    return epochs


class _Recorder(keras.callbacks.Callback):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.ce, self.weighted = x, y, [], []

    def on_epoch_end(self, epoch, logs=None):
        t = int(self.model.optimizer.iterations.numpy())  # evaluate ran at this step
        per_sample = numpy_crossentropy(self.y, self.model(self.x, training=False).numpy())
        self.ce.append(per_sample.mean())
        self.weighted.append((numpy_gamma(t, C, A, T)[self.y] * per_sample).mean())


def test_callbacks_monitoring_plain_crossentropy_ignore_gamma(tmp_path):
    x, y = _blobs(30, seed=0)
    x_val, y_val = _blobs(30, seed=1)
    model = tiny_mlp(width=8)
    model.compile(
        optimizer=keras.optimizers.SGD(LR),
        loss=kd.DynamicalLoss(C, amplitude=A, period=T, from_logits=True),
        metrics=[keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="ce"),
                 "accuracy"],
    )
    recorder = _Recorder(x_val, y_val)
    stopper = keras.callbacks.EarlyStopping(monitor="val_ce", mode="min", patience=PATIENCE,
                                            min_delta=MIN_DELTA)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best_{epoch:02d}.weights.h5"), monitor="val_ce", mode="min",
        save_best_only=True, save_weights_only=True)
    history = model.fit(
        tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=STEPS_PER_EPOCH,
        epochs=EPOCHS, validation_data=(x_val, y_val), verbose=0,
        callbacks=[kd.DynamicalLossScheduler(), recorder, stopper, checkpoint])
    ce, weighted = np.array(recorder.ce), np.array(recorder.weighted)

    # the metric is the plain cross-entropy; val_loss is the Γ(t)-weighted one
    np.testing.assert_allclose(history.history["val_ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(history.history["val_loss"], weighted, rtol=1e-5)
    assert np.ptp(weighted - ce) > 0.5  # Γ moves val_loss far from the plain CE

    # EarlyStopping stops where the plain CE says, well before Γ-weighted values would
    expected = _early_stopping_epoch(ce, PATIENCE, MIN_DELTA)
    assert expected is not None and 0 < stopper.stopped_epoch == expected == len(ce) - 1
    assert _early_stopping_epoch(weighted, PATIENCE, MIN_DELTA) < expected - 5

    # ModelCheckpoint saves exactly at the epochs where the plain CE hit a new minimum
    saved = sorted(int(p.name[5:7]) - 1 for p in tmp_path.glob("best_*.weights.h5"))
    assert saved == _new_best_epochs(ce) != _new_best_epochs(weighted)
