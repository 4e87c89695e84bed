"""What only a backend can do, one module per Keras backend.

`get()` returns the module of the backend Keras runs on now (`keras.backend.backend()`):
`keras_dynloss.backend.tensorflow`, `.jax` or `.torch`. Each defines the same functions;
everything else in the package is written once on `keras.ops`. A module is imported on
first use, so importing the package never imports another backend's framework.

Seeds are int32 tensors of shape (2,); `fold_in(seed, i)` derives the seed of stream `i`.
"""

import importlib

import keras
from keras import ops

_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def name():
    """The Keras backend in use: "tensorflow", "jax" or "torch"."""
    return keras.backend.backend()


def get():
    """The module of the current backend (see the module docstring)."""
    backend = name()
    if backend not in _MODULES:
        raise ImportError(
            f"keras_dynloss runs on Keras's TensorFlow, JAX and PyTorch backends; Keras's "
            f"backend is {backend!r}. Set KERAS_BACKEND to one of {sorted(_MODULES)} before "
            "keras is imported.")
    return importlib.import_module(f"keras_dynloss.backend.{_MODULES[backend]}")


def seed_pair(seed):
    """An int seed, or an int tensor of shape () or (2,), as an int32 tensor (2,)."""
    if isinstance(seed, int):
        return ops.convert_to_tensor([seed % 2**31, 0], "int32")
    seed = ops.cast(ops.reshape(seed, (-1,)), "int32")
    if seed.shape[0] == 1:
        seed = ops.concatenate([seed, ops.zeros((1,), "int32")])
    return seed


def fold_in(seed, i):
    """The seed (2,) of stream `i` (an int or int scalar tensor) of `seed` (2,)."""
    seed = seed_pair(seed)
    i = ops.cast(i, "int32")
    return ops.stack([seed[0] * 48271 + i + 1, seed[1] + 1])
