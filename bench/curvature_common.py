"""Models and data shared by the curvature benchmarks."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def resnet_cnn(seed=0):
    """ResNet-style CNN on 28x28x1 (30.7k parameters, BatchNorm, two residual blocks)."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers

    def conv_bn(h, filters, strides=1, relu=True):
        h = layers.BatchNormalization()(layers.Conv2D(filters, 3, strides=strides,
                                                      padding="same")(h))
        return layers.ReLU()(h) if relu else h

    inputs = keras.Input((28, 28, 1))
    h = conv_bn(inputs, 20)
    h = layers.ReLU()(layers.Add()([h, conv_bn(conv_bn(h, 20), 20, relu=False)]))
    r = conv_bn(conv_bn(h, 40, strides=2), 40, relu=False)
    h = layers.ReLU()(layers.Add()([layers.Conv2D(40, 1, strides=2)(h), r]))
    return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(h)))


def big_mlp(seed=0):
    """MLP 784-1024-1024-10 (1.86M parameters)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(1024, activation="relu"),
                             keras.layers.Dense(1024, activation="relu"), keras.layers.Dense(10)])


def fashion(n=4096):
    """n Fashion-MNIST training images (28x28x1, float32) and labels; random images when no
    source is available."""
    try:
        from keras_dynloss.datasets import fashion_mnist

        x, y = fashion_mnist("train", num_samples=n)
        return x.reshape(-1, 28, 28, 1).astype("float32"), y
    except Exception:  # noqa: BLE001 - no Fashion-MNIST on this machine
        rng = np.random.default_rng(0)
        return rng.uniform(size=(n, 28, 28, 1)).astype("float32"), rng.integers(0, 10, n)
