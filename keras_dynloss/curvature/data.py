"""Data for curvature operators: one batch, or a dataset read once into memory.

A curvature operator is a fixed matrix only if every product sees the same
data. A `tf.data.Dataset` that shuffles (`reshuffle_each_iteration=True`) or
augments at random would hand each product other samples, and an infinite one
(`.repeat()`) would never finish a product. So an operator reads its dataset
exactly once, when it is built, and keeps the batches in memory:

* an infinite or unknown-cardinality dataset is refused unless `num_batches`
  bounds it (then its first `num_batches` batches are used);
* a shuffled or randomly augmented dataset is thereby made deterministic: the
  operator is the curvature of the batches drawn at construction
  (`HessianOperator.batches`), for every product.
"""

import tensorflow as tf

from keras_dynloss import _checks as val


def _batch_size(x):
    first = tf.nest.flatten(x)[0]
    if first.shape.rank == 0:
        return 0
    return int(first.shape[0]) if first.shape[0] is not None else int(tf.shape(first)[0])


def _to_tensor(x):
    return tf.nest.map_structure(tf.convert_to_tensor, x)


def split_element(element, name="data"):
    """`(x, y)` or `(x, y, sample_weight)` -> `(x, y, sw or None)`."""
    if isinstance(element, (tuple, list)) and len(element) in (2, 3):
        x, y = element[0], element[1]
        sw = element[2] if len(element) == 3 else None
        return x, y, sw
    raise val.invalid(
        name,
        "an (x, y) pair, an (x, y, sample_weight) triple or a tf.data.Dataset "
        "of such tuples",
        type(element).__name__,
    )


def check_batch(data, name="data"):
    """Validates one batch; returns `(x, y, sw)` tensors (`sw` may be `None`)."""
    x, y, sw = split_element(data, name)
    x, y = _to_tensor(x), _to_tensor(y)
    sw = None if sw is None else _to_tensor(sw)
    if _batch_size(x) < 1:
        raise val.invalid(name, "a non-empty batch", data)
    return x, y, sw


def check_cardinality(dataset, num_batches, name="data"):
    """Raises unless `dataset` is finite or `num_batches` bounds it."""
    if num_batches is not None:
        return
    card = int(dataset.cardinality().numpy())
    if card == tf.data.INFINITE_CARDINALITY:
        raise val.invalid(
            name,
            "a finite tf.data.Dataset (this one repeats forever, so a product "
            "would never end); pass `num_batches=` to use its first batches",
            dataset,
        )
    if card == tf.data.UNKNOWN_CARDINALITY:
        raise val.invalid(
            name,
            "a tf.data.Dataset of known length (this one has unknown "
            "cardinality, e.g. after `filter`); pass `num_batches=` to bound it "
            "or declare its length with "
            "`tf.data.experimental.assert_cardinality(n)`",
            dataset,
        )


def materialize(data, *, num_batches=None, name="data"):
    """Reads `data` once; returns a list of `(x, y, sw, batch_size)`.

    Args:
        data: `(x, y)` / `(x, y, sample_weight)` arrays or tensors, or a
            `tf.data.Dataset` of such tuples.
        num_batches: for a dataset, use only its first `num_batches` batches
            (required for an infinite or unknown-cardinality dataset). Must be
            `None` for a single batch.
        name: argument name used in error messages.

    Returns:
        A non-empty list of `(x, y, sw, n)` with tensors `x`, `y`, `sw` (or
        `None`) and the Python int batch size `n`.
    """
    num_batches = val.check_int("num_batches", num_batches, minimum=1, allow_none=True)
    if not isinstance(data, tf.data.Dataset):
        if num_batches is not None:
            raise val.invalid(
                "num_batches", "None when `data` is one (x, y) batch", num_batches
            )
        x, y, sw = check_batch(data, name)
        return [(x, y, sw, _batch_size(x))]
    check_cardinality(data, num_batches, name)
    if num_batches is not None:
        data = data.take(num_batches)
    batches = []
    for element in data:
        x, y, sw = split_element(element, name)
        n = _batch_size(x)
        if n:
            batches.append((x, y, sw, n))
    if not batches:
        raise val.invalid(name, "a non-empty dataset", data)
    return batches
