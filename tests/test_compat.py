"""Pins for the private Keras/TF reaches in `keras_dynloss._compat`: an upgrade
that breaks one fails here, loudly."""

import keras

from keras_dynloss import _compat


def test_iter_layers_walks_nested_custom_layers():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(2, name="inner_dense")

        def call(self, x):
            return self.inner(x)

    inner_model = keras.Sequential([keras.Input((2,)), Block(name="block")], name="inner_model")
    model = keras.Sequential([keras.Input((2,)), inner_model, keras.layers.Dense(1, name="head")])
    names = [layer.name for layer in _compat.iter_layers(model)]
    assert names[0] == model.name
    # The Dense inside a custom layer inside a nested model is reached.
    assert {"inner_model", "block", "inner_dense", "head"} <= set(names)
