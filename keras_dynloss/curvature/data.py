"""Data of curvature operators: one `(x, y[, sample_weight])` batch, or a dataset read once
into memory, so that every product sees the same samples: `read_batches(dataset.take(4))`."""

import sys

import keras
import numpy as np
from keras import ops

from keras_dynloss import _checks


def as_tensors(tree):
    """Every array of `tree` as a tensor of the backend (None stays None)."""
    def tensor(a):
        return a if ops.is_tensor(a) else ops.convert_to_tensor(np.asarray(a))
    return None if tree is None else keras.tree.map_structure(tensor, tree)


def num_rows(x):
    """N, the rows of the first array of `x`."""
    return int(keras.tree.flatten(x)[0].shape[0])


def is_dataset(data):
    """Whether `data` is a `tf.data.Dataset` (without importing TensorFlow)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def _batch(element):
    """`(x, y, sample_weight or None)` of one `(x, y[, sample_weight])` element."""
    if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
        raise _checks.invalid("data", "an (x, y[, sample_weight]) batch or a tf.data.Dataset "
                              "of them", f"<{type(element).__name__}>")
    x, y, sw = [as_tensors(t) for t in (*element, None)[:3]]
    if not keras.tree.flatten(x)[0].shape or num_rows(x) < 1:
        raise _checks.invalid("data", "a non-empty batch", element)
    return x, y, sw


def read_batches(data, num_batches=None):
    """`data` read once (a dataset to its end or `num_batches`): `[(x, y, sample_weight)]`."""
    num_batches = _checks.check_int("num_batches", num_batches, minimum=1, allow_none=True)
    if not is_dataset(data):
        if num_batches is not None:
            raise _checks.invalid("num_batches", "None for one (x, y) batch", num_batches)
        return [_batch(data)]
    if num_batches is None and int(data.cardinality()) < 0:
        raise _checks.invalid("data", "a finite tf.data.Dataset of known length (or pass "
                              "`num_batches`)", data)
    batches = [_batch(element) for element in data.take(num_batches or -1)]
    if not batches:
        raise _checks.invalid("data", "a non-empty dataset", data)
    return batches
