"""What only a backend can do, one module per Keras backend (the rest is on `keras.ops`).

`get()` returns `keras_dynloss.backend.tensorflow`, `.jax` or `.torch`, imported on first use.
Each defines `uniform(shape, seed, dtype)` (on [-1, 1)) and `normal(shape, seed, dtype)` of
`seed` (int32 (2,)) alone, `compile_function(fn, *, jit_compile=False)`, and for `fn` of an
array `theta`: `value_and_grad -> (value, grad)`, `linearize_grad -> (value, grad, v -> H v)`,
`linearize -> (out, w -> J w, u -> J^T u)`, `jacobian -> (out, J of out.shape + theta.shape)`.
"""

import importlib

import keras
from keras import ops

_BACKENDS = ("tensorflow", "jax", "torch")


def name():
    """The Keras backend in use: "tensorflow", "jax" or "torch"."""
    return keras.backend.backend()


def get():
    """The module of the current backend (see the module docstring)."""
    if name() not in _BACKENDS:
        raise ImportError(
            f"keras_dynloss runs on Keras's TensorFlow, JAX and PyTorch backends; Keras's "
            f"backend is {name()!r}. Set KERAS_BACKEND to one of {list(_BACKENDS)} before "
            "keras is imported.")
    return importlib.import_module(f"keras_dynloss.backend.{name()}")


def seed_pair(seed):
    """An int seed, or an int tensor of shape () or (2,), as an int32 tensor (2,)."""
    if isinstance(seed, int):
        return ops.convert_to_tensor([seed % 2**31, 0], "int32")
    seed = ops.cast(ops.reshape(seed, (-1,)), "int32")
    if seed.shape[0] == 1:
        seed = ops.concatenate([seed, ops.zeros((1,), "int32")])
    return seed


def fold_in(seed, i):
    """The seed (2,) of stream `i` (an int or int scalar tensor) of `seed`."""
    seed = seed_pair(seed)
    return ops.stack([seed[0] * 48271 + ops.cast(i, "int32") + 1, seed[1] + 1])
