"""Writes saved_losses_v0_1.keras and its expected values (saved_losses_v0_1.json):
a model saved by keras_dynloss 0.1.0 before losses.py was split in two, so that
tests/test_saving.py can check that such files still load. Run from the repo root:
``python tests/data/make_saved_losses.py`` (only to make a new fixture)."""

import json
import pathlib

import keras
import numpy as np

import keras_dynloss as kd

HERE = pathlib.Path(__file__).parent
STEPS, STEPS_CHECKED = 7, [0, 2, 7, 13, 31]


def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = {name: keras.layers.Dense(3, name=name)(hidden) for name in ("ce", "mse", "cmse")}
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss={
        "ce": kd.DynamicalLoss(3, amplitude=12.5, period=2, from_logits=True,
                               class_order="random", seed=5, name="dyn_ce"),
        "mse": kd.DynamicalMeanSquaredError(3, amplitude=9, period=5, shape="sine",
                                            normalize=False, class_order=[[0, 2], [1]],
                                            dtype="float64", name="dyn_mse"),
        "cmse": kd.DynamicalComponentwiseMeanSquaredError(3, amplitude=4, period=3,
                                                          shape="square", static_after=20,
                                                          reduction="sum", name="dyn_cmse"),
    })
    return model


def main():
    rng = np.random.RandomState(0)
    x = rng.randn(12, 2).astype("float32")
    y = np.arange(12, dtype="int32") % 3
    model = build()
    targets = {"ce": y, "mse": y, "cmse": y}
    model.fit(x, targets, batch_size=12, epochs=STEPS, verbose=0,
              callbacks=[kd.DynamicalLossScheduler()])
    model.save(HERE / "saved_losses_v0_1.keras")
    outputs = model.predict(x, verbose=0)
    expected = {"x": x.tolist(), "y": y.tolist(), "steps": STEPS_CHECKED, "losses": {}}
    for key, loss in model.loss.items():
        expected["losses"][key] = {
            "class": type(loss).__name__,
            "gamma": loss.weights_at(np.array(STEPS_CHECKED)).tolist(),
            "value": float(loss.bind(model)(y, outputs[key])),
        }
    (HERE / "saved_losses_v0_1.json").write_text(json.dumps(expected) + "\n")


if __name__ == "__main__":
    main()
